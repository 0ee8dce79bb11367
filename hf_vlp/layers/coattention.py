"""The co-attention layer that joins the two streams of two-stream models.

Two-stream models (ViLBERT, ERNIE-ViL; LXMERT-style cross layers) keep a text stream and a visual stream with
their own widths, head counts and feed-forward sizes, and exchange information in co-attention layers: the queries
of each stream attend over the keys/values of the other stream (ViLBERT, Lu et al. 2019, Fig. 2b). Each stream's own
layers are the single-stream `TransformerLayer` sized by a `StreamSpec`; the co-attention layer is built from the same
`AttentionBlock` and feed-forward pieces, so everything runs through `MultiHeadAttention`, hence through
transformers' attention interface (eager, SDPA, flex, flash), with additive key masks built once at model level.

Parameter names follow BERT inside each block (`attention.self.query`, `attention.output.dense`, `intermediate.dense`,
`output.LayerNorm`), so converters map original checkpoints with a key table.
"""

from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import AttentionBlock, ResidualOutput
from .transformer import Intermediate, StreamSpec


def stream_attention(
    config, stream: StreamSpec, context_size=None, attention_size=None, num_heads=None, layer_norm_eps=1e-12
):
    """An `AttentionBlock` whose queries come from `stream` (its width, heads and dropouts); with `context_size`, the
    keys/values come from another stream of that width, through an attention `attention_size` wide with `num_heads`
    heads (ViLBERT's `bi_hidden_size` / `bi_num_attention_heads`)."""
    return AttentionBlock(
        config,
        hidden_size=stream.hidden_size,
        num_heads=num_heads or stream.num_attention_heads,
        context_size=context_size,
        attention_size=attention_size,
        attention_dropout=stream.attention_probs_dropout_prob,
        hidden_dropout=stream.hidden_dropout_prob,
        layer_norm_eps=layer_norm_eps,
    )


class CoAttentionLayer(GradientCheckpointingLayer):
    """Co-attention block: each stream's queries attend over the other stream's keys/values, then (optionally) each
    stream attends to itself, then each stream runs its own feed-forward.

    text' = LN(text + W_t · Attn(Q_t text, K_v visual, V_v visual))      (text_attention, mask = visual mask)
    visual' = LN(visual + W_v · Attn(Q_v visual, K_t text, V_t text))    (visual_attention, mask = text mask)
    then text'' = FFN_t(text'), visual'' = FFN_v(visual'), post-LayerNorm (ViLBERT `BertConnectionLayer`,
    ERNIE-ViL `encoder_co_layer`). Both directions use `co_attention_size` / `co_num_heads`, which may differ from
    both stream widths. `self_attention=True` inserts a per-stream self-attention between the exchange and the
    feed-forward (the LXMERT cross-modal layer order; METER's self -> cross -> FFN order is `cross_modal.CrossModalLayer`).

    Keys: `text_attention.{self.query,self.key,self.value,output.dense,output.LayerNorm}` (query on text, key/value
    on visual), `visual_attention.*` (query on visual, key/value on text), `text_self_attention.*` /
    `visual_self_attention.*` (optional), `text_intermediate.dense`, `text_output.{dense,LayerNorm}`,
    `visual_intermediate.dense`, `visual_output.{dense,LayerNorm}`.
    """

    def __init__(
        self,
        config,
        text: StreamSpec,
        visual: StreamSpec,
        co_attention_size: int,
        co_num_heads: int,
        layer_norm_eps: float = 1e-12,
        self_attention: bool = False,
    ):
        super().__init__()
        self.text_attention = stream_attention(
            config, text, visual.hidden_size, co_attention_size, co_num_heads, layer_norm_eps
        )
        self.visual_attention = stream_attention(
            config, visual, text.hidden_size, co_attention_size, co_num_heads, layer_norm_eps
        )
        if self_attention:
            self.text_self_attention = stream_attention(config, text, layer_norm_eps=layer_norm_eps)
            self.visual_self_attention = stream_attention(config, visual, layer_norm_eps=layer_norm_eps)
        self.has_self_attention = self_attention
        self.text_intermediate = Intermediate(text.hidden_size, text.intermediate_size, text.hidden_act)
        self.text_output = ResidualOutput(
            text.intermediate_size, text.hidden_size, text.hidden_dropout_prob, layer_norm_eps
        )
        self.visual_intermediate = Intermediate(visual.hidden_size, visual.intermediate_size, visual.hidden_act)
        self.visual_output = ResidualOutput(
            visual.intermediate_size, visual.hidden_size, visual.hidden_dropout_prob, layer_norm_eps
        )

    def forward(self, text_states, visual_states, text_mask=None, visual_mask=None, **kwargs):
        """`text_mask` / `visual_mask`: additive key masks (B, 1, 1, T) / (B, 1, 1, R) of each stream.

        Returns (text_states, visual_states, (text->visual weights, visual->text weights)); weights are None under
        SDPA.
        """
        new_text, text_weights = self.text_attention(text_states, visual_mask, context=visual_states, **kwargs)
        new_visual, visual_weights = self.visual_attention(visual_states, text_mask, context=text_states, **kwargs)
        if self.has_self_attention:
            new_text, _ = self.text_self_attention(new_text, text_mask, **kwargs)
            new_visual, _ = self.visual_self_attention(new_visual, visual_mask, **kwargs)
        text_out = self.text_output(self.text_intermediate(new_text), new_text)
        visual_out = self.visual_output(self.visual_intermediate(new_visual), new_visual)
        return text_out, visual_out, (text_weights, visual_weights)


__all__ = ["CoAttentionLayer", "StreamSpec", "stream_attention"]
