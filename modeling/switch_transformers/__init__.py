"""Switch Transformers (Fedus et al., JMLR 2022): transformers' model with the router z-loss and load-balancing loss
as separately logged objectives (docs/switch_transformers.md)."""

from transformers import SwitchTransformersConfig

from hf_vlp.registry import register_architecture

from .modeling_switch_transformers import (
    LORA_TARGET_MODULES,
    SwitchTransformersForConditionalGeneration,
    SwitchTransformersSeq2SeqOutput,
    router_losses,
)

register_architecture(
    "switch_transformers",
    SwitchTransformersConfig,
    models={"AutoModelForSeq2SeqLM": SwitchTransformersForConditionalGeneration},
    heads={"seq2seq": SwitchTransformersForConditionalGeneration},
)

__all__ = [
    "LORA_TARGET_MODULES",
    "SwitchTransformersForConditionalGeneration",
    "SwitchTransformersSeq2SeqOutput",
    "router_losses",
]
