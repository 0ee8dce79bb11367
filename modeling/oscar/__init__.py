"""Oscar (Li et al., ECCV 2020) and VinVL / Oscar+ (Zhang et al., CVPR 2021): config, model, heads and processor.

VinVL is not a separate architecture: it is `OscarConfig.vinvl()` (image LayerNorm, 3-way contrastive head).
"""

from hf_vlp.processing.region import RegionFeatureProcessor
from hf_vlp.registry import register_architecture

from .configuration_oscar import OscarConfig
from .modeling_oscar import (
    LORA_TARGET_MODULES,
    OscarForConditionalGeneration,
    OscarForImageTextRetrieval,
    OscarForPreTraining,
    OscarForVisualQuestionAnswering,
    OscarForVisualReasoning,
    OscarModel,
    OscarPreTrainedModel,
)
from .processing_oscar import OscarProcessor

register_architecture(
    "oscar",
    OscarConfig,
    models={
        "AutoModel": OscarModel,
        "AutoModelForPreTraining": OscarForPreTraining,
        "AutoModelForVisualQuestionAnswering": OscarForVisualQuestionAnswering,
        "AutoModelForImageTextToText": OscarForConditionalGeneration,
    },
    heads={
        "pretraining": OscarForPreTraining,
        "vqa": OscarForVisualQuestionAnswering,
        "nlvr2": OscarForVisualReasoning,
        "retrieval": OscarForImageTextRetrieval,
        "captioning": OscarForConditionalGeneration,
    },
    processor_class=OscarProcessor,
    image_processor_class=RegionFeatureProcessor,
)

__all__ = [
    "LORA_TARGET_MODULES",
    "OscarConfig",
    "OscarForConditionalGeneration",
    "OscarForImageTextRetrieval",
    "OscarForPreTraining",
    "OscarForVisualQuestionAnswering",
    "OscarForVisualReasoning",
    "OscarModel",
    "OscarPreTrainedModel",
    "OscarProcessor",
]
