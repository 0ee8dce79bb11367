"""ViLT: transformers' backbone and fine-tuning heads, plus the pretraining objectives (MLM + ITM + word-patch
alignment, untied MLM decoder) and a trainable retrieval head."""

from transformers import ViltConfig, ViltForImagesAndTextClassification, ViltForQuestionAnswering, ViltProcessor

from hf_vlp.registry import register_architecture

from .modeling_vilt import (
    LORA_TARGET_MODULES,
    ViltForImageTextRetrieval,
    ViltForPreTraining,
    ViltForPreTrainingOutput,
    ViltITMHead,
    word_patch_alignment,
)

register_architecture(
    "vilt",
    ViltConfig,
    models={"AutoModelForPreTraining": ViltForPreTraining},
    heads={
        "pretraining": ViltForPreTraining,
        "vqa": ViltForQuestionAnswering,
        "nlvr2": ViltForImagesAndTextClassification,
        "retrieval": ViltForImageTextRetrieval,
    },
    processor_class=ViltProcessor,
)

__all__ = [
    "LORA_TARGET_MODULES",
    "ViltForImageTextRetrieval",
    "ViltForPreTraining",
    "ViltForPreTrainingOutput",
    "ViltITMHead",
    "word_patch_alignment",
]
