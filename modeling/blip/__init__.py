"""BLIP (Li et al., ICML 2022): transformers' Blip classes with the original pretraining objectives, retrieval
re-ranking, VQA answer ranking and fixes of transformers' deviations (docs/blip.md)."""

from transformers import BlipConfig

from hf_vlp.registry import register_architecture

from .configuration_blip import PRETRAINING_DEFAULTS, blip_config, pretraining_setting
from .modeling_blip import (
    LORA_TARGET_MODULES,
    BlipAnswerRanking,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForPreTraining,
    BlipForPreTrainingOutput,
    BlipForQuestionAnswering,
    BlipQuestionAnsweringOutput,
    BlipRetrievalScores,
    BlipTextCrossAttentionWithMask,
    mask_cross_attention_padding,
    with_first_token,
)
from .processing_blip import build_blip_processor, pre_caption, pre_question

# transformers already maps BlipConfig to its own classes; the hf_vlp subclasses (same weights, fixed mask, original
# losses) take precedence once hf_vlp is imported.
register_architecture(
    "blip",
    BlipConfig,
    models={
        "AutoModelForPreTraining": BlipForPreTraining,
        "AutoModelForVisualQuestionAnswering": BlipForQuestionAnswering,
        "AutoModelForImageTextToText": BlipForConditionalGeneration,
    },
    heads={
        "pretraining": BlipForPreTraining,
        "vqa": BlipForQuestionAnswering,
        "captioning": BlipForConditionalGeneration,
        "retrieval": BlipForImageTextRetrieval,
    },
)

__all__ = [
    "LORA_TARGET_MODULES",
    "PRETRAINING_DEFAULTS",
    "BlipAnswerRanking",
    "BlipForConditionalGeneration",
    "BlipForImageTextRetrieval",
    "BlipForPreTraining",
    "BlipForPreTrainingOutput",
    "BlipForQuestionAnswering",
    "BlipQuestionAnsweringOutput",
    "BlipRetrievalScores",
    "BlipTextCrossAttentionWithMask",
    "blip_config",
    "build_blip_processor",
    "mask_cross_attention_padding",
    "pre_caption",
    "pre_question",
    "pretraining_setting",
    "with_first_token",
]
