"""UNITER (Chen et al., ECCV 2020): config, model, heads and processor."""

from .configuration_uniter import UniterConfig
from .modeling_uniter import (
    UniterForImageTextRetrieval,
    UniterForPreTraining,
    UniterForReferringExpression,
    UniterForVisualEntailment,
    UniterForVisualQuestionAnswering,
    UniterForVisualReasoning,
    UniterModel,
    UniterPreTrainedModel,
)

from hf_vlp.processing.region import RegionFeatureProcessor
from hf_vlp.registry import register_architecture

from .processing_uniter import UniterProcessor

register_architecture(
    "uniter",
    UniterConfig,
    models={
        "AutoModel": UniterModel,
        "AutoModelForPreTraining": UniterForPreTraining,
        "AutoModelForVisualQuestionAnswering": UniterForVisualQuestionAnswering,
    },
    heads={
        "pretraining": UniterForPreTraining,
        "vqa": UniterForVisualQuestionAnswering,
        "entailment": UniterForVisualEntailment,
        "nlvr2": UniterForVisualReasoning,
        "retrieval": UniterForImageTextRetrieval,
        "refexp": UniterForReferringExpression,
    },
    processor_class=UniterProcessor,
    image_processor_class=RegionFeatureProcessor,
)
