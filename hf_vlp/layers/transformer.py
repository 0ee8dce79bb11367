"""The BERT-style post-LayerNorm transformer layer and encoder, shared by single-stream VLP models and by each stream of
the two-stream ones (`hf_vlp.layers.coattention`)."""

from dataclasses import dataclass

from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import AttentionBlock, ResidualOutput


@dataclass
class StreamSpec:
    """Sizes of one stream: its width, self-attention heads, feed-forward width, activation and dropouts.

    Single-stream models take them from the BERT names of their config (`StreamSpec.from_config`); two-stream models
    (ViLBERT's visual stream, `v_*` fields) describe each stream with its own.
    """

    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    @classmethod
    def from_config(cls, config):
        return cls(
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            config.hidden_act,
            config.hidden_dropout_prob,
            config.attention_probs_dropout_prob,
        )


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
    """Self-attention + feed-forward, post-LayerNorm (BERT). Keys: `attention.*`, `intermediate.*`, `output.*`.

    Sized by the config's BERT fields, or by `stream` for a stream whose width, heads and feed-forward differ from
    them (ViLBERT's visual layers `v_layer`); `layer_norm_eps` defaults to `config.layer_norm_eps`.
    """

    def __init__(self, config, stream: StreamSpec | None = None, layer_norm_eps=None):
        super().__init__()
        stream = stream or StreamSpec.from_config(config)
        eps = getattr(config, "layer_norm_eps", 1e-12) if layer_norm_eps is None else layer_norm_eps
        self.attention = AttentionBlock(
            config,
            hidden_size=stream.hidden_size,
            num_heads=stream.num_attention_heads,
            attention_dropout=stream.attention_probs_dropout_prob,
            hidden_dropout=stream.hidden_dropout_prob,
            layer_norm_eps=eps,
        )
        self.intermediate = Intermediate(stream.hidden_size, stream.intermediate_size, stream.hidden_act)
        self.output = ResidualOutput(stream.intermediate_size, stream.hidden_size, stream.hidden_dropout_prob, eps)

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
