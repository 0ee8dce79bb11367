"""ViT: transformers' classes (image classification fine-tuning, vision tower of the other architectures) and the
representation-layer head of the ImageNet-21k releases that transformers lacks."""

from transformers import ViTConfig, ViTForImageClassification, ViTModel

from hf_vlp.registry import register_architecture

from .modeling_vit import (
    LORA_MODULES_TO_SAVE,
    LORA_TARGET_MODULES,
    ViTForImageClassificationWithRepresentation,
    ViTRepresentationConfig,
)

register_architecture("vit", ViTConfig, heads={"backbone": ViTModel, "classification": ViTForImageClassification})
register_architecture(
    "vit_representation",
    ViTRepresentationConfig,
    models={"AutoModelForImageClassification": ViTForImageClassificationWithRepresentation},
    heads={"classification": ViTForImageClassificationWithRepresentation},
)

__all__ = [
    "LORA_MODULES_TO_SAVE",
    "LORA_TARGET_MODULES",
    "ViTForImageClassificationWithRepresentation",
    "ViTRepresentationConfig",
]
