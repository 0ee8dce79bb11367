"""ViLBERT (Lu et al., NeurIPS 2019) and the 12-in-1 multi-task model (Lu et al., CVPR 2020)."""

from .configuration_vilbert import VilbertConfig
from .modeling_vilbert import (
    LORA_TARGET_MODULES,
    VilbertForGQA,
    VilbertForImageTextRetrieval,
    VilbertForMultipleChoice,
    VilbertForMultiTask,
    VilbertForPreTraining,
    VilbertForReferringExpression,
    VilbertForVisualEntailment,
    VilbertForVisualQuestionAnswering,
    VilbertForVisualReasoning,
    VilbertModel,
    VilbertPreTrainedModel,
)

from hf_vlp.processing.region import RegionFeatureProcessor
from hf_vlp.registry import register_architecture

from .processing_vilbert import VilbertProcessor

register_architecture(
    "vilbert",
    VilbertConfig,
    models={
        "AutoModel": VilbertModel,
        "AutoModelForPreTraining": VilbertForPreTraining,
        "AutoModelForVisualQuestionAnswering": VilbertForVisualQuestionAnswering,
        "AutoModelForMultipleChoice": VilbertForMultipleChoice,
    },
    heads={
        "pretraining": VilbertForPreTraining,
        "vqa": VilbertForVisualQuestionAnswering,
        "gqa": VilbertForGQA,
        "retrieval": VilbertForImageTextRetrieval,
        "nlvr2": VilbertForVisualReasoning,
        "entailment": VilbertForVisualEntailment,
        "refexp": VilbertForReferringExpression,
        "vcr": VilbertForMultipleChoice,
        "multitask": VilbertForMultiTask,
    },
    processor_class=VilbertProcessor,
    image_processor_class=RegionFeatureProcessor,
)

__all__ = [
    "LORA_TARGET_MODULES",
    "VilbertConfig",
    "VilbertForGQA",
    "VilbertForImageTextRetrieval",
    "VilbertForMultiTask",
    "VilbertForMultipleChoice",
    "VilbertForPreTraining",
    "VilbertForReferringExpression",
    "VilbertForVisualEntailment",
    "VilbertForVisualQuestionAnswering",
    "VilbertForVisualReasoning",
    "VilbertModel",
    "VilbertPreTrainedModel",
    "VilbertProcessor",
]
