"""Multi-head attention through transformers' attention interface (eager, SDPA, flex, flash).

One module serves self-attention (keys/values from the same stream) and cross-attention (keys/values from
another stream, as in co-attention and cross-modal layers), so every architecture calls the same kernel path.
Parameter names follow BERT (`query`, `key`, `value`; `output.dense`, `output.LayerNorm`) so original
checkpoints map one to one.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Reference attention: softmax(QK^T * scale + mask) V. `attention_mask` is additive, broadcastable to scores."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with `num_heads` heads over an `attention_size`-wide projection.

    `hidden_size` is the width of the query stream, `context_size` the width of the key/value stream (defaults to
    `hidden_size`); ViLBERT's co-attention uses different widths for the two streams.
    """

    def __init__(self, config, hidden_size=None, num_heads=None, context_size=None, attention_size=None, dropout=None):
        super().__init__()
        self.config = config
        hidden_size = hidden_size or config.hidden_size
        self.num_heads = num_heads or config.num_attention_heads
        attention_size = attention_size or hidden_size
        if attention_size % self.num_heads:
            raise ValueError(f"attention size {attention_size} is not a multiple of num_heads={self.num_heads}")
        self.head_size = attention_size // self.num_heads
        self.scaling = self.head_size**-0.5
        self.is_causal = False  # SDPA reads this attribute; every VLP encoder attends bidirectionally
        context_size = context_size or hidden_size
        self.query = nn.Linear(hidden_size, attention_size)
        self.key = nn.Linear(context_size, attention_size)
        self.value = nn.Linear(context_size, attention_size)
        self.dropout = config.attention_probs_dropout_prob if dropout is None else dropout

    def forward(self, hidden_states, attention_mask=None, context=None, **kwargs):
        context = hidden_states if context is None else context
        batch, query_len = hidden_states.shape[:2]
        query = self.query(hidden_states).view(batch, query_len, -1, self.head_size).transpose(1, 2)
        key = self.key(context).view(batch, context.shape[1], -1, self.head_size).transpose(1, 2)
        value = self.value(context).view(batch, context.shape[1], -1, self.head_size).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return output.reshape(batch, query_len, -1), weights


class ResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): BERT's `*Output` blocks."""

    def __init__(self, input_size, hidden_size, dropout, layer_norm_eps):
        super().__init__()
        self.dense = nn.Linear(input_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states, residual):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class AttentionBlock(nn.Module):
    """Attention followed by its residual output: BERT's `BertAttention` (`self` + `output`).

    Sizes default to the config's. A two-stream model passes each stream's own width, heads, dropouts and LayerNorm
    eps; a co-attention passes `context_size` (the width of the stream the keys/values come from) and
    `attention_size` / `num_heads` (the width and heads of the attention itself), and then calls `forward` with
    `context=` the other stream.
    """

    def __init__(
        self,
        config,
        hidden_size=None,
        num_heads=None,
        context_size=None,
        attention_size=None,
        attention_dropout=None,
        hidden_dropout=None,
        layer_norm_eps=None,
    ):
        super().__init__()
        hidden_size = hidden_size or config.hidden_size
        attention_size = attention_size or hidden_size
        hidden_dropout = config.hidden_dropout_prob if hidden_dropout is None else hidden_dropout
        layer_norm_eps = getattr(config, "layer_norm_eps", 1e-12) if layer_norm_eps is None else layer_norm_eps
        self.self = MultiHeadAttention(config, hidden_size, num_heads, context_size, attention_size, attention_dropout)
        self.output = ResidualOutput(attention_size, hidden_size, hidden_dropout, layer_norm_eps)

    def forward(self, hidden_states, attention_mask=None, context=None, **kwargs):
        attended, weights = self.self(hidden_states, attention_mask, context=context, **kwargs)
        return self.output(attended, hidden_states), weights
