"""The METER-style cross-modal layer: self-attention, then cross-attention to the other stream, then feed-forward.

METER (Dou et al., CVPR 2022, Sec. 3 "co-attention") and BridgeTower fuse two unimodal encoders with a stack of
these layers per stream, each a post-LayerNorm BERT layer with a cross-attention block inserted after the
self-attention (METER `bert_model.BertCrossLayer`):

    x' = LN(x + SelfAttn(x))                         (mask: this stream's padding)
    x'' = LN(x' + CrossAttn(Q = x', K = V = y))      (mask: the other stream's padding; y = the other stream's input)
    out = LN(x'' + FFN(x''))

The two streams of a fusion layer update in parallel: each reads the other stream's *input* to the layer (its state
after the previous layer), never the other stream's new state. `hf_vlp.layers.CoAttentionLayer` (ViLBERT) runs
the exchange first and self-attention after it, so it cannot load or reproduce METER; this layer has METER's order
and METER's key names (`attention.*`, `crossattention.*`, `intermediate.dense`, `output.{dense,LayerNorm}`), so a
checkpoint maps one to one. Both attentions go through `MultiHeadAttention`, hence transformers' attention
interface (eager, SDPA), with additive key masks built once at model level; `is_causal` is False everywhere
(BridgeTower's transformers port builds its self-attention causal, which under SDPA without a mask would not be
METER).
"""

from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import AttentionBlock, ResidualOutput
from .transformer import Intermediate, StreamSpec


class CrossModalLayer(GradientCheckpointingLayer):
    """One stream's fusion layer. Sized by `stream` (width, heads, feed-forward, dropouts); the other stream must
    have the same width (METER projects both encoders to one `hidden_size` before fusion), or pass `context_size`."""

    def __init__(self, config, stream: StreamSpec, layer_norm_eps: float = 1e-12, context_size=None):
        super().__init__()
        sizes = dict(
            hidden_size=stream.hidden_size,
            num_heads=stream.num_attention_heads,
            attention_dropout=stream.attention_probs_dropout_prob,
            hidden_dropout=stream.hidden_dropout_prob,
            layer_norm_eps=layer_norm_eps,
        )
        self.attention = AttentionBlock(config, **sizes)
        self.crossattention = AttentionBlock(config, context_size=context_size or stream.hidden_size, **sizes)
        self.intermediate = Intermediate(stream.hidden_size, stream.intermediate_size, stream.hidden_act)
        self.output = ResidualOutput(
            stream.intermediate_size, stream.hidden_size, stream.hidden_dropout_prob, layer_norm_eps
        )

    def forward(self, hidden_states, context, attention_mask=None, context_mask=None, **kwargs):
        """`attention_mask` / `context_mask`: additive key masks (B, 1, 1, L) of this stream / of `context`, or None
        (every position attended). Returns (new states, self-attention weights, cross-attention weights); weights
        are None under SDPA."""
        attended, self_weights = self.attention(hidden_states, attention_mask, **kwargs)
        crossed, cross_weights = self.crossattention(attended, context_mask, context=context, **kwargs)
        return self.output(self.intermediate(crossed), crossed), self_weights, cross_weights


__all__ = ["CrossModalLayer"]
