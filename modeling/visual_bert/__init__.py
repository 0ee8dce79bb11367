"""VisualBERT (Li et al., 2019): transformers' model classes with the original's defaults; processor, pretraining
collator and LoRA preset.

This file is the architecture's spec (`SPECS`, read by `import hf_vlp`) and its public names, imported from the
submodules on first access so that reading the spec imports no modeling code. transformers already maps visual_bert
in AutoModel / AutoModelForPreTraining (to its own classes, which `import hf_vlp` leaves as they are): the hf_vlp
classes (region token types 0 by default) take those over only after
`hf_vlp.use_hf_vlp_classes_for_transformers_models()`.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

_M = ".modeling_visual_bert."

SPECS = (
    ArchitectureSpec(
        name="visual_bert",
        model_type="visual_bert",
        package=__name__,
        config="transformers.VisualBertConfig",
        heads={
            Task.BASE: Head(
                _M + "VisualBertModel", opt_in_auto_classes=("AutoModel",), pipeline_tag="feature-extraction"
            ),
            Task.PRETRAINING: Head(
                _M + "VisualBertForPreTraining",
                opt_in_auto_classes=("AutoModelForPreTraining",),
                pipeline_tag="feature-extraction",
            ),
            Task.VQA: Head(
                _M + "VisualBertForVisualQuestionAnswering",
                auto_classes=("AutoModelForVisualQuestionAnswering",),
                pipeline_tag="visual-question-answering",
                num_labels_field="num_labels",
                # the answer is read at the [MASK] of `[CLS] question ? [MASK] [SEP]`
                processor_kwargs={"question_answering": True},
            ),
            Task.NLVR2: Head(
                _M + "VisualBertForVisualReasoning", config_overrides={"num_labels": 2}, num_labels_field="num_labels"
            ),
            Task.VCR: Head(_M + "VisualBertForMultipleChoice", auto_classes=("AutoModelForMultipleChoice",)),
        },
        inputs=InputKind.REGIONS,
        processor=".processing_visual_bert.VisualBertProcessor",
        image_processor="hf_vlp.processing.region.RegionFeatureProcessor",
        feature_size_field="visual_embedding_dim",
        # initializer_range follows the width (~1/sqrt(128)): see hf_vlp.recipes.SMALL_SIZES
        small_sizes=dict(
            hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256, initializer_range=0.08
        ),
        lora_target_modules=r"(.*\.)?(query|key|value|visual_projection)",
        pretraining_collator=".collator_visual_bert.VisualBertPretrainingCollator",
        pretraining_objectives=("mlm", "itm"),
        example_inputs=".inputs_visual_bert.example_inputs",
        bench_task=Task.VQA,
    ),
)

_EXPORTS = {
    ".collator_visual_bert": ("VisualBertPretrainingCollator",),
    ".modeling_visual_bert": (
        "LORA_TARGET_MODULES",
        "VisualBertForMultipleChoice",
        "VisualBertForPreTraining",
        "VisualBertForPreTrainingOutput",
        "VisualBertForVisualQuestionAnswering",
        "VisualBertForVisualReasoning",
        "VisualBertModel",
        "VisualBertPreTrainedModel",
    ),
    ".processing_visual_bert": ("VisualBertProcessor",),
    "transformers": ("VisualBertConfig",),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
