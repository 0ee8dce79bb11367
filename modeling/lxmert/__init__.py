"""LXMERT (Tan & Bansal, 2019): transformers' model classes with gradient checkpointing, per-objective pretraining
losses, the original VQA loss; processor, pretraining collator and LoRA preset.

This file is the architecture's spec (`SPECS`, read by `import hf_vlp`) and its public names, imported from the
submodules on first access so that reading the spec imports no modeling code. transformers already maps lxmert in
AutoModel / AutoModelForPreTraining (to its own classes, which `import hf_vlp` leaves as they are): the hf_vlp
classes take those over only after `hf_vlp.use_hf_vlp_classes_for_transformers_models()`.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

_M = ".modeling_lxmert."

SPECS = (
    ArchitectureSpec(
        name="lxmert",
        model_type="lxmert",
        package=__name__,
        config="transformers.LxmertConfig",
        heads={
            Task.BASE: Head(_M + "LxmertModel", opt_in_auto_classes=("AutoModel",), pipeline_tag="feature-extraction"),
            Task.PRETRAINING: Head(
                _M + "LxmertForPreTraining",
                opt_in_auto_classes=("AutoModelForPreTraining",),
                pipeline_tag="feature-extraction",
            ),
            Task.VQA: Head(
                _M + "LxmertForVisualQuestionAnswering",
                auto_classes=("AutoModelForVisualQuestionAnswering",),
                pipeline_tag="visual-question-answering",
                num_labels_field="num_qa_labels",
            ),
            Task.NLVR2: Head(_M + "LxmertForVisualReasoning"),
        },
        inputs=InputKind.REGIONS,
        processor=".processing_lxmert.LxmertProcessor",
        image_processor="hf_vlp.processing.region.RegionFeatureProcessor",
        feature_size_field="visual_feat_dim",
        region_classes_field="num_object_labels",
        # LXMERT counts its layers per stack: language, cross-modality, relational (visual)
        small_sizes=dict(
            hidden_size=128,
            num_attention_heads=4,
            intermediate_size=256,
            l_layers=3,
            x_layers=2,
            r_layers=2,
            initializer_range=0.08,  # follows the width (~1/sqrt(128)): see hf_vlp.recipes.SMALL_SIZES
        ),
        lora_target_modules=r"(.*\.)?(query|key|value|visn_fc\.visn_fc)",
        pretraining_collator=".collator_lxmert.LxmertPretrainingCollator",
        pretraining_objectives=("mlm", "itm", "obj", "attr", "feat", "qa"),
        example_inputs=".inputs_lxmert.example_inputs",
        bench_task=Task.VQA,
    ),
)

_EXPORTS = {
    ".collator_lxmert": ("LxmertPretrainingCollator",),
    ".modeling_lxmert": (
        "LORA_TARGET_MODULES",
        "ORIGINAL_VISUAL_LOSS_NORMALIZER",
        "LxmertForPreTraining",
        "LxmertForPreTrainingOutput",
        "LxmertForVisualQuestionAnswering",
        "LxmertForVisualQuestionAnsweringOutput",
        "LxmertForVisualReasoning",
        "LxmertForVisualReasoningOutput",
        "LxmertModel",
    ),
    ".processing_lxmert": ("LxmertProcessor",),
    "transformers": ("LxmertConfig",),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
