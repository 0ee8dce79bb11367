"""ViLBERT (Lu et al., NeurIPS 2019) and the 12-in-1 multi-task model (Lu et al., CVPR 2020).

This file is the architecture's spec (`SPECS`, read by `import hf_vlp`) and its public names, imported from the
submodules on first access so that reading the spec imports no modeling code.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

_M = ".modeling_vilbert."

SPECS = (
    ArchitectureSpec(
        name="vilbert",
        model_type="vilbert",
        package=__name__,
        config=".configuration_vilbert.VilbertConfig",
        heads={
            Task.BASE: Head(_M + "VilbertModel", auto_classes=("AutoModel",), pipeline_tag="feature-extraction"),
            Task.PRETRAINING: Head(
                _M + "VilbertForPreTraining",
                auto_classes=("AutoModelForPreTraining",),
                pipeline_tag="feature-extraction",
            ),
            Task.VQA: Head(
                _M + "VilbertForVisualQuestionAnswering",
                auto_classes=("AutoModelForVisualQuestionAnswering",),
                pipeline_tag="visual-question-answering",
                num_labels_field="num_labels",
            ),
            Task.GQA: Head(
                _M + "VilbertForGQA", pipeline_tag="visual-question-answering", num_labels_field="gqa_num_labels"
            ),
            Task.RETRIEVAL: Head(_M + "VilbertForImageTextRetrieval"),
            Task.NLVR2: Head(_M + "VilbertForVisualReasoning"),
            Task.ENTAILMENT: Head(_M + "VilbertForVisualEntailment"),
            Task.REFEXP: Head(_M + "VilbertForReferringExpression"),
            Task.VCR: Head(_M + "VilbertForMultipleChoice", auto_classes=("AutoModelForMultipleChoice",)),
            # 12-in-1 tells the tasks apart by task tokens
            Task.MULTITASK: Head(_M + "VilbertForMultiTask", config_overrides={"task_specific_tokens": True}),
        },
        inputs=InputKind.REGIONS,
        processor=".processing_vilbert.VilbertProcessor",
        image_processor="hf_vlp.processing.region.RegionFeatureProcessor",
        feature_size_field="v_feature_size",
        region_classes_field="v_target_size",
        small_sizes=dict(
            hidden_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=256,
            v_hidden_size=128,
            v_num_hidden_layers=3,
            v_num_attention_heads=4,
            v_intermediate_size=256,
            bi_hidden_size=128,
            bi_num_attention_heads=4,
            initializer_range=0.08,  # follows the width (~1/sqrt(128)): see hf_vlp.recipes.SMALL_SIZES
        ),
        # query and value of every attention of the text, visual and co-attention stacks (the 12-in-1 LoRA recipe)
        lora_target_modules=(
            r".*encoder\.(layer|v_layer)\.\d+\.attention\.self\.(query|value)"
            r"|.*encoder\.c_layer\.\d+\.(text|visual)_attention\.self\.(query|value)"
        ),
        pretraining_collator="hf_vlp.pretraining.collators.DataCollatorForVLPretraining",
        # the released models regress no features (visual_target "kl"): MRC-KL, not MRFR
        pretraining_objectives=("mlm", "mrc_kl", "itm"),
        example_inputs=".inputs_vilbert.example_inputs",
        bench_task=Task.VQA,
    ),
)

_EXPORTS = {
    ".configuration_vilbert": ("VilbertConfig",),
    ".modeling_vilbert": (
        "LORA_TARGET_MODULES",
        "VilbertForGQA",
        "VilbertForImageTextRetrieval",
        "VilbertForMultiTask",
        "VilbertForMultipleChoice",
        "VilbertForPreTraining",
        "VilbertForReferringExpression",
        "VilbertForVisualEntailment",
        "VilbertForVisualQuestionAnswering",
        "VilbertForVisualReasoning",
        "VilbertModel",
        "VilbertPreTrainedModel",
    ),
    ".processing_vilbert": ("VilbertProcessor",),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
