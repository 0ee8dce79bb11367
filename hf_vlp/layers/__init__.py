"""Building blocks written once and shared by every architecture (docs/design.md, "Layout")."""

from .attention import AttentionBlock, MultiHeadAttention, ResidualOutput, eager_attention_forward
from .boxes import BOX_FEATURE_SIZES, box_location_features, check_region_values, check_visual_inputs
from .coattention import CoAttentionLayer, stream_attention
from .embeddings import RegionEmbeddings, TextEmbeddings
from .heads import MaskedLMHead, Pooler, PredictionHeadTransform, mlp_classifier
from .masks import additive_attention_mask, joint_padding_mask
from .pixels import check_pixel_values
from .transformer import FeedForward, Intermediate, StreamSpec, TransformerEncoder, TransformerLayer

__all__ = [
    "AttentionBlock",
    "BOX_FEATURE_SIZES",
    "CoAttentionLayer",
    "StreamSpec",
    "FeedForward",
    "Intermediate",
    "MaskedLMHead",
    "MultiHeadAttention",
    "Pooler",
    "PredictionHeadTransform",
    "RegionEmbeddings",
    "ResidualOutput",
    "TextEmbeddings",
    "TransformerEncoder",
    "TransformerLayer",
    "additive_attention_mask",
    "joint_padding_mask",
    "box_location_features",
    "check_pixel_values",
    "check_region_values",
    "check_visual_inputs",
    "eager_attention_forward",
    "mlp_classifier",
    "stream_attention",
]
