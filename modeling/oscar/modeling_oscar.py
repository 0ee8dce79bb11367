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
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from hf_vlp.layers import (
    MaskedLMHead,
    Pooler,
    TextEmbeddings,
    TransformerEncoder,
    additive_attention_mask,
    box_location_features,
    check_visual_inputs,
    joint_padding_mask,
)
from hf_vlp.pretraining.losses import masked_cross_entropy

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

    mlm_logits: (N, V) vocabulary logits at the N positions where `labels != -100` (row-major), when labels are given.
    prediction_logits: (B, T, V) vocabulary logits at every text position, when no `labels` are given.
    contrastive_logits: (B, num_contrast_classes) from the pooled output.
    """

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    prediction_logits: torch.FloatTensor | None = None
    contrastive_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


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
    logits: (B, T, V) logits at every text position, when no `labels` are given.
    """

    loss: torch.FloatTensor | None = None
    masked_logits: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class OscarGenerationOutput(ModelOutput):
    """sequences: (B * num_return_sequences, max_length) `[CLS] caption [SEP]` padded with `pad_token_id`.
    sequences_scores: (B * num_return_sequences,) mean log-probability of the emitted tokens (greedy), or the beam
    score `sum log p / length ** length_penalty` (beam search), as the original reports them."""

    sequences: torch.LongTensor | None = None
    sequences_scores: torch.FloatTensor | None = None


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


class OscarEncoder(TransformerEncoder):
    """The BERT encoder, plus `history_states` for cached captioning: per layer, the layer inputs of tokens already
    encoded, which the new tokens attend to (keys and values from `[history ; new]`), as the original's
    `encoder_history_states`."""

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        output_hidden_states=False,
        output_attentions=False,
        history_states=None,
    ):
        if history_states is None:
            return super().forward(hidden_states, attention_mask, output_hidden_states, output_attentions)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer, history in zip(self.layer, history_states):
            context = torch.cat([history, hidden_states], dim=1)
            hidden_states, weights = layer(hidden_states, attention_mask, context=context)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return hidden_states, all_hidden_states, all_attentions


# ----------------------------------------------------------------------------------------------------------------
# Base model
# ----------------------------------------------------------------------------------------------------------------


class OscarPreTrainedModel(PreTrainedModel):
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
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of `input_ids` and `inputs_embeds`.")
        text_shape = tuple(input_ids.shape if input_ids is not None else inputs_embeds.shape[:2])
        self._check_visual(visual_feats, visual_pos, visual_attention_mask, text_shape[0])
        _check_text_mask("token_type_ids", token_type_ids, text_shape)
        output_hidden_states = output_hidden_states or self.config.output_hidden_states
        output_attentions = output_attentions or self.config.output_attentions

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
        return output if return_dict is not False else output.to_tuple()


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

    def forward(self, labels=None, contrastive_labels=None, return_dict=None, **inputs):
        outputs = self.oscar(**inputs)
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
            result.prediction_logits = self.mlm_head(outputs.text_hidden_state)
        result.contrastive_logits = self.contrastive_head(outputs.pooler_output)
        if contrastive_labels is not None:
            _check_text_mask("contrastive_labels", contrastive_labels, result.contrastive_logits.shape[:1])
            result.contrastive_loss = masked_cross_entropy(result.contrastive_logits, contrastive_labels)
            weighted.append(config.contrastive_weight * result.contrastive_loss)
        if weighted:
            result.loss = torch.stack(weighted).sum()
        return result if return_dict is not False else result.to_tuple()


# ----------------------------------------------------------------------------------------------------------------
# Task heads
# ----------------------------------------------------------------------------------------------------------------


class OscarForVisualQuestionAnswering(OscarPreTrainedModel):
    """VQA / GQA as answer classification on the pooled output (`ImageBertForSequenceClassification`, `run_vqa.py`,
    `run_gqa.py`). Text = `[CLS] question [SEP] tags [SEP]`.

    `labels`: with `config.vqa_loss="bce"` (VQA v2) soft answer scores (B, num_labels), loss = BCE-with-logits
    averaged over examples and summed over answers (the original's `instance_bce_with_logits`); with "ce" (GQA)
    answer ids (B,). Inference score = the logits.
    """

    def __init__(self, config: OscarConfig):
        super().__init__(config)
        self.oscar = OscarModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = _classifier(config, config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, labels=None, return_dict=None, **inputs):
        outputs = self.oscar(**inputs)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            if self.config.vqa_loss == "bce":
                if labels.shape != logits.shape:
                    raise ValueError(
                        f"`labels` must be soft answer scores of shape {tuple(logits.shape)}, got {tuple(labels.shape)}."
                    )
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float()) * labels.shape[1]
            else:
                loss = masked_cross_entropy(logits, labels)
        result = OscarTaskOutput(
            loss=loss, logits=logits, pooler_output=outputs.pooler_output, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )  # fmt: skip
        return result if return_dict is not False else result.to_tuple()


class OscarForImageTextRetrieval(OscarPreTrainedModel):
    """Image-text retrieval (`run_retrieval.py`): a binary match classifier on the pooled output, trained with
    cross-entropy (`loss_type sfmx`); the ranking score is `softmax(logits)[:, 1]` (`scores`).
    `labels` (B,): 1 = text and image match, 0 = not."""

    def __init__(self, config: OscarConfig):
        super().__init__(config)
        self.oscar = OscarModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = _classifier(config, config.hidden_size, 2)
        self.post_init()

    def forward(self, labels=None, return_dict=None, **inputs):
        outputs = self.oscar(**inputs)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = masked_cross_entropy(logits, labels) if labels is not None else None
        result = OscarTaskOutput(
            loss=loss, logits=logits, scores=logits.float().softmax(-1)[:, 1], pooler_output=outputs.pooler_output,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )  # fmt: skip
        return result if return_dict is not False else result.to_tuple()


class OscarForVisualReasoning(OscarPreTrainedModel):
    """NLVR2 with the original's paired head (`ImageBertForMultipleChoice`, `run_nlvr.py --use_pair`).

    Each example has `config.num_choices` (text, image) pairs: `[CLS] statement [SEP] tags of image k [SEP]` with
    image k's regions. Inputs carry the pairs on dim 1: `input_ids` / `attention_mask` / `token_type_ids`
    (B, K, T), `visual_feats` (B, K, R, D), `visual_pos` (B, K, R, 4), `visual_attention_mask` (B, K, R).
    The K pooled outputs are concatenated (pair 0 first) and classified. `labels` (B,): 1 = statement true.
    """

    def __init__(self, config: OscarConfig):
        super().__init__(config)
        self.oscar = OscarModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = _classifier(
            config, config.num_choices * config.hidden_size, config.num_labels, layer_norm=config.nlvr2_layer_norm
        )
        self.post_init()

    def forward(self, input_ids=None, visual_feats=None, labels=None, return_dict=None, **inputs):
        choices = self.config.num_choices
        if input_ids is None or input_ids.dim() != 3 or input_ids.shape[1] != choices:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"`input_ids` must be (batch, {choices} pairs, tokens), got {shape}.")
        if visual_feats is None or visual_feats.dim() != 4 or visual_feats.shape[:2] != input_ids.shape[:2]:
            shape = None if visual_feats is None else tuple(visual_feats.shape)
            raise ValueError(f"`visual_feats` must be (batch, {choices} images, regions, dim), got {shape}.")
        batch = input_ids.shape[0]
        flat = {k: v.flatten(0, 1) if torch.is_tensor(v) and v.dim() > 1 else v for k, v in inputs.items()}
        outputs = self.oscar(input_ids=input_ids.flatten(0, 1), visual_feats=visual_feats.flatten(0, 1), **flat)
        logits = self.classifier(self.dropout(outputs.pooler_output).view(batch, -1))
        loss = masked_cross_entropy(logits, labels) if labels is not None else None
        result = OscarTaskOutput(
            loss=loss, logits=logits, pooler_output=outputs.pooler_output, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )  # fmt: skip
        return result if return_dict is not False else result.to_tuple()


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


class OscarForConditionalGeneration(OscarPreTrainedModel):
    """Image captioning (`BertForImageCaptioning`, `run_captioning.py`).

    Text = `[CLS] caption [SEP] [PAD]...` (the caption part, segment 0) followed by `tags [SEP]` (segment 1).
    The caption part is decoded left to right: caption tokens see earlier caption tokens, all tags and all regions;
    tags and regions do not see the caption. Pass a (B, T) `attention_mask` and `token_type_ids` and the model builds
    that mask (the caption part = the text before the first segment-1 token), or pass the original's (B, L, L) mask.

    Training: mask caption tokens in `input_ids` and give `labels` (B, T) with the original ids at the masked positions
    and -100 elsewhere; the loss is the original's label-smoothed KL (`caption_label_smoothing`), dropping the worst
    tokens after `caption_drop_worst_after` training steps (`caption_drop_worst_ratio`).
    Inference: `generate()`.
    """

    _tied_weights_keys = {"mlm_head.decoder.weight": "oscar.embeddings.word_embeddings.weight"}

    def __init__(self, config: OscarConfig):
        super().__init__(config)
        self.oscar = OscarModel(config)
        self.mlm_head = MaskedLMHead(config.hidden_size, config.vocab_size, config.hidden_act, config.layer_norm_eps)
        self.loss_calls = 0  # the original counts loss calls for `drop_worst_after`
        self.post_init()
        self._freeze_word_embeddings()

    def _freeze_word_embeddings(self):
        # VinVL captioning (`--freeze_embedding`): word embeddings, and so the tied decoder, are not trained
        if self.config.freeze_word_embeddings:
            self.oscar.embeddings.word_embeddings.weight.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # loading replaces the parameters (requires_grad=True): apply the freeze again
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded)._freeze_word_embeddings()
        return loaded

    def get_output_embeddings(self):
        return self.mlm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.mlm_head.decoder = new_embeddings

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        visual_feats=None,
        visual_pos=None,
        visual_attention_mask=None,
        labels=None,
        return_dict=None,
        **inputs,
    ):
        if attention_mask is None or attention_mask.dim() == 2:
            attention_mask, visual_attention_mask = self._caption_mask(
                input_ids if input_ids is not None else inputs.get("inputs_embeds"),
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
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            visual_attention_mask=visual_attention_mask,
            **inputs,
        )
        result = OscarCaptioningOutput(hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        if labels is not None:
            _check_text_mask("labels", labels, outputs.text_hidden_state.shape[:2])
            masked = labels != -100
            result.masked_logits = self.mlm_head(outputs.text_hidden_state[masked])
            drop_worst = 0.0
            if self.training:
                self.loss_calls += 1
                if self.loss_calls > self.config.caption_drop_worst_after:
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
    # generation (oscar/modeling/modeling_utils.py `CaptionPreTrainedModel` + `BertForImageCaptioning.generate`)
    # ------------------------------------------------------------------------------------------------------------

    def _encode_prefix(self, caption_ids, tags, visual, use_cache):
        """Encode `[CLS] y1 .. y(t-1) [MASK] | tags | regions` in full. Returns the logits at [MASK] and, for the cache,
        every layer's inputs of all positions except [MASK] (the original's `past`)."""
        tag_ids, tag_mask, tag_positions = tags
        visual_feats, visual_pos, visual_mask = visual
        batch, caption_len = caption_ids.shape
        device = caption_ids.device
        input_ids = torch.cat([caption_ids, tag_ids], dim=1)
        caption_positions = torch.arange(caption_len, device=device).expand(batch, -1)
        token_type_ids = torch.cat([torch.zeros_like(caption_ids), torch.ones_like(tag_ids)], dim=1)
        text_mask = torch.cat([torch.ones_like(caption_ids), tag_mask], dim=1)
        is_caption = torch.cat([torch.ones_like(caption_ids), torch.zeros_like(tag_ids)], dim=1)
        outputs = self.oscar(
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            position_ids=torch.cat([caption_positions, tag_positions], dim=1),
            attention_mask=caption_attention_mask(text_mask, visual_mask, is_caption),
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            output_hidden_states=use_cache,
        )
        logits = self.mlm_head(outputs.last_hidden_state[:, caption_len - 1])
        if not use_cache:
            return logits, None
        keep = torch.ones(outputs.last_hidden_state.shape[1], dtype=torch.bool, device=device)
        keep[caption_len - 1] = False
        history = [states[:, keep] for states in outputs.hidden_states[:-1]]
        history_mask = torch.cat([torch.ones_like(caption_ids[:, :-1]), tag_mask, visual_mask], dim=1)
        return logits, (history, history_mask)

    def _decode_cached(self, sequences, cache, mask_token_id):
        """One cached step: encode `[y(t-1), [MASK]]` (positions t-1, t) against the history, then append y(t-1)'s
        layer inputs to it (the original's `prev_encoded_layers`)."""
        history, history_mask = cache
        batch, length = sequences.shape
        device = sequences.device
        new_ids = torch.cat([sequences[:, -1:], torch.full_like(sequences[:, -1:], mask_token_id)], dim=1)
        positions = torch.arange(length - 1, length + 1, device=device).expand(batch, -1)
        embeddings = self.oscar.embeddings(new_ids, torch.zeros_like(new_ids), positions)
        # the new rows see the history (minus its padding) and, causally, each other
        causal = torch.ones(2, 2, dtype=torch.long, device=device).tril().expand(batch, -1, -1)
        mask = torch.cat([history_mask[:, None].expand(-1, 2, -1), causal], dim=2)
        _, layer_states, _ = self.oscar.encoder(
            embeddings, additive_mask(mask, embeddings.dtype), output_hidden_states=True, history_states=history
        )
        logits = self.mlm_head(layer_states[-1][:, 1])
        history = [torch.cat([past, states[:, :1]], dim=1) for past, states in zip(history, layer_states[:-1])]
        history_mask = torch.cat([history_mask, torch.ones_like(sequences[:, :1])], dim=1)
        return logits, (history, history_mask)

    def _next_logits(self, sequences, tags, visual, cache, use_cache, mask_token_id):
        """Logits of the token after `sequences` ([CLS] y1 .. y(t-1)) and the updated cache."""
        if cache is not None:
            return self._decode_cached(sequences, cache, mask_token_id)
        mask_ids = torch.full_like(sequences[:, :1], mask_token_id)
        return self._encode_prefix(torch.cat([sequences, mask_ids], dim=1), tags, visual, use_cache)

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

    @torch.no_grad()
    def generate(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        visual_feats=None,
        visual_pos=None,
        visual_attention_mask=None,
        max_length=None,
        num_beams=1,
        num_return_sequences=1,
        length_penalty=1.0,
        do_sample=False,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        tag_position_offset=None,
        use_cache=True,
        legacy_beam_cache=False,
        return_dict_in_generate=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        mask_token_id=None,
        **kwargs,
    ):
        """Caption the regions, conditioned on the object tags, with the original's decoding rules.

        `input_ids`: the tags segment `tags [SEP]` (B, T) with its `attention_mask`, or a full Oscar text with
        `token_type_ids` (only the segment-1 part is used), or None (no tags). At each step the model reads
        `[CLS] y1 .. y(t-1) [MASK]` (positions 0..t, segment 0), then the tags (segment 1, positions from
        `max(tag_position_offset, max_length)` on: where they sat in training) and the regions; the next token is
        read at [MASK]. A row stops after `eos_token_id` ([SEP]); a row that reaches `max_length` tokens ([CLS]
        included) gets its last token replaced by [SEP].

        Greedy (`num_beams=1`, optionally `do_sample` with `temperature` / `top_k` / `top_p`) scores a caption by the
        mean log-probability of its tokens up to [SEP]. Beam search keeps `2 * num_beams` candidates per step as the
        original, finishes a hypothesis at [SEP] or at `max_length`, scores it `sum log p / len ** length_penalty`
        and returns the `num_return_sequences` best. `use_cache` re-uses the encoded tags / regions / caption prefix
        (the original's `output_hidden_states=True` path); both paths give the same captions. Special token ids
        default to the config's ([CLS], [SEP], [PAD], [MASK]).

        `legacy_beam_cache=True` reproduces the released code's cached beam search exactly: when beams are re-ranked
        it moves only the newest cached caption token with its beam and leaves older cached tokens in place, so a
        beam may attend to another beam's earlier tokens. The released evaluation (no cache) and the default here
        keep every beam's history with it.
        """
        config = self.config
        if kwargs:
            raise ValueError(f"unsupported generate() arguments: {sorted(kwargs)}")
        if visual_feats is None:
            raise ValueError("`visual_feats` is required: region features of shape (batch, regions, feature_dim).")
        max_length = max_length or config.caption_max_length
        if max_length < 2:
            raise ValueError(f"`max_length` counts [CLS] and must be at least 2, got {max_length}.")
        if num_beams < 1 or num_return_sequences < 1:
            raise ValueError("`num_beams` and `num_return_sequences` must be >= 1.")
        if num_beams == 1 and num_return_sequences != 1:
            raise ValueError("greedy decoding returns one caption per image: use num_beams > 1 for several.")
        if do_sample and num_beams > 1:
            raise ValueError("`do_sample` is supported with num_beams=1 only.")
        batch = visual_feats.shape[0]
        device = visual_feats.device
        if visual_attention_mask is None:
            visual_attention_mask = torch.ones(visual_feats.shape[:2], dtype=torch.long, device=device)
        self.oscar._check_visual(visual_feats, visual_pos, visual_attention_mask, batch)
        if input_ids is not None and input_ids.shape[0] != batch:
            raise ValueError(
                f"`input_ids` batch size {input_ids.shape[0]} and `visual_feats` batch size {batch} differ."
            )
        tag_ids, tag_mask = self._tag_segment(input_ids, attention_mask, token_type_ids, batch, device)
        offset = config.caption_tag_position_offset if tag_position_offset is None else tag_position_offset
        # the original avoids a clash of caption and tag positions: max(od_labels_start_posid, max_length)
        start = max(offset, max_length)
        tag_positions = torch.arange(start, start + tag_ids.shape[1], device=device).expand(batch, -1)

        expand = num_beams
        repeat = lambda t: None if t is None else t.repeat_interleave(expand, dim=0)
        tags = (repeat(tag_ids), repeat(tag_mask), repeat(tag_positions))
        visual = (repeat(visual_feats), repeat(visual_pos), repeat(visual_attention_mask.long()))
        bos_token_id = config.bos_token_id if bos_token_id is None else bos_token_id
        eos_token_id = config.eos_token_id if eos_token_id is None else eos_token_id
        special = dict(
            eos_ids=torch.tensor(
                eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id], device=device
            ),
            pad_token_id=config.pad_token_id if pad_token_id is None else pad_token_id,
            mask_token_id=config.mask_token_id if mask_token_id is None else mask_token_id,
        )
        sequences = torch.full((batch * expand, 1), bos_token_id, dtype=torch.long, device=device)
        if num_beams == 1:
            sequences, scores = self._greedy(
                sequences, tags, visual, max_length, use_cache, do_sample, temperature, top_k, top_p, **special
            )
        else:
            sequences, scores = self._beam_search(
                sequences,
                tags,
                visual,
                max_length,
                use_cache,
                num_beams,
                num_return_sequences,
                length_penalty,
                legacy_beam_cache,
                **special,
            )
        sequences, scores = sequences.flatten(0, 1), scores.flatten(0, 1)
        if return_dict_in_generate:
            return OscarGenerationOutput(sequences=sequences, sequences_scores=scores)
        return sequences

    def _greedy(
        self, sequences, tags, visual, max_length, use_cache, do_sample, temperature, top_k, top_p, eos_ids,
        pad_token_id, mask_token_id,
    ):  # fmt: skip
        """`_generate_no_beam_search` of the original."""
        pad = pad_token_id
        batch = sequences.shape[0]
        unfinished = torch.ones(batch, dtype=torch.long, device=sequences.device)
        log_probs, counted = [], []
        cache = None
        while sequences.shape[1] < max_length:
            logits, cache = self._next_logits(sequences, tags, visual, cache, use_cache, mask_token_id)
            logits = logits.float()
            if do_sample:
                logits = _filter_logits(logits / temperature, top_k, top_p)
                next_tokens = torch.multinomial(logits.softmax(-1), num_samples=1).squeeze(1)
            else:
                next_tokens = logits.argmax(-1)
            log_probs.append(logits.log_softmax(-1).gather(1, next_tokens[:, None]).squeeze(1))
            counted.append(unfinished)
            next_tokens = next_tokens * unfinished + pad * (1 - unfinished)
            sequences = torch.cat([sequences, next_tokens[:, None]], dim=1)
            unfinished = unfinished * (~torch.isin(next_tokens, eos_ids)).long()
            if unfinished.max() == 0:
                break
        if sequences.shape[1] == max_length:  # rows that never ended: the last token becomes [SEP]
            sequences[:, -1] = torch.where(unfinished.bool(), eos_ids[0], sequences[:, -1])
        counted = torch.stack(counted, dim=1).float()
        scores = (torch.stack(log_probs, dim=1) * counted).sum(1) / counted.sum(1)
        sequences = F.pad(sequences, (0, max_length - sequences.shape[1]), value=pad)
        return sequences[:, None], scores[:, None]

    def _beam_search(
        self, sequences, tags, visual, max_length, use_cache, num_beams, num_keep, length_penalty, legacy_beam_cache, eos_ids,
        pad_token_id, mask_token_id,
    ):  # fmt: skip
        """`_generate_beam_search` of the original, vectorised over the batch.

        Per step the 2 * num_beams best (beam, token) continuations are read in order of score; a [SEP] (or any token
        at the last step) closes a hypothesis `sequence so far + [SEP]` with score `sum log p / cur_len **
        length_penalty`; the first num_beams other continuations form the next beams. An example is done once it
        holds `num_keep` hypotheses and none of its live beams can beat the worst of them.
        """
        pad = pad_token_id
        device = sequences.device
        beams = num_beams
        batch = sequences.shape[0] // beams
        candidates = 2 * beams  # the original's TOPN_PER_BEAM = 2
        beam_scores = torch.zeros(batch, beams, device=device)
        beam_scores[:, 1:] = -1e9  # all beams start identical: expand only the first
        beam_scores = beam_scores.view(-1)
        hyp_scores = torch.full((batch, num_keep), -float("inf"), device=device)
        hyp_tokens = torch.full((batch, num_keep, max_length), pad, dtype=torch.long, device=device)
        hyp_count = torch.zeros(batch, dtype=torch.long, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        arange_batch = torch.arange(batch, device=device)
        cache = None
        while sequences.shape[1] < max_length:
            cur_len = sequences.shape[1]
            logits, cache = self._next_logits(sequences, tags, visual, cache, use_cache, mask_token_id)
            vocab = logits.shape[-1]
            scores = logits.float().log_softmax(-1) + beam_scores[:, None]
            next_scores, next_words = scores.view(batch, beams * vocab).topk(candidates, dim=1)
            # the original's BeamHypotheses.is_done(best candidate score), checked before this step's candidates
            worst = hyp_scores.min(dim=1).values
            done |= (hyp_count >= num_keep) & (worst >= next_scores[:, 0] / (max_length - 1) ** length_penalty)

            beam_ids, words = next_words // vocab, next_words % vocab
            closes = torch.isin(words, eos_ids) | (cur_len + 1 == max_length)
            continues = ~closes
            # candidates are read in order until num_beams continuations are collected
            read = (continues.cumsum(1) - continues.long()) < beams
            new_hyps = read & closes & ~done[:, None]

            # add the closed hypotheses: keep the num_keep best (ties keep the earlier one)
            rows = arange_batch[:, None] * beams + beam_ids  # (B, 2K) rows of `sequences`
            closed = torch.full((batch, candidates, max_length), pad, dtype=torch.long, device=device)
            closed[:, :, :cur_len] = sequences[rows]
            closed[:, :, cur_len] = eos_ids[0]
            closed_scores = torch.where(new_hyps, next_scores / cur_len**length_penalty, -float("inf"))
            pool_scores = torch.cat([hyp_scores, closed_scores], dim=1)
            order = pool_scores.sort(dim=1, descending=True, stable=True).indices[:, :num_keep]
            hyp_scores = pool_scores.gather(1, order)
            pool_tokens = torch.cat([hyp_tokens, closed], dim=1)
            hyp_tokens = pool_tokens.gather(1, order[..., None].expand(-1, -1, max_length))
            hyp_count = (hyp_count + new_hyps.sum(1)).clamp(max=num_keep)

            # next beams: the first num_beams continuations (done examples keep any, they are never read again)
            chosen = (read & continues).long().argsort(dim=1, descending=True, stable=True)[:, :beams]
            beam_scores = next_scores.gather(1, chosen).view(-1)
            beam_rows = rows.gather(1, chosen).view(-1)
            beam_words = words.gather(1, chosen).view(-1)
            sequences = torch.cat([sequences[beam_rows], beam_words[:, None]], dim=1)
            if cache is not None:
                history, history_mask = cache
                if legacy_beam_cache and cur_len > 1:
                    # the released code re-ranks only the newest cached token (`past`), not the older history
                    history = [torch.cat([states[:, :-1], states[beam_rows, -1:]], dim=1) for states in history]
                else:
                    history = [states[beam_rows] for states in history]
                cache = (history, history_mask[beam_rows])
            if done.all():
                break
        # examples with fewer than num_keep hypotheses report -1e5 and an all-padding sequence, as the original
        hyp_scores = torch.where(torch.isinf(hyp_scores), torch.full_like(hyp_scores, -1e5), hyp_scores)
        return hyp_tokens, hyp_scores


def _filter_logits(logits, top_k=0, top_p=1.0):
    """Top-k and nucleus (top-p) filtering of (N, V) logits; filtered entries become -inf."""
    if top_k > 0:
        threshold = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < threshold, -float("inf"))
    if top_p < 1.0:
        sorted_logits, sorted_index = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative > top_p
        remove[:, 1:] = remove[:, :-1].clone()  # keep the first token above the threshold
        remove[:, 0] = False
        logits = logits.masked_fill(remove.scatter(1, sorted_index, remove), -float("inf"))
    return logits


__all__ = [
    "LORA_TARGET_MODULES",
    "OscarForConditionalGeneration",
    "OscarForImageTextRetrieval",
    "OscarForPreTraining",
    "OscarForVisualQuestionAnswering",
    "OscarForVisualReasoning",
    "OscarModel",
    "OscarPreTrainedModel",
    "caption_attention_mask",
    "caption_loss",
]
