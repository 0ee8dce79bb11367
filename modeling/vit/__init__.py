"""ViT: transformers' classes (image classification fine-tuning, vision tower of the other architectures) and the
representation-layer head of the ImageNet-21k releases that transformers lacks.

This file is the architectures' specs (`SPECS`, read by `import hf_vlp`) and their public names, imported from the
submodules on first access so that reading the specs imports no modeling code.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

# initializer_range: width-matched (~1/sqrt(128)) instead of the 768-wide model's 0.02, as hf_vlp.recipes.SMALL_SIZES;
# ViT reads it for every Linear, the patch projection (a Conv2d), the position embeddings and the [CLS] token
_SMALL = dict(
    hidden_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=256,
    image_size=32,
    patch_size=8,
    initializer_range=0.08,
)

SPECS = (
    ArchitectureSpec(
        name="vit",
        model_type="vit",
        package=__name__,
        config="transformers.ViTConfig",
        heads={
            Task.CLASSIFICATION: Head(
                "transformers.ViTForImageClassification",
                pipeline_tag="image-classification",
                num_labels_field="num_labels",
            ),
            Task.BASE: Head("transformers.ViTModel", pipeline_tag="image-feature-extraction"),
        },
        inputs=InputKind.PIXELS,
        vocab_size_field=None,
        small_sizes=_SMALL,
        # the attention projections of every layer (transformers 5 ViT); the new classifier trains fully
        lora_target_modules=r"(.*\.)?(q_proj|k_proj|v_proj|o_proj)",
        lora_modules_to_save=("classifier",),
        example_inputs=".inputs_vit.example_inputs",
        bench_task=Task.CLASSIFICATION,
    ),
    ArchitectureSpec(
        name="vit_representation",
        model_type="vit_representation",
        package=__name__,
        # the config class lives in the modeling file: AutoConfig imports it only when a folder names this type
        config=".modeling_vit.ViTRepresentationConfig",
        heads={
            Task.CLASSIFICATION: Head(
                ".modeling_vit.ViTForImageClassificationWithRepresentation",
                auto_classes=("AutoModelForImageClassification",),
                pipeline_tag="image-classification",
                num_labels_field="num_labels",
            ),
        },
        inputs=InputKind.PIXELS,
        vocab_size_field=None,
        small_sizes=dict(_SMALL, pooler_output_size=128, pooler_act="tanh"),
        lora_target_modules=r"(.*\.)?(q_proj|k_proj|v_proj|o_proj)",
        lora_modules_to_save=("classifier",),
        example_inputs=".inputs_vit.example_inputs",
        bench_task=Task.CLASSIFICATION,
    ),
)

_EXPORTS = {
    ".modeling_vit": (
        "LORA_MODULES_TO_SAVE",
        "LORA_TARGET_MODULES",
        "ViTForImageClassificationWithRepresentation",
        "ViTRepresentationConfig",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
