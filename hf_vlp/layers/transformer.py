"""The BERT-style post-LayerNorm transformer layer and encoder shared by single-stream VLP models."""

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import AttentionBlock, ResidualOutput


class Intermediate(nn.Module):
    def __init__(self, hidden_size, intermediate_size, hidden_act):
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)
        self.intermediate_act_fn = ACT2FN[hidden_act] if isinstance(hidden_act, str) else hidden_act

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class FeedForward(nn.Module):
    """BERT's feed-forward pair (`intermediate` + `output`) as one module, for layers that hold several."""

    def __init__(self, config, hidden_size=None, intermediate_size=None):
        super().__init__()
        hidden_size = hidden_size or config.hidden_size
        intermediate_size = intermediate_size or config.intermediate_size
        self.intermediate = Intermediate(hidden_size, intermediate_size, config.hidden_act)
        self.output = ResidualOutput(
            intermediate_size, hidden_size, config.hidden_dropout_prob, getattr(config, "layer_norm_eps", 1e-12)
        )

    def forward(self, hidden_states):
        return self.output(self.intermediate(hidden_states), hidden_states)


class TransformerLayer(GradientCheckpointingLayer):
    """Self-attention + feed-forward, post-LayerNorm (BERT). Keys: `attention.*`, `intermediate.*`, `output.*`."""

    def __init__(self, config):
        super().__init__()
        self.attention = AttentionBlock(config)
        self.intermediate = Intermediate(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.output = ResidualOutput(
            config.intermediate_size,
            config.hidden_size,
            config.hidden_dropout_prob,
            getattr(config, "layer_norm_eps", 1e-12),
        )

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attended, weights = self.attention(hidden_states, attention_mask, **kwargs)
        return self.output(self.intermediate(attended), attended), weights


class TransformerEncoder(nn.Module):
    """A stack of `TransformerLayer`s; returns the last hidden state and, on request, every layer's output."""

    def __init__(self, config, num_layers=None):
        super().__init__()
        self.layer = nn.ModuleList(TransformerLayer(config) for _ in range(num_layers or config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, hidden_states, attention_mask=None, output_hidden_states=False, output_attentions=False):
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layer:
            hidden_states, weights = layer(hidden_states, attention_mask)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return hidden_states, all_hidden_states, all_attentions
