"""VisualBERT (Li et al., 2019): transformers' model classes with the original's defaults; processor, pretraining
collator and LoRA preset."""

from transformers import VisualBertConfig

from hf_vlp.processing.region import RegionFeatureProcessor
from hf_vlp.registry import register_architecture

from .collator_visual_bert import VisualBertPretrainingCollator
from .modeling_visual_bert import (
    LORA_TARGET_MODULES,
    VisualBertForMultipleChoice,
    VisualBertForPreTraining,
    VisualBertForPreTrainingOutput,
    VisualBertForVisualQuestionAnswering,
    VisualBertForVisualReasoning,
    VisualBertModel,
    VisualBertPreTrainedModel,
)
from .processing_visual_bert import VisualBertProcessor

# transformers already maps visual_bert in AutoConfig / AutoModel / AutoModelForPreTraining (to its own classes, left
# as they are): only what it lacks is registered here; every hf_vlp class is listed in `heads`.
register_architecture(
    "visual_bert",
    VisualBertConfig,
    models={"AutoModelForVisualQuestionAnswering": VisualBertForVisualQuestionAnswering},
    heads={
        "base": VisualBertModel,
        "pretraining": VisualBertForPreTraining,
        "vqa": VisualBertForVisualQuestionAnswering,
        "nlvr2": VisualBertForVisualReasoning,
        "vcr": VisualBertForMultipleChoice,
    },
    processor_class=VisualBertProcessor,
    image_processor_class=RegionFeatureProcessor,
)

__all__ = [
    "VisualBertPretrainingCollator",
    "LORA_TARGET_MODULES",
    "VisualBertConfig",
    "VisualBertForMultipleChoice",
    "VisualBertForPreTraining",
    "VisualBertForPreTrainingOutput",
    "VisualBertForVisualQuestionAnswering",
    "VisualBertForVisualReasoning",
    "VisualBertModel",
    "VisualBertPreTrainedModel",
    "VisualBertProcessor",
]
