"""SimVLM (Wang et al., ICLR 2022, "SimVLM: Simple Visual Language Model Pretraining with Weak Supervision"),
implemented from the paper: no code or weights were released. docs/simvlm.md lists every choice the paper leaves
open.

The model (paper section 3.2, figure 1): a convolutional stem (the first three stages of a ResNet) turns the image
into a grid of patch tokens with learned 2-D positions; an encoder attends bidirectionally over
[image tokens ; text prefix]; a decoder generates the text suffix left to right, cross-attending to the encoder.
One objective, PrefixLM (eq. 2): the loss of the suffix given the prefix. For image-text pairs the prefix is the
image and the first words of the text; for text-only data it is the first words (`prefix_lm.py` splits a text).

Reads top-down: outputs, convolutional stem, embeddings, attention, layers, encoder, decoder, `PreTrainedModel`,
base model, heads (`SimVlmForConditionalGeneration` for PrefixLM pretraining, captioning and prompting;
`SimVlmForVisualQuestionAnswering`, generative; `SimVlmForVisualQuestionAnsweringClassifier`).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import Cache, DynamicCache, EncoderDecoderCache, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.layers.attention import eager_attention_forward
from hf_vlp.layers.masks import additive_attention_mask
from hf_vlp.pretraining.losses import masked_cross_entropy, soft_score_loss

from .configuration_simvlm import SimVlmConfig

# PEFT LoRA targets (regex on full module names): the attention projections of both stacks
LORA_TARGET_MODULES = (
    r"(model\.)?(encoder|decoder)\.layers\.\d+\.(self_attn|cross_attn)\.(q_proj|k_proj|v_proj|out_proj)"
)


# ------------------------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class SimVlmClassifierOutput(ModelOutput):
    """loss: soft-score BCE over the answer vocabulary (with `labels`); logits: (B, num_labels); the rest as
    `Seq2SeqModelOutput`."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


# ------------------------------------------------------------------------------------------------------------------
# Input checks
# ------------------------------------------------------------------------------------------------------------------


def _check_pixels(pixel_values, config):
    expected = (config.num_channels, config.image_size, config.image_size)
    if not torch.is_tensor(pixel_values) or pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
        got = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
        raise ValueError(
            f"`pixel_values` must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) (the config's "
            f"num_channels and image_size), got {got}"
        )


def _check_mask(name, mask, shape):
    if mask is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {tuple(shape)}, got {tuple(mask.shape)}")


def _check_length(name, length, limit):
    if length > limit:
        raise ValueError(f"`{name}` has {length} positions, more than max_position_embeddings={limit}")


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: `[start] y1 .. y(n-1)`, ignored labels (-100) read as padding."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


# ------------------------------------------------------------------------------------------------------------------
# Convolutional stem: the first three stages of a ResNet (paper section 3.2)
# ------------------------------------------------------------------------------------------------------------------


class SimVlmBottleneck(nn.Module):
    """A ResNet v1.5 bottleneck (stride on the 3x3 convolution) with GroupNorm: 1x1 -> 3x3 -> 1x1 (4x width)."""

    def __init__(self, in_channels, width, stride, num_groups):
        super().__init__()
        out_channels = width * 4
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.norm1 = nn.GroupNorm(num_groups, width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(num_groups, width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.norm3 = nn.GroupNorm(num_groups, out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.GroupNorm(num_groups, out_channels),
            )
        self.act = nn.ReLU()

    def forward(self, hidden_states):
        shortcut = hidden_states if self.downsample is None else self.downsample(hidden_states)
        hidden_states = self.act(self.norm1(self.conv1(hidden_states)))
        hidden_states = self.act(self.norm2(self.conv2(hidden_states)))
        return self.act(self.norm3(self.conv3(hidden_states)) + shortcut)


class SimVlmConvStem(nn.Module):
    """7x7/2 convolution, 3x3/2 max pool, then `conv_stage_depths` bottleneck stages (stride 1, then 2 each):
    (B, C, H, W) -> (B, stem_channels, H / stride, W / stride); 224 px -> 14 x 14 x 1024 with the defaults."""

    def __init__(self, config: SimVlmConfig):
        super().__init__()
        width, groups = config.conv_stem_width, config.conv_num_groups
        self.conv = nn.Conv2d(config.num_channels, width, 7, stride=2, padding=3, bias=False)
        self.norm = nn.GroupNorm(groups, width)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, in_channels = [], width
        for index, depth in enumerate(config.conv_stage_depths):
            stage_width = width * 2**index
            blocks = []
            for block in range(depth):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(SimVlmBottleneck(in_channels, stage_width, stride, groups))
                in_channels = stage_width * 4
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)

    def forward(self, pixel_values):
        return self.stages(self.pool(self.act(self.norm(self.conv(pixel_values)))))


# ------------------------------------------------------------------------------------------------------------------
# Embeddings
# ------------------------------------------------------------------------------------------------------------------


class SimVlmImageEmbeddings(nn.Module):
    """Stem feature map -> one token per cell (a linear projection to the model width) + a learned 2-D position
    (row embedding + column embedding)."""

    def __init__(self, config: SimVlmConfig):
        super().__init__()
        self.conv_stem = SimVlmConvStem(config)
        self.projection = nn.Linear(config.stem_channels, config.hidden_size)
        self.row_position_embeddings = nn.Embedding(config.grid_size, config.hidden_size)
        self.column_position_embeddings = nn.Embedding(config.grid_size, config.hidden_size)

    def forward(self, pixel_values):
        features = self.conv_stem(pixel_values)  # (B, C, g, g)
        tokens = self.projection(features.flatten(2).transpose(1, 2))
        grid = torch.arange(features.shape[-1], device=tokens.device)
        rows = self.row_position_embeddings(grid)[:, None]
        columns = self.column_position_embeddings(grid)[None, :]
        return tokens + (rows + columns).flatten(0, 1)[None]


# ------------------------------------------------------------------------------------------------------------------
# Attention and layers (pre-LayerNorm, as ViT and T5)
# ------------------------------------------------------------------------------------------------------------------


class SimVlmAttention(nn.Module):
    """Multi-head attention through transformers' attention interface. Self-attention appends its keys / values to
    the decoder's self-attention cache; cross-attention projects the encoder states once and reads them from the
    cross-attention cache after the first decoding step. Masks are always explicit (prefix / causal), so
    `is_causal` stays False."""

    def __init__(self, config: SimVlmConfig, layer_idx=None, is_cross_attention=False):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.is_causal = False
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_probs_dropout_prob
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def _heads(self, projection, states):
        return projection(states).view(*states.shape[:2], -1, self.head_dim).transpose(1, 2)

    def forward(self, hidden_states, attention_mask=None, key_value_states=None, cache=None, **kwargs):
        query = self._heads(self.q_proj, hidden_states)
        if self.is_cross_attention:
            layer_cache = cache.cross_attention_cache if cache is not None else None
            if layer_cache is not None and cache.is_updated.get(self.layer_idx):
                key, value = layer_cache.layers[self.layer_idx].keys, layer_cache.layers[self.layer_idx].values
            else:
                key, value = self._heads(self.k_proj, key_value_states), self._heads(self.v_proj, key_value_states)
                if layer_cache is not None:
                    key, value = layer_cache.update(key, value, self.layer_idx)
                    cache.is_updated[self.layer_idx] = True
        else:
            key, value = self._heads(self.k_proj, hidden_states), self._heads(self.v_proj, hidden_states)
            if cache is not None:
                self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
                key, value = self_cache.update(key, value, self.layer_idx)
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
        return self.out_proj(output.reshape(*hidden_states.shape[:2], -1)), weights


class SimVlmMlp(nn.Module):
    def __init__(self, config: SimVlmConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states):
        return self.fc2(self.dropout(self.act(self.fc1(hidden_states))))


class SimVlmEncoderLayer(GradientCheckpointingLayer):
    """x + SelfAttention(LN(x)), then x + MLP(LN(x)); bidirectional over [image tokens ; text prefix]."""

    def __init__(self, config: SimVlmConfig):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SimVlmAttention(config)
        self.mlp_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SimVlmMlp(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, attention_mask=None):
        attended, weights = self.self_attn(self.self_attn_layer_norm(hidden_states), attention_mask)
        hidden_states = hidden_states + self.dropout(attended)
        hidden_states = hidden_states + self.dropout(self.mlp(self.mlp_layer_norm(hidden_states)))
        return hidden_states, weights


class SimVlmDecoderLayer(GradientCheckpointingLayer):
    """Causal self-attention, cross-attention to the encoder, MLP; each pre-LayerNorm with a residual."""

    def __init__(self, config: SimVlmConfig, layer_idx: int):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SimVlmAttention(config, layer_idx=layer_idx)
        self.cross_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.cross_attn = SimVlmAttention(config, layer_idx=layer_idx, is_cross_attention=True)
        self.mlp_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SimVlmMlp(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask, cache=None):
        attended, self_weights = self.self_attn(self.self_attn_layer_norm(hidden_states), attention_mask, cache=cache)
        hidden_states = hidden_states + self.dropout(attended)
        attended, cross_weights = self.cross_attn(
            self.cross_attn_layer_norm(hidden_states),
            encoder_attention_mask,
            key_value_states=encoder_hidden_states,
            cache=cache,
        )
        hidden_states = hidden_states + self.dropout(attended)
        hidden_states = hidden_states + self.dropout(self.mlp(self.mlp_layer_norm(hidden_states)))
        return hidden_states, self_weights, cross_weights


# ------------------------------------------------------------------------------------------------------------------
# Encoder and decoder
# ------------------------------------------------------------------------------------------------------------------


def encoder_padding_mask(attention_mask, num_states, batch_size, device):
    """(B, S) 1/0 mask of the encoder sequence [image tokens ; text prefix] from the text's (B, T) mask: every image
    token is real. None (no text mask) = all real."""
    if attention_mask is None:
        return torch.ones(batch_size, num_states, dtype=torch.long, device=device)
    num_image = num_states - attention_mask.shape[1]
    if num_image < 0:
        raise ValueError(
            f"`attention_mask` has {attention_mask.shape[1]} positions, more than the {num_states} encoder states"
        )
    image = torch.ones(batch_size, num_image, dtype=attention_mask.dtype, device=device)
    return torch.cat([image, attention_mask], dim=1)


def causal_decoder_mask(decoder_attention_mask, batch_size, num_new, num_cached, dtype, device):
    """(B, 1, n, cached + n) additive mask: the new query at position cached + i sees keys 0 .. cached + i (and,
    with a (B, cached + n) `decoder_attention_mask`, only real ones)."""
    query_positions = torch.arange(num_cached, num_cached + num_new, device=device)
    key_positions = torch.arange(num_cached + num_new, device=device)
    visible = (key_positions[None, :] <= query_positions[:, None])[None].expand(batch_size, -1, -1)
    if decoder_attention_mask is not None:
        visible = visible & decoder_attention_mask[:, None, :].bool()
    return ((~visible).to(dtype) * torch.finfo(dtype).min)[:, None]


class SimVlmEncoder(nn.Module):
    """[image tokens ; text prefix] -> contextual states. Either part may be absent: text-only PrefixLM reads the
    prefix alone, captioning without a prompt the image alone."""

    def __init__(self, config: SimVlmConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.config = config
        self.image_embeddings = SimVlmImageEmbeddings(config)
        self.embed_tokens = embed_tokens
        self.text_position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList([SimVlmEncoderLayer(config) for _ in range(config.num_encoder_layers)])
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def embed(self, input_ids=None, pixel_values=None, attention_mask=None, inputs_embeds=None):
        """The embedded encoder sequence and its (B, S) padding mask."""
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("pass at most one of `input_ids` and `inputs_embeds`")
        if input_ids is None and inputs_embeds is None and pixel_values is None:
            raise ValueError("pass `pixel_values`, a text prefix (`input_ids` / `inputs_embeds`), or both")
        parts, batch_size = [], None
        if pixel_values is not None:
            _check_pixels(pixel_values, self.config)
            dtype = self.image_embeddings.projection.weight.dtype
            parts.append(self.image_embeddings(pixel_values.to(dtype)))
            batch_size = pixel_values.shape[0]
        if input_ids is not None or inputs_embeds is not None:
            text = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
            if text.dim() != 3:
                raise ValueError(f"`input_ids` must be (batch, length), got {tuple(text.shape[:-1])}")
            if batch_size is not None and text.shape[0] != batch_size:
                raise ValueError(f"`input_ids` has batch size {text.shape[0]} but `pixel_values` has {batch_size}")
            _check_length("input_ids", text.shape[1], self.config.max_position_embeddings)
            _check_mask("attention_mask", attention_mask, text.shape[:2])
            positions = torch.arange(text.shape[1], device=text.device)
            parts.append(text + self.text_position_embeddings(positions)[None])
            batch_size = text.shape[0]
        elif attention_mask is not None:
            raise ValueError("`attention_mask` masks the text prefix, but no `input_ids` were given")
        hidden_states = torch.cat(parts, dim=1)
        mask = encoder_padding_mask(attention_mask, hidden_states.shape[1], batch_size, hidden_states.device)
        return hidden_states, mask

    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        hidden_states, mask = self.embed(input_ids, pixel_values, attention_mask, inputs_embeds)
        additive = additive_attention_mask(mask, hidden_states.dtype)
        hidden_states = self.dropout(hidden_states)
        all_hidden = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            hidden_states, weights = layer(hidden_states, additive)
            if output_attentions:
                all_attentions += (weights,)
        hidden_states = self.final_layer_norm(hidden_states)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        output = BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden, attentions=all_attentions)
        return output if return_dict is not False else output.to_tuple()


class SimVlmDecoder(nn.Module):
    """The text suffix, left to right, with cross-attention to the encoder states."""

    def __init__(self, config: SimVlmConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.config = config
        self.embed_tokens = embed_tokens
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList([SimVlmDecoderLayer(config, i) for i in range(config.num_decoder_layers)])
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        input_ids,
        encoder_hidden_states,
        encoder_attention_mask,
        attention_mask=None,
        cache=None,
        output_attentions=False,
        output_hidden_states=False,
    ):
        if input_ids is None or input_ids.dim() != 2:
            got = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"`decoder_input_ids` (or `labels`) must be (batch, length), got {got}")
        batch_size, num_new = input_ids.shape
        num_cached = cache.get_seq_length() if cache is not None else 0
        _check_length("decoder_input_ids", num_cached + num_new, self.config.max_position_embeddings)
        _check_mask("decoder_attention_mask", attention_mask, (batch_size, num_cached + num_new))
        positions = torch.arange(num_cached, num_cached + num_new, device=input_ids.device)
        hidden_states = self.embed_tokens(input_ids) + self.position_embeddings(positions)[None]
        hidden_states = self.dropout(hidden_states)
        self_mask = causal_decoder_mask(
            attention_mask, batch_size, num_new, num_cached, hidden_states.dtype, hidden_states.device
        )
        cross_mask = additive_attention_mask(encoder_attention_mask, hidden_states.dtype)
        all_hidden = () if output_hidden_states else None
        all_self, all_cross = ((), ()) if output_attentions else (None, None)
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            hidden_states, self_weights, cross_weights = layer(
                hidden_states, self_mask, encoder_hidden_states, cross_mask, cache=cache
            )
            if output_attentions:
                all_self += (self_weights,)
                all_cross += (cross_weights,)
        hidden_states = self.final_layer_norm(hidden_states)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        return hidden_states, all_hidden, all_self, all_cross


# ------------------------------------------------------------------------------------------------------------------
# Base model
# ------------------------------------------------------------------------------------------------------------------


class SimVlmPreTrainedModel(HubPushMixin, PreTrainedModel):
    config_class = SimVlmConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["SimVlmEncoderLayer", "SimVlmDecoderLayer", "SimVlmImageEmbeddings"]
    accepts_loss_kwargs = False  # each head normalises its own loss (docs/design.md, "Trainer under DDP")

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, nn.Conv2d):  # ResNet's He initialisation (fan out, ReLU)
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


class SimVlmModel(SimVlmPreTrainedModel):
    """Encoder over [image tokens ; text prefix] and decoder over the suffix; returns the decoder's states.

    Inputs: `input_ids` / `attention_mask` (B, T) the text prefix (optional: the image alone is a prefix),
    `pixel_values` (B, C, H, W) (optional: text-only PrefixLM), `decoder_input_ids` (B, n) the suffix so far,
    `decoder_attention_mask` (B, cached + n) its padding, `encoder_outputs` (reused across decoding steps),
    `cache` an `EncoderDecoderCache`.
    """

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: SimVlmConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.encoder = SimVlmEncoder(config, self.shared)
        self.decoder = SimVlmDecoder(config, self.shared)
        self.post_init()

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, value):
        self.shared = value
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    def get_encoder(self, modality=None):
        return self.encoder

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        cache: Cache | None = None,
        inputs_embeds=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> Seq2SeqModelOutput:
        output_attentions = output_attentions or self.config.output_attentions
        output_hidden_states = output_hidden_states or self.config.output_hidden_states
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                pixel_values=pixel_values,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
        elif not isinstance(encoder_outputs, ModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        encoder_states = encoder_outputs.last_hidden_state
        encoder_mask = encoder_padding_mask(
            attention_mask, encoder_states.shape[1], encoder_states.shape[0], encoder_states.device
        )
        if decoder_input_ids is None:
            raise ValueError("pass `decoder_input_ids` (or `labels` to a head that shifts them into decoder inputs)")
        if decoder_input_ids.shape[0] != encoder_states.shape[0]:
            raise ValueError(
                f"`decoder_input_ids` has batch size {decoder_input_ids.shape[0]}, the prefix {encoder_states.shape[0]}"
            )
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None and not self.training:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        if not use_cache:
            cache = None
        hidden_states, decoder_hidden, decoder_attentions, cross_attentions = self.decoder(
            decoder_input_ids,
            encoder_states,
            encoder_mask,
            attention_mask=decoder_attention_mask,
            cache=cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=hidden_states,
            cache=cache,
            decoder_hidden_states=decoder_hidden,
            decoder_attentions=decoder_attentions,
            cross_attentions=cross_attentions,
            encoder_last_hidden_state=encoder_states,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


# ------------------------------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------------------------------


def default_generation_config(config: SimVlmConfig) -> GenerationConfig:
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_new_tokens=20,
    )


class SimVlmForConditionalGeneration(SimVlmPreTrainedModel, GenerationMixin):
    """The PrefixLM model (paper eq. 2): pretraining, captioning, zero-shot prompting.

    Training: the prefix (`pixel_values` and / or `input_ids`) and `labels` (B, n) the suffix ids ending with
    `eos_token_id`, -100 at padding; the decoder reads `labels` shifted right behind `decoder_start_token_id`.
    `loss` is the mean cross-entropy over the suffix tokens. `prefix_lm.PrefixLmCollator` splits texts into
    prefix and suffix (random split points, the paper's PrefixLM) for both image-text and text-only batches.

    Inference: `generate(pixel_values=..., input_ids=prompt)` with transformers' `GenerationMixin` (greedy, beam
    search, sampling) and a key/value cache. Captioning feeds the image (and an optional prompt such as
    "a picture of", the paper's zero-shot captioning prefix) to the encoder and decodes the continuation.
    """

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}

    def __init__(self, config: SimVlmConfig):
        super().__init__(config)
        self.model = SimVlmModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        self.generation_config = default_generation_config(config)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if getattr(model.generation_config, "_from_model_config", False):
            model.generation_config = default_generation_config(model.config)
        return loaded

    def get_encoder(self, modality=None):
        return self.model.encoder

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def _maybe_initialize_input_ids_for_generation(self, inputs=None, bos_token_id=None, model_kwargs=None):
        # captioning without a prompt: the image alone is the prefix, so the text prefix is empty (B, 0) instead of
        # GenerationMixin's `[bos]` (SimVLM has no bos token)
        pixel_values = (model_kwargs or {}).get("pixel_values")
        if inputs is None and pixel_values is not None and "encoder_outputs" not in model_kwargs:
            return torch.zeros((pixel_values.shape[0], 0), dtype=torch.long, device=pixel_values.device)
        return super()._maybe_initialize_input_ids_for_generation(inputs, bos_token_id, model_kwargs)

    def prepare_decoder_input_ids_from_labels(self, labels):
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        cache: Cache | None = None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> Seq2SeqLMOutput:
        r"""
        labels: (B, n) suffix token ids (-100 = ignored). Given without `decoder_input_ids`, the decoder reads them
            shifted right; the loss is the PrefixLM negative log-likelihood of the suffix, averaged over its tokens.
        Returns `logits` (B, n, vocab_size) for every decoder position.
        """
        if labels is not None:
            if labels.dim() != 2:
                raise ValueError(f"`labels` must be (batch, suffix length), got {tuple(labels.shape)}")
            if decoder_input_ids is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(f"`labels` must have shape {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
            loss = masked_cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )


class SimVlmForVisualQuestionAnswering(SimVlmForConditionalGeneration):
    """Generative VQA (paper section 4.2 / 4.3, open-ended VQA): the image and the question are the prefix, the
    answer is the suffix the decoder generates. `labels` (B, n): the answer ids ending with `eos_token_id`;
    `generate(pixel_values=..., input_ids=question)` answers; `answer_scores` ranks a closed answer list by the
    model's log-likelihood (what a classifier would, without a fixed answer vocabulary in the weights)."""

    @torch.no_grad()
    def answer_scores(self, pixel_values, input_ids, answer_ids, attention_mask=None, answer_attention_mask=None):
        """(B, A) summed log-probabilities of each of A candidate answers (`answer_ids` (A, n), each ending with
        `eos_token_id`, padded with `pad_token_id` and `answer_attention_mask` 0) for every question of the batch."""
        if answer_ids.dim() != 2:
            raise ValueError(f"`answer_ids` must be (answers, length), got {tuple(answer_ids.shape)}")
        if answer_attention_mask is None:
            answer_attention_mask = torch.ones_like(answer_ids)
        _check_mask("answer_attention_mask", answer_attention_mask, answer_ids.shape)
        encoder_outputs = self.get_encoder()(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask
        )
        batch, answers = encoder_outputs.last_hidden_state.shape[0], answer_ids.shape[0]
        states = encoder_outputs.last_hidden_state.repeat_interleave(answers, dim=0)
        mask = None if attention_mask is None else attention_mask.repeat_interleave(answers, dim=0)
        labels = answer_ids.masked_fill(answer_attention_mask == 0, -100).repeat(batch, 1)
        logits = self(
            attention_mask=mask,
            encoder_outputs=BaseModelOutput(last_hidden_state=states),
            labels=labels,
            use_cache=False,
        ).logits.float()
        log_probs = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        return (log_probs * (labels != -100)).sum(-1).view(batch, answers)


class SimVlmForVisualQuestionAnsweringClassifier(SimVlmPreTrainedModel):
    """VQA as classification over `config.num_labels` answers: the decoder reads only `decoder_start_token_id`
    (cross-attending to image + question) and an MLP scores the answers from its output; `labels` (B, num_labels)
    soft VQA scores, binary cross-entropy as the VQA literature (docs/simvlm.md: the paper's fine-tuning variant)."""

    def __init__(self, config: SimVlmConfig):
        super().__init__(config)
        self.model = SimVlmModel(config)
        self.classifier = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size * 2),
            nn.GELU(),
            nn.LayerNorm(config.hidden_size * 2, eps=config.layer_norm_eps),
            nn.Linear(config.hidden_size * 2, config.num_labels),
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> SimVlmClassifierOutput:
        r"""labels: (B, num_labels) soft answer scores in [0, 1]."""
        reference = input_ids if input_ids is not None else inputs_embeds if inputs_embeds is not None else pixel_values
        if reference is None:
            raise ValueError("pass `pixel_values`, a question (`input_ids` / `inputs_embeds`), or both")
        start = torch.full((reference.shape[0], 1), self.config.decoder_start_token_id, device=reference.device)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            decoder_input_ids=start,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(outputs.last_hidden_state[:, 0])
        loss = None
        if labels is not None:
            if labels.shape != logits.shape:
                raise ValueError(f"`labels` must have shape {tuple(logits.shape)}, got {tuple(labels.shape)}")
            loss = soft_score_loss(logits.float(), labels.float())
        return SimVlmClassifierOutput(
            loss=loss,
            logits=logits,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
        )


__all__ = [
    "LORA_TARGET_MODULES",
    "SimVlmClassifierOutput",
    "SimVlmForConditionalGeneration",
    "SimVlmForVisualQuestionAnswering",
    "SimVlmForVisualQuestionAnsweringClassifier",
    "SimVlmModel",
    "SimVlmPreTrainedModel",
    "causal_decoder_mask",
    "encoder_padding_mask",
    "shift_tokens_right",
]
