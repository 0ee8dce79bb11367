"""Oscar (Li et al., ECCV 2020) and VinVL / Oscar+ (Zhang et al., CVPR 2021).

A single-stream BERT over `[text_a [SEP] object tags [SEP] | regions]`: the caption / question and the detector's
object tags are one BERT sentence pair (segments 0 and 1), the regions follow the padded text. Reproduces
github.com/microsoft/Oscar `oscar/modeling/modeling_bert.py`: `BertImgModel` (backbone), `BertImgForPreTraining`
(masked token loss over words and tags + contrastive loss), `ImageBertForSequenceClassification` (VQA, GQA,
retrieval), `ImageBertForMultipleChoice` (NLVR2) and `BertForImageCaptioning` with the decoding of
`oscar/modeling/modeling_utils.py`.

VinVL is this model with `OscarConfig.vinvl()` settings (image LayerNorm, 3-way contrastive head).

Region inputs: the original feeds `img_feats` (B, R, 2054) = 2048-d feature + `[x1, y1, x2, y2, w, h]` of the box
normalized by the image size. hf_vlp takes `visual_feats` (B, R, 2048) and `visual_pos` (B, R, 4) and appends the
6-d location vector inside the model. Regions get no position or segment embedding (as in the original).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache, GenerationConfig, GenerationMixin, PreTrainedModel, TrainerCallback
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.layers import (
    MaskedLMHead,
    MultiHeadAttention,
    Pooler,
    TextEmbeddings,
    TransformerEncoder,
    additive_attention_mask,
    box_location_features,
    check_visual_inputs,
    joint_padding_mask,
)
from hf_vlp.layers import TransformerLayer as TransformerLayer  # named in `_no_split_modules`
from hf_vlp.layers.attention import eager_attention_forward
from hf_vlp.pretraining.losses import masked_cross_entropy, soft_score_loss

from .configuration_oscar import OscarConfig

# PEFT LoRA defaults: the attention projections of every layer and the region projection (the visual path)
LORA_TARGET_MODULES = ["query", "key", "value", "region_embeddings.projection"]


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class OscarModelOutput(ModelOutput):
    """
    last_hidden_state: (B, T + R, H) joint sequence, text (words + tags) first, then regions.
    pooler_output: (B, H) tanh(dense([CLS])).
    text_hidden_state / visual_hidden_state: (B, T, H) / (B, R, H) views of the joint sequence.
    hidden_states: embeddings and every layer's output (on request).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    text_hidden_state: torch.FloatTensor | None = None
    visual_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class OscarForPreTrainingOutput(ModelOutput):
    """`loss` = weighted sum of the masked token loss and the contrastive loss.

    mlm_logits: (N, V) vocabulary logits at the N positions where `labels != -100` (row-major) when labels are given,
        else (B, T, V) at every text position (as every hf_vlp pretraining head).
    contrastive_logits: (B, num_contrast_classes) from the pooled output.
    """

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    contrastive_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None

    @property
    def prediction_logits(self):
        """Former name of `mlm_logits` without labels (read by `hf_vlp.conversion.oscar`'s fixture check)."""
        return self.mlm_logits


@dataclass
class OscarTaskOutput(ModelOutput):
    """logits: (B, num_labels). scores: retrieval only, the probability that text and image match."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class OscarCaptioningOutput(ModelOutput):
    """
    masked_logits: (N, V) logits at the N caption positions with `labels != -100` (row-major), when labels are given.
    logits: (B, T, V) logits at every text position (a full text without `labels`), or (B, 1, V) in a decoding step:
        the scores of the next caption token, read at the [MASK] the model appends.
    cache: decoding steps with `use_cache`: the keys and values of the tags, regions and caption tokens (never of the
        appended [MASK]).
    """

    loss: torch.FloatTensor | None = None
    masked_logits: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------------
# Embeddings, masks, encoder
# ----------------------------------------------------------------------------------------------------------------


class OscarRegionEmbeddings(nn.Module):
    """`dropout(LayerNorm?(projection([feature ; location])))` (the original's `img_embedding` and the VinVL image
    LayerNorm `bert.LayerNorm`). The location vector is derived from the normalized boxes (`box_feature_kind`)."""

    def __init__(self, config: OscarConfig):
        super().__init__()
        self.box_feature_kind = config.box_feature_kind
        self.projection = nn.Linear(config.img_feature_dim, config.hidden_size)
        self.LayerNorm = (
            nn.LayerNorm(config.hidden_size, eps=config.img_layer_norm_eps) if config.use_img_layer_norm else None
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, visual_feats, visual_pos=None):
        if self.box_feature_kind is not None:
            location = box_location_features(visual_pos, self.box_feature_kind).to(visual_feats.dtype)
            visual_feats = torch.cat([visual_feats, location], dim=-1)
        embeddings = self.projection(visual_feats)
        if self.LayerNorm is not None:
            embeddings = self.LayerNorm(embeddings)
        return self.dropout(embeddings)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """1/0 mask -> additive mask broadcastable to (B, heads, queries, keys): (B, L) padding masks via the shared
    helper, (B, Q, K) query-specific masks (captioning) with the same dtype-lowest value.

    A query row that may attend to nothing (a padding row of the original's captioning mask) attends to every key:
    the original's `-10000` shift leaves such a row's softmax over its raw scores, and this keeps it finite too."""
    if mask.dim() == 2:
        return additive_attention_mask(mask, dtype)
    mask = mask.bool()
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return (~mask[:, None]).to(dtype) * torch.finfo(dtype).min


def caption_attention_mask(text_mask, visual_mask, is_caption):
    """The captioning mask of `run_captioning.py` (`CaptionTensorizer`), (B, T + R, T + R), 1 = may attend.

    Caption tokens attend causally to caption tokens and fully to tags and regions; tags and regions attend to
    tags and regions only. Padding is never attended to, and padding rows are all zero (as in the original; see
    `additive_mask`). `is_caption` (B, T) marks the caption part, a prefix of the text.
    """
    key_valid = torch.cat([text_mask, visual_mask], dim=1).bool()
    caption = torch.cat([is_caption.bool(), is_caption.new_zeros(visual_mask.shape, dtype=torch.bool)], dim=1)
    length = key_valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=key_valid.device).tril()
    # key j visible from query i: j is valid and (j is not caption, or i is caption and j <= i)
    visible = ~caption[:, None, :] | (caption[:, :, None] & causal[None])
    return (visible & key_valid[:, None, :] & key_valid[:, :, None]).long()


def caption_decoding_mask(prefix_mask, caption_mask, num_new_tokens, encodes_prefix):
    """The captioning mask of one decoding step over a key/value cache, (B, Q, K), 1 = may attend.

    Keys are `[tags + regions | caption tokens | [MASK]]` (the cached ones first, then this step's), queries are this
    step's positions: the tags and regions when `encodes_prefix` (the first step), the `num_new_tokens` newest
    caption tokens and the appended [MASK]. As in `caption_attention_mask`: a caption token (or [MASK]) sees the valid
    tags and regions and, causally, the caption before it; tags and regions see only tags and regions.
    `prefix_mask` (B, tags + regions) and `caption_mask` (B, caption tokens so far) are 1/0 padding masks.
    """
    batch, prefix_len = prefix_mask.shape
    caption_len = caption_mask.shape[1]
    device = prefix_mask.device
    key_valid = torch.cat(
        [prefix_mask.bool(), caption_mask.bool(), torch.ones(batch, 1, dtype=torch.bool, device=device)], dim=1
    )
    # caption rank of every key and query: -1 for tags and regions, 0.. for caption tokens, caption_len for [MASK]
    prefix_rank = torch.full((prefix_len,), -1, device=device)
    key_rank = torch.cat([prefix_rank, torch.arange(caption_len + 1, device=device)])
    query_rank = torch.arange(caption_len - num_new_tokens, caption_len + 1, device=device)
    if encodes_prefix:
        query_rank = torch.cat([prefix_rank, query_rank])
    visible = (key_rank[None] < 0) | ((query_rank[:, None] >= 0) & (key_rank[None] <= query_rank[:, None]))
    return (visible[None] & key_valid[:, None, :]).long()


class OscarSelfAttention(MultiHeadAttention):
    """BERT self-attention that can read and extend a key/value `Cache` (caption decoding).

    With `cache`, the keys and values of the first `num_cached` positions of this call are appended to the cache, and
    the queries attend to everything cached before plus every position of this call; the positions after
    `num_cached` (the appended [MASK]) are attended to but never stored. The original caches every layer's input
    states instead (`past`) and recomputes keys and values from them: the same numbers.
    """

    def __init__(self, config, layer_idx):
        super().__init__(config)
        self.layer_idx = layer_idx

    def forward(self, hidden_states, attention_mask=None, context=None, cache=None, num_cached=0, **kwargs):
        if cache is None:
            return super().forward(hidden_states, attention_mask, context=context, **kwargs)
        batch, length = hidden_states.shape[:2]
        heads = (batch, length, -1, self.head_size)
        query, key, value = (
            projection(hidden_states).view(heads).transpose(1, 2) for projection in (self.query, self.key, self.value)
        )
        cached_key, cached_value = cache.update(key[:, :, :num_cached], value[:, :, :num_cached], self.layer_idx)
        key = torch.cat([cached_key, key[:, :, num_cached:]], dim=2)
        value = torch.cat([cached_value, value[:, :, num_cached:]], dim=2)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self, query, key, value, attention_mask, dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling, **kwargs,
        )  # fmt: skip
        return output.reshape(batch, length, -1), weights


class OscarEncoder(TransformerEncoder):
    """The BERT encoder whose self-attention can use a key/value `Cache` (caption decoding, see
    `OscarSelfAttention`); without a cache it is the shared `TransformerEncoder`."""

    def __init__(self, config):
        super().__init__(config)
        for index, layer in enumerate(self.layer):
            # same parameters and keys (`attention.self.query` ...), plus the cache path
            layer.attention.self = OscarSelfAttention(config, layer_idx=index)

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        output_hidden_states=False,
        output_attentions=False,
        cache=None,
        num_cached=0,
    ):
        if cache is None:
            return super().forward(hidden_states, attention_mask, output_hidden_states, output_attentions)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layer:
            hidden_states, weights = layer(hidden_states, attention_mask, cache=cache, num_cached=num_cached)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return hidden_states, all_hidden_states, all_attentions


# ----------------------------------------------------------------------------------------------------------------
# Base model
# ----------------------------------------------------------------------------------------------------------------


class OscarPreTrainedModel(HubPushMixin, PreTrainedModel):
    config_class = OscarConfig
    base_model_prefix = "oscar"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["TransformerLayer", "TextEmbeddings", "OscarRegionEmbeddings"]
    accepts_loss_kwargs = False  # each head normalises its own loss (docs/design.md, "Trainer under DDP")

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MaskedLMHead):
            init.zeros_(module.bias)


def _check_text_mask(name, mask, expected_shape):
    if mask is not None and tuple(mask.shape) != tuple(expected_shape):
        raise ValueError(f"`{name}` must have shape {tuple(expected_shape)}, got {tuple(mask.shape)}.")


class OscarModel(OscarPreTrainedModel):
    """The Oscar / VinVL encoder (`BertImgModel`).

    Inputs follow docs/design.md's input vocabulary: `input_ids` (B, T) = `[CLS] text [SEP] tags [SEP] [PAD]...` with
    `token_type_ids` 0 for the text part and 1 for the tags; `visual_feats` (B, R, 2048), `visual_pos` (B, R, 4)
    normalized x1,y1,x2,y2; `visual_attention_mask` (B, R). `attention_mask` is either the (B, T) text padding mask or
    a full (B, T + R, T + R) mask as the original's captioning code builds (then `visual_attention_mask` must be None).
    """

    def __init__(self, config: OscarConfig, add_pooling_layer=True):
        super().__init__(config)
        self.embeddings = TextEmbeddings(config)
        self.region_embeddings = OscarRegionEmbeddings(config)
        self.encoder = OscarEncoder(config)
        self.pooler = Pooler(config.hidden_size) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def _check_visual(self, visual_feats, visual_pos, visual_attention_mask, batch_size):
        if self.config.box_feature_kind is None:
            if visual_feats is None or visual_feats.dim() != 3:
                shape = None if visual_feats is None else tuple(visual_feats.shape)
                raise ValueError(f"`visual_feats` must be (batch, regions, feature_dim), got {shape}.")
            if visual_feats.shape[0] != batch_size:
                raise ValueError(
                    f"text batch size {batch_size} and `visual_feats` batch size {visual_feats.shape[0]} differ."
                )
        else:
            check_visual_inputs(visual_feats, visual_pos, visual_attention_mask, batch_size=batch_size)
        if visual_feats.shape[-1] != self.config.visual_feat_dim:
            hint = ""
            if visual_feats.shape[-1] == self.config.img_feature_dim and self.config.box_feature_kind is not None:
                hint = (
                    " It looks like the original's `img_feats` with the box part appended: pass "
                    f"`visual_feats=img_feats[..., :{self.config.visual_feat_dim}]` and `visual_pos=img_feats[..., "
                    f"{self.config.visual_feat_dim}:{self.config.visual_feat_dim + 4}]`."
                )
            raise ValueError(
                f"`visual_feats` must have {self.config.visual_feat_dim} features per region (config.visual_feat_dim), "
                f"got {visual_feats.shape[-1]}.{hint}"
            )

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        visual_feats=None,
        visual_pos=None,
        attention_mask=None,
        visual_attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> OscarModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of `input_ids` and `inputs_embeds`.")
        text_shape = tuple(input_ids.shape if input_ids is not None else inputs_embeds.shape[:2])
        self._check_visual(visual_feats, visual_pos, visual_attention_mask, text_shape[0])
        _check_text_mask("token_type_ids", token_type_ids, text_shape)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions

        text_embeddings = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        visual_embeddings = self.region_embeddings(visual_feats.to(text_embeddings.dtype), visual_pos)
        hidden_states = torch.cat([text_embeddings, visual_embeddings], dim=1)
        length = hidden_states.shape[1]

        device = hidden_states.device
        if attention_mask is not None and attention_mask.dim() == 3:
            if visual_attention_mask is not None:
                raise ValueError("with a full (batch, L, L) `attention_mask`, leave `visual_attention_mask` None.")
            _check_text_mask("attention_mask", attention_mask, (text_shape[0], length, length))
            mask = attention_mask
        else:
            if attention_mask is not None:
                _check_text_mask("attention_mask", attention_mask, text_shape)
            mask = joint_padding_mask(attention_mask, visual_attention_mask, text_shape, visual_feats.shape[1], device)

        sequence, all_hidden, all_attentions = self.encoder(
            hidden_states,
            additive_mask(mask, hidden_states.dtype),
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        output = OscarModelOutput(
            last_hidden_state=sequence,
            pooler_output=self.pooler(sequence) if self.pooler is not None else None,
            text_hidden_state=sequence[:, : text_shape[1]],
            visual_hidden_state=sequence[:, text_shape[1] :],
            hidden_states=all_hidden,
            attentions=all_attentions,
        )
        return output


def _classifier(config: OscarConfig, input_size: int, output_size: int, layer_norm=False):
    """The original's `classifier`: a Linear, or Linear -> ReLU -> [LayerNorm] -> Linear (`classifier: mlp`, width
    `hidden_size * cls_hidden_scale`). A `Sequential`, so keys are `0.*`, `2.*` (`3.*` with the LayerNorm) as in the
    released checkpoints."""
    if config.classifier_type == "linear":
        return nn.Linear(input_size, output_size)
    width = config.hidden_size * config.classifier_hidden_scale
    layers = [nn.Linear(input_size, width), nn.ReLU()]
    if layer_norm:
        layers.append(nn.LayerNorm(width, eps=config.layer_norm_eps))
    return nn.Sequential(*layers, nn.Linear(width, output_size))


# ----------------------------------------------------------------------------------------------------------------
# Pretraining
# ----------------------------------------------------------------------------------------------------------------


class OscarForPreTraining(OscarPreTrainedModel):
    """Oscar / VinVL pretraining (`BertImgForPreTraining`, `run_oscarplus_pretrain.py`).

    - Masked token loss over words AND object tags: `labels` (B, T) original ids at masked text positions, -100
      elsewhere (regions are never masked).
    - Contrastive loss on the pooled output: `contrastive_labels` (B,). Oscar (2 classes): 0 = the image's own tags,
      1 = "polluted" tags from another image. VinVL (3 classes): additionally 2 = the caption comes from another
      image.
    The collator makes the masks and the polluted pairs.
    """

    _tied_weights_keys = {"mlm_head.decoder.weight": "oscar.embeddings.word_embeddings.weight"}

    def __init__(self, config: OscarConfig):
        super().__init__(config)
        self.oscar = OscarModel(config)
        self.mlm_head = MaskedLMHead(config.hidden_size, config.vocab_size, config.hidden_act, config.layer_norm_eps)
        self.contrastive_head = nn.Linear(config.hidden_size, config.num_contrast_classes)
        self.post_init()

    def get_output_embeddings(self):
        return self.mlm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.mlm_head.decoder = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        visual_feats=None,
        visual_pos=None,
        attention_mask=None,
        visual_attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        contrastive_labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> OscarForPreTrainingOutput:
        outputs = self.oscar(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        config = self.config
        result = OscarForPreTrainingOutput(hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        weighted = []
        if labels is not None:
            _check_text_mask("labels", labels, outputs.text_hidden_state.shape[:2])
            masked = labels != -100
            result.mlm_logits = self.mlm_head(outputs.text_hidden_state[masked])
            result.mlm_loss = masked_cross_entropy(result.mlm_logits, labels[masked])
            weighted.append(config.mlm_weight * result.mlm_loss)
        else:
            result.mlm_logits = self.mlm_head(outputs.text_hidden_state)
        result.contrastive_logits = self.contrastive_head(outputs.pooler_output)
        if contrastive_labels is not None:
            _check_text_mask("contrastive_labels", contrastive_labels, result.contrastive_logits.shape[:1])
            result.contrastive_loss = masked_cross_entropy(result.contrastive_logits, contrastive_labels)
            weighted.append(config.contrastive_weight * result.contrastive_loss)
        if weighted:
            result.loss = torch.stack(weighted).sum()
        return result


# ----------------------------------------------------------------------------------------------------------------
# Task heads
# ----------------------------------------------------------------------------------------------------------------


class OscarTaskModel(OscarPreTrainedModel):
    """Shared plumbing of the classification heads (`ImageBertForSequenceClassification` / `...MultipleChoice`): the
    backbone `oscar`, dropout on the pooled output, the `classifier` (`build_classifier`), one forward. A head states
    `compute_loss(logits, labels)` and, where its inputs are laid out differently (NLVR2), `encode(inputs)`."""

    def __init__(self, config: OscarConfig):
        super().__init__(config)
        self.oscar = OscarModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = self.build_classifier(config)
        self.post_init()

    def build_classifier(self, config):
        return _classifier(config, config.hidden_size, config.num_labels)

    def encode(self, inputs):
        return self.oscar(**inputs)

    def compute_loss(self, logits, labels):
        return masked_cross_entropy(logits, labels)

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        visual_feats=None,
        visual_pos=None,
        attention_mask=None,
        visual_attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> OscarTaskOutput:
        r"""
        Inputs as `OscarModel`. labels: the head's targets (see the class docstring); the loss is computed when
        they are given.
        """
        outputs = self.encode(
            dict(
                input_ids=input_ids,
                visual_feats=visual_feats,
                visual_pos=visual_pos,
                attention_mask=attention_mask,
                visual_attention_mask=visual_attention_mask,
                token_type_ids=token_type_ids,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
        )
        pooled = self.dropout(outputs.pooler_output)
        logits = self.classifier(pooled.view(-1, self.classifier_inputs * pooled.shape[-1]))
        return OscarTaskOutput(
            loss=self.compute_loss(logits, labels) if labels is not None else None,
            logits=logits,
            scores=self.match_scores(logits),
            pooler_output=outputs.pooler_output,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    classifier_inputs = 1  # pooled vectors per example the classifier reads (NLVR2: one per image)

    def match_scores(self, logits):
        return None


class OscarForVisualQuestionAnswering(OscarTaskModel):
    """VQA / GQA as answer classification on the pooled output (`ImageBertForSequenceClassification`, `run_vqa.py`,
    `run_gqa.py`). Text = `[CLS] question [SEP] tags [SEP]`.

    `labels`: with `config.vqa_loss="bce"` (VQA v2) soft answer scores (B, num_labels), loss = BCE-with-logits
    averaged over examples and summed over answers (the original's `instance_bce_with_logits`); with "ce" (GQA)
    answer ids (B,). Inference score = the logits.
    """

    def compute_loss(self, logits, labels):
        if self.config.vqa_loss == "bce":
            if labels.shape != logits.shape:
                raise ValueError(
                    f"`labels` must be soft answer scores of shape {tuple(logits.shape)}, got {tuple(labels.shape)}."
                )
            return soft_score_loss(logits, labels, scaling="num_answers")
        return masked_cross_entropy(logits, labels)


class OscarForImageTextRetrieval(OscarTaskModel):
    """Image-text retrieval (`run_retrieval.py`): a binary match classifier on the pooled output, trained with
    cross-entropy (`loss_type sfmx`); the ranking score is `softmax(logits)[:, 1]` (`scores`).
    `labels` (B,): 1 = text and image match, 0 = not."""

    def build_classifier(self, config):
        return _classifier(config, config.hidden_size, 2)

    def match_scores(self, logits):
        return logits.float().softmax(-1)[:, 1]


class OscarForVisualReasoning(OscarTaskModel):
    """NLVR2 with the original's paired head (`ImageBertForMultipleChoice`, `run_nlvr.py --use_pair`).

    Each example has `config.num_choices` (text, image) pairs: `[CLS] statement [SEP] tags of image k [SEP]` with
    image k's regions. Inputs carry the pairs on dim 1: `input_ids` / `attention_mask` / `token_type_ids`
    (B, K, T), `visual_feats` (B, K, R, D), `visual_pos` (B, K, R, 4), `visual_attention_mask` (B, K, R).
    The K pooled outputs are concatenated (pair 0 first) and classified. `labels` (B,): 1 = statement true.
    """

    @property
    def classifier_inputs(self):
        return self.config.num_choices

    def build_classifier(self, config):
        return _classifier(
            config, config.num_choices * config.hidden_size, config.num_labels, layer_norm=config.nlvr2_layer_norm
        )

    def encode(self, inputs):
        choices = self.config.num_choices
        input_ids, visual_feats = inputs["input_ids"], inputs["visual_feats"]
        if input_ids is None or input_ids.dim() != 3 or input_ids.shape[1] != choices:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"`input_ids` must be (batch, {choices} pairs, tokens), got {shape}.")
        if visual_feats is None or visual_feats.dim() != 4 or visual_feats.shape[:2] != input_ids.shape[:2]:
            shape = None if visual_feats is None else tuple(visual_feats.shape)
            raise ValueError(f"`visual_feats` must be (batch, {choices} images, regions, dim), got {shape}.")
        return self.oscar(
            **{k: v.flatten(0, 1) if torch.is_tensor(v) and v.dim() > 1 else v for k, v in inputs.items()}
        )


# ----------------------------------------------------------------------------------------------------------------
# Captioning
# ----------------------------------------------------------------------------------------------------------------


def caption_loss(logits, targets, label_smoothing=0.0, drop_worst_ratio=0.0):
    """The original's `BertCaptioningLoss`: KL(smoothed one-hot || softmax), smoothing mass spread over the other
    V - 1 tokens, summed over the vocabulary; optionally the `drop_worst_ratio` highest per-token losses are left
    out; mean over tokens. Computed without materialising the (N, V) target."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    vocab = log_probs.shape[-1]
    eps = float(label_smoothing)
    target_log_prob = log_probs.gather(1, targets[:, None]).squeeze(1)
    loss = -(1 - eps) * target_log_prob
    entropy_term = (1 - eps) * math.log(1 - eps) if eps < 1 else 0.0  # sum q log q of the smoothed target
    if eps > 0:
        other = eps / (vocab - 1)
        loss = loss - other * (log_probs.sum(-1) - target_log_prob)
        entropy_term += eps * math.log(other)
    loss = loss + entropy_term
    if drop_worst_ratio > 0:
        loss, _ = torch.topk(loss, k=int(loss.shape[0] * (1 - drop_worst_ratio)), largest=False)
    return loss.mean()


class CaptionDropWorstCallback(TrainerCallback):
    """Schedules the captioning loss's drop-worst (`caption_drop_worst_ratio` after `caption_drop_worst_after` steps).

    The original counts loss calls inside the loss module; hf_vlp models keep no counters, so the step number comes
    from the Trainer: before each optimizer step this sets `training_step` (1-based) on every
    `OscarForConditionalGeneration` inside the trained model (also under PEFT / DDP wrappers).
    `Trainer(..., callbacks=[CaptionDropWorstCallback()])`.
    """

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        for module in model.modules() if model is not None else ():
            if isinstance(module, OscarForConditionalGeneration):
                module.training_step = state.global_step + 1


def caption_generation_config(config: OscarConfig) -> GenerationConfig:
    """Oscar's decoding defaults (`run_captioning.py` test mode): a caption starts with [CLS] (`bos_token_id`), ends
    with [SEP] (`eos_token_id`), is padded with [PAD]; a caption that reaches `max_length` (= `caption_max_length`,
    [CLS] included) gets [SEP] as its last token (`forced_eos_token_id`). The [MASK] the model reads each prediction
    at is `config.mask_token_id` (the model appends it inside `forward`)."""
    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        forced_eos_token_id=config.eos_token_id,
        max_length=config.caption_max_length,
    )


class OscarForConditionalGeneration(OscarPreTrainedModel, GenerationMixin):
    """Image captioning (`BertForImageCaptioning`, `run_captioning.py`).

    Text = `[CLS] caption [SEP] [PAD]...` (the caption part, segment 0) followed by `tags [SEP]` (segment 1).
    The caption part is decoded left to right: caption tokens see earlier caption tokens, all tags and all regions;
    tags and regions do not see the caption. Pass a (B, T) `attention_mask` and `token_type_ids` and the model builds
    that mask (the caption part = the text before the first segment-1 token), or pass the original's (B, L, L) mask.

    Training: mask caption tokens in `input_ids` and give `labels` (B, T) with the original ids at the masked positions
    and -100 elsewhere; the loss is the original's label-smoothed KL (`caption_label_smoothing`), leaving out the
    `caption_drop_worst_ratio` worst tokens once `training_step` exceeds `caption_drop_worst_after` (from the start
    when that is 0; `CaptionDropWorstCallback` keeps `training_step` in step with the Trainer).

    Inference: `generate()` (transformers' `GenerationMixin`), which calls `forward` in decoding mode: `input_ids` are
    then the caption so far, the tags come as `tag_ids`, and the model predicts the next token at a [MASK] it appends,
    as the original decodes; tags, regions and caption tokens are kept in a key/value `cache`.
    """

    _tied_weights_keys = {"mlm_head.decoder.weight": "oscar.embeddings.word_embeddings.weight"}

    def __init__(self, config: OscarConfig):
        super().__init__(config)
        self.oscar = OscarModel(config)
        self.mlm_head = MaskedLMHead(config.hidden_size, config.vocab_size, config.hidden_act, config.layer_norm_eps)
        # the 1-based number of the training step being run, set from outside (CaptionDropWorstCallback), never by
        # forward; 0 = unknown, treated as the first step
        self.training_step = 0
        self.post_init()
        self.generation_config = caption_generation_config(config)
        self._freeze_word_embeddings()

    def _freeze_word_embeddings(self):
        # VinVL captioning (`--freeze_embedding`): word embeddings, and so the tied decoder, are not trained
        if self.config.freeze_word_embeddings:
            self.oscar.embeddings.word_embeddings.weight.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # loading replaces the parameters (requires_grad=True): apply the freeze again
        model._freeze_word_embeddings()
        # a folder without generation_config.json gets a generic config built from config.json: use Oscar's defaults
        if getattr(model.generation_config, "_from_model_config", False):
            model.generation_config = caption_generation_config(model.config)
        return loaded

    def get_output_embeddings(self):
        return self.mlm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.mlm_head.decoder = new_embeddings

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        visual_feats=None,
        visual_pos=None,
        visual_attention_mask=None,
        inputs_embeds=None,
        labels=None,
        tag_ids=None,
        tag_attention_mask=None,
        tag_position_ids=None,
        cache=None,
        use_cache=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
    ):
        r"""
        Two modes.

        **Full text** (training, scoring): `input_ids` (B, T) = caption part + tags as described in the class
        docstring, with `attention_mask` / `token_type_ids` (or the original's 3-D mask), regions as in `OscarModel`.
        Returns `loss` and `masked_logits` with `labels`, else `logits` at every text position.

        **Decoding step** (what `generate` calls; chosen by passing `tag_ids` or a `cache`):
            input_ids: (B, n) the newest caption tokens: the whole caption so far, `[CLS] y1 ..`, on the first step
                or without a cache; the last token after that.
            attention_mask: (B, caption tokens so far) padding mask of the caption (optional).
            position_ids: (B, n) positions of `input_ids` in the caption (default: they follow the cached ones).
            tag_ids, tag_attention_mask: (B, N) the object tags `tags [SEP]` (segment 1) and their padding mask;
                `tag_position_ids` (B, N) their positions (default from `max(caption_tag_position_offset,
                caption_max_length)` on, where they sat in training).
            visual_feats, visual_pos, visual_attention_mask: the regions.
            cache: a transformers `Cache` (e.g. `DynamicCache`). The first step (empty cache) encodes tags and regions
                and stores their keys/values; later steps need only the new tokens plus `tag_attention_mask` and
                `visual_attention_mask` (which cached entries are padding).
        The model appends [MASK] (`config.mask_token_id`) after `input_ids` and returns `logits` (B, 1, V) read there:
        the scores of the next caption token. The [MASK] is never cached, so the cache always holds real tokens.
        """
        if tag_ids is not None or cache is not None:
            if labels is not None or inputs_embeds is not None:
                raise ValueError("a decoding step (`tag_ids` or `cache` given) takes no `labels` or `inputs_embeds`.")
            result = self._decoding_step(
                input_ids, attention_mask, position_ids, tag_ids, tag_attention_mask, tag_position_ids, visual_feats,
                visual_pos, visual_attention_mask, cache if use_cache is not False else None, output_hidden_states,
                output_attentions,
            )  # fmt: skip
            return result if return_dict is not False else result.to_tuple()

        if attention_mask is None or attention_mask.dim() == 2:
            attention_mask, visual_attention_mask = self._caption_mask(
                input_ids if input_ids is not None else inputs_embeds,
                attention_mask,
                token_type_ids,
                visual_feats,
                visual_pos,
                visual_attention_mask,
            )
        outputs = self.oscar(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            visual_attention_mask=visual_attention_mask,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        result = OscarCaptioningOutput(hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        if labels is not None:
            _check_text_mask("labels", labels, outputs.text_hidden_state.shape[:2])
            masked = labels != -100
            result.masked_logits = self.mlm_head(outputs.text_hidden_state[masked])
            drop_worst = 0.0
            # the original drops once its loss-call count exceeds drop_worst_after; an unset step counts as the first
            if self.training and max(self.training_step, 1) > self.config.caption_drop_worst_after:
                drop_worst = self.config.caption_drop_worst_ratio
            if masked.any():
                result.loss = caption_loss(
                    result.masked_logits, labels[masked], self.config.caption_label_smoothing, drop_worst
                )
            else:
                result.loss = result.masked_logits.sum() * 0.0
        else:
            result.logits = self.mlm_head(outputs.text_hidden_state)
        return result if return_dict is not False else result.to_tuple()

    def _caption_mask(self, text, attention_mask, token_type_ids, visual_feats, visual_pos, visual_attention_mask):
        """(B, T) padding masks + segment ids -> the (B, L, L) captioning mask (caption = text before the tags)."""
        if text is None:
            raise ValueError("pass exactly one of `input_ids` and `inputs_embeds`.")
        text_shape = tuple(text.shape[:2])
        self.oscar._check_visual(visual_feats, visual_pos, visual_attention_mask, text_shape[0])
        _check_text_mask("attention_mask", attention_mask, text_shape)
        _check_text_mask("token_type_ids", token_type_ids, text_shape)
        device = visual_feats.device
        if attention_mask is None:
            attention_mask = torch.ones(text_shape, dtype=torch.long, device=device)
        if visual_attention_mask is None:
            visual_attention_mask = torch.ones(visual_feats.shape[:2], dtype=torch.long, device=device)
        _check_text_mask("visual_attention_mask", visual_attention_mask, visual_feats.shape[:2])
        if token_type_ids is None:
            is_caption = torch.ones(text_shape, dtype=torch.bool, device=device)
        else:
            is_caption = token_type_ids.cumsum(dim=1) == 0
        return caption_attention_mask(attention_mask, visual_attention_mask, is_caption), None

    # ------------------------------------------------------------------------------------------------------------
    # decoding (oscar/modeling/modeling_utils.py `CaptionPreTrainedModel`, expressed through GenerationMixin)
    # ------------------------------------------------------------------------------------------------------------

    def _decoding_step(
        self, input_ids, attention_mask, position_ids, tag_ids, tag_attention_mask, tag_position_ids, visual_feats,
        visual_pos, visual_attention_mask, cache, output_hidden_states, output_attentions,
    ):  # fmt: skip
        """One step of the original's decoding: `[caption so far] [MASK]` against tags and regions (encoded now when
        the cache is empty, read from it otherwise); logits at [MASK]."""
        if input_ids is None or input_ids.dim() != 2 or input_ids.shape[1] == 0:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"a decoding step needs `input_ids` (batch, new caption tokens), got {shape}.")
        config = self.config
        batch, num_new = input_ids.shape
        device = input_ids.device
        embeddings = self.oscar.embeddings
        cached = cache.get_seq_length() if cache is not None else 0
        prefix = None
        if cached == 0:  # encode the tags and regions in this step
            if visual_feats is None:
                raise ValueError(
                    "`visual_feats` is required: region features of shape (batch, regions, feature_dim) for the "
                    "first decoding step (or every step without a cache)."
                )
            self.oscar._check_visual(visual_feats, visual_pos, visual_attention_mask, batch)
            if tag_ids is None:
                tag_ids = input_ids.new_zeros(batch, 0)
            if tag_attention_mask is None:
                tag_attention_mask = torch.ones_like(tag_ids)
            if visual_attention_mask is None:
                visual_attention_mask = torch.ones(visual_feats.shape[:2], dtype=torch.long, device=device)
            _check_text_mask("tag_attention_mask", tag_attention_mask, tag_ids.shape)
            _check_text_mask("visual_attention_mask", visual_attention_mask, visual_feats.shape[:2])
            if tag_position_ids is None:
                start = max(config.caption_tag_position_offset, config.caption_max_length)
                tag_position_ids = torch.arange(start, start + tag_ids.shape[1], device=device)[None]
            _check_positions("tag_position_ids", tag_position_ids, config.max_position_embeddings)
            tags = embeddings(tag_ids, torch.ones_like(tag_ids), tag_position_ids)
            regions = self.oscar.region_embeddings(visual_feats.to(tags.dtype), visual_pos)
            prefix = torch.cat([tags, regions], dim=1)
        elif tag_attention_mask is None or visual_attention_mask is None:
            raise ValueError(
                "a cached decoding step needs `tag_attention_mask` and `visual_attention_mask`: they tell which of the "
                f"{cached} cached entries are tags and regions, and which of those are padding."
            )
        prefix_mask = torch.cat([tag_attention_mask, visual_attention_mask.to(tag_attention_mask.dtype)], dim=1)
        cached_caption = cached - prefix_mask.shape[1] if cached else 0
        if cached_caption < 0:
            raise ValueError(
                f"the cache holds {cached} entries, fewer than the {prefix_mask.shape[1]} tags and regions of "
                "`tag_attention_mask` and `visual_attention_mask`."
            )
        caption_len = cached_caption + num_new
        if attention_mask is None:
            attention_mask = torch.ones(batch, caption_len, dtype=torch.long, device=device)
        _check_text_mask("attention_mask", attention_mask, (batch, caption_len))
        if position_ids is None:
            position_ids = torch.arange(cached_caption, caption_len, device=device)[None]
        position_ids = position_ids.expand(batch, -1)
        _check_text_mask("position_ids", position_ids, input_ids.shape)
        # the [MASK] sits right after the newest token (position t when the caption is [CLS] y1 .. y(t-1))
        caption_positions = torch.cat([position_ids, position_ids[:, -1:] + 1], dim=1)
        _check_positions("position_ids", caption_positions, config.max_position_embeddings)
        caption_ids = torch.cat([input_ids, torch.full_like(input_ids[:, :1], config.mask_token_id)], dim=1)
        hidden_states = embeddings(caption_ids, torch.zeros_like(caption_ids), caption_positions)
        if prefix is not None:
            hidden_states = torch.cat([prefix, hidden_states], dim=1)
        mask = caption_decoding_mask(prefix_mask, attention_mask, num_new, encodes_prefix=prefix is not None)
        sequence, all_hidden, all_attentions = self.oscar.encoder(
            hidden_states,
            additive_mask(mask, hidden_states.dtype),
            output_hidden_states=output_hidden_states or config.output_hidden_states,
            output_attentions=output_attentions or config.output_attentions,
            cache=cache,
            num_cached=hidden_states.shape[1] - 1,  # everything but the [MASK]
        )
        return OscarCaptioningOutput(
            logits=self.mlm_head(sequence[:, -1:]), cache=cache, hidden_states=all_hidden, attentions=all_attentions
        )

    def prepare_inputs_for_generation(self, input_ids, cache=None, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, cache=cache, **kwargs)
        if cache is not None and cache.get_seq_length() > 0:
            # tags and regions are in the cache: only their padding masks are still read
            for name in ("tag_ids", "tag_position_ids", "visual_feats", "visual_pos"):
                inputs.pop(name, None)
        return inputs

    def _tag_segment(self, input_ids, attention_mask, token_type_ids, batch, device):
        """The object-tag block: all of `input_ids` without `token_type_ids`, else the part from the first segment-1
        token on (a caption placeholder in front, as the original's test tensorizer writes, is dropped)."""
        if input_ids is None:
            empty = torch.zeros(batch, 0, dtype=torch.long, device=device)
            return empty, empty
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        _check_text_mask("attention_mask", attention_mask, input_ids.shape)
        if token_type_ids is None:
            return input_ids, attention_mask
        _check_text_mask("token_type_ids", token_type_ids, input_ids.shape)
        text_len = input_ids.shape[1]
        in_tags = token_type_ids.cumsum(dim=1) > 0
        # first segment-1 position of each row (text_len when a row has no tags), then left-align the blocks
        starts = torch.where(in_tags.any(1), in_tags.float().argmax(1), text_len)
        length = int((text_len - starts).max())
        index = starts[:, None] + torch.arange(length, device=device)
        inside = index < text_len
        index = index.clamp(max=text_len - 1)
        tag_ids = torch.where(inside, input_ids.gather(1, index), self.config.pad_token_id)
        tag_mask = torch.where(inside, attention_mask.gather(1, index), 0)
        return tag_ids, tag_mask

    def caption_decoding_inputs(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        visual_feats=None,
        visual_pos=None,
        visual_attention_mask=None,
        max_length=None,
        tag_position_offset=None,
    ):
        """The conditioning inputs of decoding steps, from the processor's layout: `tag_ids`, `tag_attention_mask`,
        `tag_position_ids` (from `max(tag_position_offset, max_length)` on, as the original places the tags) and the
        regions. `input_ids` is the tags segment `tags [SEP]`, or a full Oscar text with `token_type_ids` (only the
        segment-1 part is used), or None (no tags)."""
        config = self.config
        if visual_feats is None or visual_feats.dim() != 3:
            shape = None if visual_feats is None else tuple(visual_feats.shape)
            raise ValueError(
                f"`visual_feats` is required: region features of shape (batch, regions, feature_dim), got {shape}."
            )
        batch, device = visual_feats.shape[0], visual_feats.device
        if visual_attention_mask is None:
            visual_attention_mask = torch.ones(visual_feats.shape[:2], dtype=torch.long, device=device)
        self.oscar._check_visual(visual_feats, visual_pos, visual_attention_mask, batch)
        if input_ids is not None and input_ids.shape[0] != batch:
            raise ValueError(
                f"`input_ids` batch size {input_ids.shape[0]} and `visual_feats` batch size {batch} differ."
            )
        tag_ids, tag_mask = self._tag_segment(input_ids, attention_mask, token_type_ids, batch, device)
        max_length = config.caption_max_length if max_length is None else max_length
        offset = config.caption_tag_position_offset if tag_position_offset is None else tag_position_offset
        limit = config.max_position_embeddings
        if max_length > limit:
            raise ValueError(
                f"`max_length` ({max_length}, [CLS] included) exceeds the position table (max_position_embeddings="
                f"{limit}): the caption's positions would not exist."
            )
        # the original avoids a clash of caption and tag positions: tags from max(od_labels_start_posid, max_length)
        start = max(offset, max_length)
        if start + tag_ids.shape[1] > limit:
            raise ValueError(
                f"the {tag_ids.shape[1]} tag tokens would sit at positions {start}..{start + tag_ids.shape[1] - 1} "
                f"(from max(tag_position_offset={offset}, max_length={max_length})), beyond max_position_embeddings="
                f"{limit}: lower `max_length` or `tag_position_offset`, or pass fewer tags."
            )
        return dict(
            tag_ids=tag_ids,
            tag_attention_mask=tag_mask,
            tag_position_ids=torch.arange(start, start + tag_ids.shape[1], device=device).expand(batch, -1),
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            visual_attention_mask=visual_attention_mask.long(),
        )

    def generate(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        visual_feats=None,
        visual_pos=None,
        visual_attention_mask=None,
        generation_config=None,
        tag_position_offset=None,
        **kwargs,
    ):
        """Caption the regions, conditioned on the object tags: transformers' `generate` (greedy, beam search,
        sampling, logits processors, stopping criteria, streamers, `max_new_tokens` ...) over Oscar's decoding step.

        `input_ids` / `attention_mask` / `token_type_ids` are the processor's tags layout (see
        `caption_decoding_inputs`), not a prompt: every caption starts from [CLS]. The tags sit at positions from
        `max(tag_position_offset, max_length)` on (`tag_position_offset` defaults to
        `config.caption_tag_position_offset`, the training `max_seq_a_length`). Defaults (`caption_generation_config`):
        `max_length = config.caption_max_length` ([CLS] included) and a forced final [SEP], as the original.
        Returns `[CLS] caption [SEP]` padded with [PAD] to the longest caption, or the usual `GenerateOutput` with
        `return_dict_in_generate=True` (`sequences_scores` for beam search).
        """
        resolved, _ = self._prepare_generation_config(generation_config, **kwargs)
        max_length = resolved.max_length if resolved.max_new_tokens is None else 1 + resolved.max_new_tokens
        conditioning = self.caption_decoding_inputs(
            input_ids, attention_mask, token_type_ids, visual_feats, visual_pos, visual_attention_mask, max_length,
            tag_position_offset,
        )  # fmt: skip
        if resolved.bos_token_id is None:
            raise ValueError("`bos_token_id` ([CLS], the first caption token) is not set.")
        batch = conditioning["visual_feats"].shape[0]
        start = torch.full((batch, 1), resolved.bos_token_id, dtype=torch.long, device=visual_feats.device)
        return super().generate(start, generation_config=generation_config, **conditioning, **kwargs)


def _check_positions(name, position_ids, limit):
    if position_ids.numel() and int(position_ids.max()) >= limit:
        raise ValueError(
            f"`{name}` reach position {int(position_ids.max())}, beyond the position table (max_position_embeddings="
            f"{limit}); lower `max_length` / `max_new_tokens`."
        )


__all__ = [
    "LORA_TARGET_MODULES",
    "CaptionDropWorstCallback",
    "OscarForConditionalGeneration",
    "OscarForImageTextRetrieval",
    "OscarForPreTraining",
    "OscarForVisualQuestionAnswering",
    "OscarForVisualReasoning",
    "OscarModel",
    "OscarPreTrainedModel",
    "caption_attention_mask",
    "caption_decoding_mask",
    "caption_generation_config",
    "caption_loss",
]
