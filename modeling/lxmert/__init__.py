"""LXMERT (Tan & Bansal, 2019): transformers' model classes with gradient checkpointing, per-objective pretraining
losses, the original VQA loss; processor, pretraining collator and LoRA preset."""

from transformers import LxmertConfig

from hf_vlp.processing.region import RegionFeatureProcessor
from hf_vlp.registry import register_architecture

from .collator_lxmert import LxmertPretrainingCollator
from .modeling_lxmert import (
    LORA_TARGET_MODULES,
    ORIGINAL_VISUAL_LOSS_NORMALIZER,
    LxmertForPreTraining,
    LxmertForPreTrainingOutput,
    LxmertForVisualQuestionAnswering,
    LxmertForVisualQuestionAnsweringOutput,
    LxmertModel,
)
from .processing_lxmert import LxmertProcessor

# transformers already maps lxmert in AutoConfig / AutoModel / AutoModelForPreTraining / AutoModelForQuestionAnswering
# (to its own classes, left as they are): only what it lacks is registered here.
register_architecture(
    "lxmert",
    LxmertConfig,
    models={"AutoModelForVisualQuestionAnswering": LxmertForVisualQuestionAnswering},
    heads={"base": LxmertModel, "pretraining": LxmertForPreTraining, "vqa": LxmertForVisualQuestionAnswering},
    processor_class=LxmertProcessor,
    image_processor_class=RegionFeatureProcessor,
)

__all__ = [
    "LxmertPretrainingCollator",
    "LORA_TARGET_MODULES",
    "ORIGINAL_VISUAL_LOSS_NORMALIZER",
    "LxmertConfig",
    "LxmertForPreTraining",
    "LxmertForPreTrainingOutput",
    "LxmertForVisualQuestionAnswering",
    "LxmertForVisualQuestionAnsweringOutput",
    "LxmertModel",
    "LxmertProcessor",
]
