"""CLIP (Radford et al., ICML 2021): transformers' `CLIPModel` with hf_vlp's distributed-exact contrastive training,
and OpenAI's ModifiedResNet CLIP (which transformers lacks)."""

from transformers import CLIPConfig, CLIPImageProcessorPil

from hf_vlp.registry import register_architecture

from .configuration_clip_resnet import CLIPResNetConfig, CLIPResNetVisionConfig
from .modeling_clip import (
    LORA_TARGET_MODULES,
    RESNET_LORA_TARGET_MODULES,
    CLIPForPreTraining,
    CLIPResNetModel,
    CLIPResNetPreTrainedModel,
    CLIPResNetVisionModel,
    check_text_length,
)
from .processing_clip import CLIPOriginalProcessor, build_clip_processor, clean_text

register_architecture(
    "clip",
    CLIPConfig,
    models={"AutoModelForPreTraining": CLIPForPreTraining},
    heads={"pretraining": CLIPForPreTraining, "retrieval": CLIPForPreTraining},
)
register_architecture(
    "clip_resnet",
    CLIPResNetConfig,
    models={
        "AutoModel": CLIPResNetModel,
        "AutoModelForPreTraining": CLIPResNetModel,
        "AutoModelForZeroShotImageClassification": CLIPResNetModel,
    },
    heads={"pretraining": CLIPResNetModel, "retrieval": CLIPResNetModel},
    # also makes `AutoProcessor` resolve a saved `CLIPOriginalProcessor` by name, for ViT CLIP folders too
    processor_class=CLIPOriginalProcessor,
    image_processor_class=CLIPImageProcessorPil,
)

__all__ = [
    "LORA_TARGET_MODULES",
    "RESNET_LORA_TARGET_MODULES",
    "CLIPForPreTraining",
    "CLIPOriginalProcessor",
    "build_clip_processor",
    "clean_text",
    "CLIPResNetConfig",
    "CLIPResNetModel",
    "CLIPResNetPreTrainedModel",
    "CLIPResNetVisionConfig",
    "CLIPResNetVisionModel",
    "check_text_length",
]
