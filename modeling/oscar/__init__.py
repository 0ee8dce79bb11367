"""Oscar (Li et al., ECCV 2020) and VinVL / Oscar+ (Zhang et al., CVPR 2021): config, model, heads and processor.

VinVL is not a separate architecture: it is `OscarConfig.vinvl()` (image LayerNorm, 3-way contrastive head).

This file is the architecture's spec (`SPECS`, read by `import hf_vlp`) and its public names, imported from the
submodules on first access so that reading the spec imports no modeling code.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

_M = ".modeling_oscar."

SPECS = (
    ArchitectureSpec(
        name="oscar",
        model_type="oscar",
        package=__name__,
        config=".configuration_oscar.OscarConfig",
        heads={
            Task.BASE: Head(_M + "OscarModel", auto_classes=("AutoModel",), pipeline_tag="feature-extraction"),
            Task.PRETRAINING: Head(
                _M + "OscarForPreTraining", auto_classes=("AutoModelForPreTraining",), pipeline_tag="feature-extraction"
            ),
            Task.VQA: Head(
                _M + "OscarForVisualQuestionAnswering",
                auto_classes=("AutoModelForVisualQuestionAnswering",),
                pipeline_tag="visual-question-answering",
                num_labels_field="num_labels",
            ),
            Task.NLVR2: Head(
                _M + "OscarForVisualReasoning", config_overrides={"num_labels": 2}, num_labels_field="num_labels"
            ),
            Task.RETRIEVAL: Head(_M + "OscarForImageTextRetrieval"),
            Task.CAPTIONING: Head(
                _M + "OscarForConditionalGeneration",
                auto_classes=("AutoModelForImageTextToText",),
                pipeline_tag="image-to-text",
            ),
        },
        inputs=InputKind.REGIONS,
        processor=".processing_oscar.OscarProcessor",
        image_processor="hf_vlp.processing.region.RegionFeatureProcessor",
        feature_size_field="visual_feat_dim",
        # BERT-style special ids of small vocabularies ([PAD] 0, [CLS] 2, [SEP] 3, [MASK] 4 as
        # `hf_vlp.recipes.shapes_tokenizer`); captioning decodes at [MASK]
        small_sizes=dict(
            hidden_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=256,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
            mask_token_id=4,
            initializer_range=0.08,  # follows the width (~1/sqrt(128)): see hf_vlp.recipes.SMALL_SIZES
        ),
        lora_target_modules=r"(.*\.)?(query|key|value|region_embeddings\.projection)",
        cpt_adapter="hf_vlp.cpt.OscarAdapter",
        # Oscar's contrastive objective pollutes the tags, not the image: no shapes-world recipe in `hf-vlp train`
        example_inputs=".inputs_oscar.example_inputs",
        bench_task=Task.VQA,
    ),
)

_EXPORTS = {
    ".configuration_oscar": ("OscarConfig",),
    ".modeling_oscar": (
        "LORA_TARGET_MODULES",
        "OscarForConditionalGeneration",
        "OscarForImageTextRetrieval",
        "OscarForPreTraining",
        "OscarForVisualQuestionAnswering",
        "OscarForVisualReasoning",
        "OscarModel",
        "OscarPreTrainedModel",
    ),
    ".processing_oscar": ("OscarProcessor",),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
