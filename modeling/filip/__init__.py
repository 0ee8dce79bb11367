"""FILIP (Yao et al., ICLR 2022): a CLIP dual encoder with token-wise late interaction, implemented from the paper
(no code or weights were released; docs/filip.md).

This file is the architecture's spec (`SPECS`, read by `import hf_vlp`) and its public names, imported from the
submodules on first access so that reading the spec imports no modeling code.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

_M = ".modeling_filip."
_SMALL = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256)

SPECS = (
    ArchitectureSpec(
        name="filip",
        model_type="filip",
        package=__name__,
        config=".configuration_filip.FilipConfig",
        heads={
            Task.PRETRAINING: Head(
                _M + "FilipModel",
                auto_classes=("AutoModelForPreTraining",),
                pipeline_tag="zero-shot-image-classification",
            ),
            Task.RETRIEVAL: Head(
                _M + "FilipForImageTextRetrieval",
                auto_classes=("AutoModelForZeroShotImageClassification",),
                pipeline_tag="zero-shot-image-classification",
            ),
            Task.BASE: Head(_M + "FilipModel", auto_classes=("AutoModel",), pipeline_tag="feature-extraction"),
        },
        inputs=InputKind.PIXELS,
        processor=".processing_filip.FilipProcessor",
        vocab_size_field="text_config.vocab_size",
        # CLIP's small sizes (modeling/clip): BERT-style special ids of small vocabularies, init factor 2 at width 128
        small_sizes=dict(
            text_config=dict(
                _SMALL, vocab_size=64, max_position_embeddings=40, pad_token_id=0, bos_token_id=2, eos_token_id=3
            ),
            vision_config=dict(_SMALL, image_size=64, patch_size=16),
            projection_dim=64,
            initializer_factor=2.0,
        ),
        lora_target_modules=r"(vision_model|text_model)\..*\.(q_proj|k_proj|v_proj|out_proj)",
        example_inputs=".inputs_filip.example_inputs",
        bench_task=Task.PRETRAINING,
    ),
)

_EXPORTS = {
    ".configuration_filip": ("FilipConfig",),
    ".modeling_filip": (
        "LORA_TARGET_MODULES",
        "FilipForImageTextRetrieval",
        "FilipModel",
        "FilipOutput",
        "FilipPreTrainedModel",
    ),
    ".processing_filip": ("DEFAULT_TEMPLATES", "FilipProcessor"),
    ".late_interaction": ("late_interaction_loss", "late_interaction_similarity", "select_tokens"),
    ".retrieval_bench": ("retrieval_throughput",),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
