"""CLIP (Radford et al., ICML 2021): transformers' `CLIPModel` with hf_vlp's distributed-exact contrastive training,
and OpenAI's ModifiedResNet CLIP (which transformers lacks).

This file is the architectures' specs (`SPECS`, read by `import hf_vlp`) and their public names, imported from the
submodules on first access so that reading the specs imports no modeling code.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

_M = ".modeling_clip."
_SMALL = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256)
# BERT-style special ids of small vocabularies ([PAD] 0, [CLS] 2 as start of text, [SEP] 3 as end of text)
_SMALL_TEXT = dict(_SMALL, vocab_size=64, max_position_embeddings=40, pad_token_id=0, bos_token_id=2, eos_token_id=3)

SPECS = (
    ArchitectureSpec(
        name="clip",
        model_type="clip",
        package=__name__,
        config="transformers.CLIPConfig",
        heads={
            # first: a CLIPForPreTraining model card says zero-shot classification
            Task.RETRIEVAL: Head(_M + "CLIPForPreTraining", pipeline_tag="zero-shot-image-classification"),
            Task.PRETRAINING: Head(
                _M + "CLIPForPreTraining",
                auto_classes=("AutoModelForPreTraining",),
                pipeline_tag="zero-shot-image-classification",
            ),
        },
        inputs=InputKind.PIXELS,
        processor=".processing_clip.CLIPOriginalProcessor",
        vocab_size_field="text_config.vocab_size",
        # CLIP's init already follows the width (attention and MLP std ~ hidden**-0.5, scaled by initializer_factor;
        # embeddings 0.02 x factor): factor 2 gives a 128-wide model attention logits of the size that
        # hf_vlp.recipes.SMALL_SIZES' initializer_range 0.08 gives the BERT-style models (std ~0.7 rather than ~0.2)
        small_sizes=dict(
            text_config=_SMALL_TEXT,
            vision_config=dict(_SMALL, image_size=64, patch_size=16),
            projection_dim=64,
            initializer_factor=2.0,
        ),
        lora_target_modules=r"(.*\.)?(q_proj|k_proj|v_proj|out_proj)",
        example_inputs=".inputs_clip.example_inputs",
        bench_task=Task.RETRIEVAL,
    ),
    ArchitectureSpec(
        name="clip_resnet",
        model_type="clip_resnet",
        package=__name__,
        config=".configuration_clip_resnet.CLIPResNetConfig",
        heads={
            Task.RETRIEVAL: Head(
                _M + "CLIPResNetModel",
                auto_classes=("AutoModelForZeroShotImageClassification",),
                pipeline_tag="zero-shot-image-classification",
            ),
            Task.PRETRAINING: Head(
                _M + "CLIPResNetModel",
                auto_classes=("AutoModelForPreTraining",),
                pipeline_tag="zero-shot-image-classification",
            ),
            Task.BASE: Head(
                _M + "CLIPResNetModel", auto_classes=("AutoModel",), pipeline_tag="zero-shot-image-classification"
            ),
        },
        inputs=InputKind.PIXELS,
        # also makes `AutoProcessor` resolve a saved `CLIPOriginalProcessor` by name, for ViT CLIP folders too
        processor=".processing_clip.CLIPOriginalProcessor",
        image_processor="transformers.CLIPImageProcessorPil",
        vocab_size_field="text_config.vocab_size",
        small_sizes=dict(
            text_config=_SMALL_TEXT, vision_config=dict(layers=[1, 1, 1, 1], width=16, image_size=64), projection_dim=64
        ),
        lora_target_modules=r"(.*\.)?(q_proj|k_proj|v_proj|out_proj|c_proj)",
        example_inputs=".inputs_clip.example_inputs",
        bench_task=Task.RETRIEVAL,
    ),
)

_EXPORTS = {
    ".configuration_clip_resnet": ("CLIPResNetConfig", "CLIPResNetVisionConfig"),
    ".modeling_clip": (
        "LORA_TARGET_MODULES",
        "RESNET_LORA_TARGET_MODULES",
        "CLIPForPreTraining",
        "CLIPResNetModel",
        "CLIPResNetPreTrainedModel",
        "CLIPResNetVisionModel",
        "check_text_length",
    ),
    ".processing_clip": ("CLIPOriginalProcessor", "build_clip_processor", "clean_text"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
