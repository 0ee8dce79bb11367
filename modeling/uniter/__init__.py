"""UNITER (Chen et al., ECCV 2020): config, model, heads and processor.

This file is the architecture's spec (`SPECS`, read by `import hf_vlp`) and its public names, imported from the
submodules on first access so that reading the spec imports no modeling code.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

SPECS = (
    ArchitectureSpec(
        name="uniter",
        model_type="uniter",
        package=__name__,
        config=".configuration_uniter.UniterConfig",
        heads={
            Task.BASE: Head(
                ".modeling_uniter.UniterModel", auto_classes=("AutoModel",), pipeline_tag="feature-extraction"
            ),
            Task.PRETRAINING: Head(
                ".modeling_uniter.UniterForPreTraining",
                auto_classes=("AutoModelForPreTraining",),
                pipeline_tag="feature-extraction",
            ),
            Task.VQA: Head(
                ".modeling_uniter.UniterForVisualQuestionAnswering",
                auto_classes=("AutoModelForVisualQuestionAnswering",),
                pipeline_tag="visual-question-answering",
                num_labels_field="num_labels",
            ),
            Task.ENTAILMENT: Head(
                ".modeling_uniter.UniterForVisualEntailment",
                config_overrides={"num_labels": 3},
                num_labels_field="num_labels",
            ),
            # the second image's regions take token type 2
            Task.NLVR2: Head(".modeling_uniter.UniterForVisualReasoning", config_overrides={"type_vocab_size": 3}),
            Task.RETRIEVAL: Head(".modeling_uniter.UniterForImageTextRetrieval"),
            Task.REFEXP: Head(".modeling_uniter.UniterForReferringExpression"),
            # token types: question 0, regions 1, answer 2, rationale 3
            Task.VCR: Head(
                ".modeling_uniter.UniterForVisualCommonsenseReasoning",
                auto_classes=("AutoModelForMultipleChoice",),
                config_overrides={"type_vocab_size": 4},
            ),
        },
        inputs=InputKind.REGIONS,
        processor=".processing_uniter.UniterProcessor",
        image_processor="hf_vlp.processing.region.RegionFeatureProcessor",
        feature_size_field="visual_feat_dim",
        region_classes_field="num_region_classes",
        # initializer_range follows the width (~1/sqrt(128)): see hf_vlp.recipes.SMALL_SIZES
        small_sizes=dict(
            hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256, initializer_range=0.08
        ),
        # self-attention projections of every layer and the region-feature projection
        lora_target_modules=r".*\.attention\.self\.(query|key|value)|.*\.img_embeddings\.img_linear",
        cpt_adapter="hf_vlp.cpt.UniterAdapter",
        pretraining_collator="hf_vlp.pretraining.collators.DataCollatorForVLPretraining",
        pretraining_objectives=("mlm", "mrfr", "mrc_kl", "itm"),
        example_inputs=".inputs_uniter.example_inputs",
        bench_task=Task.VQA,
    ),
)

_EXPORTS = {
    ".configuration_uniter": ("UniterConfig",),
    ".modeling_uniter": (
        "UniterForImageTextRetrieval",
        "UniterForPreTraining",
        "UniterForReferringExpression",
        "UniterForVisualCommonsenseReasoning",
        "UniterForVisualEntailment",
        "UniterForVisualQuestionAnswering",
        "UniterForVisualReasoning",
        "UniterModel",
        "UniterPreTrainedModel",
    ),
    ".processing_uniter": ("UniterProcessor",),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
