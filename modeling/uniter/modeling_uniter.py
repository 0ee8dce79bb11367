"""UNITER: UNiversal Image-TExt Representation Learning (Chen et al., ECCV 2020).

A single-stream transformer over `[text tokens | image regions]`. Reproduces the original
github.com/ChenRocks/UNITER `model/model.py` (backbone), `model/pretrain.py` (MLM, MRFR, MRC, MRC-KL, ITM + WRA),
and the fine-tuning heads of `model/{vqa,nlvr2,itm,re}.py`.

Layout note: the original packs each example as its own text followed directly by its own regions (a gather over
`[padded text | padded regions]`). Attention is permutation-equivariant and text positions are encoded by
position embeddings, so keeping the `[padded text | padded regions]` layout with one joint padding mask gives the
same hidden states at every real position and lets heads slice text (`[:, :T]`) and regions (`[:, T:]`) directly.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput, can_return_tuple

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.layers import (
    MaskedLMHead,
    Pooler,
    RegionEmbeddings,
    TextEmbeddings,
    TransformerEncoder,
    additive_attention_mask,
    check_visual_inputs,
    joint_padding_mask,
    mlp_classifier,
)
from hf_vlp.layers import TransformerLayer as TransformerLayer  # named in `_no_split_modules`
from hf_vlp.pretraining.losses import (
    masked_cross_entropy,
    optimal_transport_distance,
    pair_loss,
    region_feature_regression_loss,
    region_kl_loss,
    signed_alignment_loss,
    soft_score_loss,
)

from .configuration_uniter import UniterConfig

# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class UniterModelOutput(ModelOutput):
    """
    last_hidden_state: (B, T + R, H) joint sequence, text first.
    pooler_output: (B, H) tanh(dense([CLS])).
    text_hidden_state / visual_hidden_state: (B, T, H) / (B, R, H) views of the joint sequence.
    attention_mask: (B, T + R) joint padding mask used by the encoder.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    text_hidden_state: torch.FloatTensor | None = None
    visual_hidden_state: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class UniterForPreTrainingOutput(ModelOutput):
    """Summed weighted `loss`, each objective's loss, and each head's predictions (only at masked positions, in
    row-major order, as the original computes them)."""

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    mrfr_loss: torch.FloatTensor | None = None
    mrc_loss: torch.FloatTensor | None = None
    mrc_kl_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    wra_loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    region_feature_predictions: torch.FloatTensor | None = None
    region_logits: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    ot_distances: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None

    @property
    def region_class_logits(self):
        """Former name of `region_logits` (read by `hf_vlp.conversion.uniter`'s fixture check)."""
        return self.region_logits


@dataclass
class UniterTaskOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------------
# Base model
# ----------------------------------------------------------------------------------------------------------------


class UniterPreTrainedModel(HubPushMixin, PreTrainedModel):
    config_class = UniterConfig
    base_model_prefix = "uniter"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["TransformerLayer", "TextEmbeddings", "RegionEmbeddings"]
    accepts_loss_kwargs = False  # each head normalises its own loss (docs/design.md, "Trainer under DDP")

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, (MaskedLMHead, RegionFeatureRegression)):
            nn.init.zeros_(module.bias)
        elif isinstance(module, RegionEmbeddings):
            nn.init.zeros_(module.mask_embedding)


class UniterModel(UniterPreTrainedModel):
    """The UNITER encoder. Inputs follow docs/design.md's input vocabulary: `input_ids` (B, T), `visual_feats`
    (B, R, D), `visual_pos` (B, R, 4) normalized x1,y1,x2,y2; text gets token type 0, regions type 1."""

    def __init__(self, config: UniterConfig, add_pooling_layer=True):
        super().__init__(config)
        self.embeddings = TextEmbeddings(config)
        self.img_embeddings = RegionEmbeddings(config)
        self.encoder = TransformerEncoder(config)
        self.pooler = Pooler(config.hidden_size) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def embed_regions(
        self, visual_feats, visual_pos, visual_token_type_ids=None, region_mask=None, visual_location_feats=None
    ):
        """Region embeddings (B, R, H). `region_mask` (B, R) True marks masked regions: their features are zeroed
        (if the collator has not done so) and the learned mask embedding is added."""
        if region_mask is not None:
            region_mask = region_mask.bool()
            visual_feats = visual_feats.masked_fill(region_mask[..., None], 0.0)
        if visual_token_type_ids is None:
            visual_token_type_ids = torch.ones(visual_feats.shape[:2], dtype=torch.long, device=visual_feats.device)
        type_embeddings = self.embeddings.token_type_embeddings(visual_token_type_ids)
        return self.img_embeddings(visual_feats, visual_pos, type_embeddings, region_mask, visual_location_feats)

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
        visual_token_type_ids=None,
        region_mask=None,
        visual_location_feats=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> UniterModelOutput:
        r"""
        visual_token_type_ids: (B, R) token types of the regions (default 1; NLVR2 gives the second image 2).
        region_mask: (B, R) True at masked regions (masked region modelling): features zeroed, mask embedding added.
        visual_location_feats: (B, R, 7) location vectors to use instead of those derived from `visual_pos`, for
            inputs prepared by the original pipeline (its image DB rounds w and h to fp16 separately).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of `input_ids` and `inputs_embeds`.")
        text_shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        check_visual_inputs(
            visual_feats, visual_pos, visual_attention_mask, text_shape[0], feature_dim=self.config.visual_feat_dim
        )
        if attention_mask is not None and attention_mask.shape != text_shape:
            raise ValueError(
                f"`attention_mask` must have shape {tuple(text_shape)}, got {tuple(attention_mask.shape)}."
            )
        if region_mask is not None and region_mask.shape != visual_feats.shape[:2]:
            raise ValueError(
                f"`region_mask` must be (batch, regions) = {tuple(visual_feats.shape[:2])}, got {tuple(region_mask.shape)}."
            )
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions

        text_embeddings = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        visual_embeddings = self.embed_regions(
            visual_feats.to(text_embeddings.dtype),
            visual_pos,
            visual_token_type_ids,
            region_mask,
            visual_location_feats,
        )
        hidden_states = torch.cat([text_embeddings, visual_embeddings], dim=1)

        joint_mask = joint_padding_mask(
            attention_mask, visual_attention_mask, text_shape, visual_feats.shape[1], hidden_states.device
        )

        sequence, all_hidden, all_attentions = self.encoder(
            hidden_states,
            additive_attention_mask(joint_mask, hidden_states.dtype),
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        output = UniterModelOutput(
            last_hidden_state=sequence,
            pooler_output=self.pooler(sequence) if self.pooler is not None else None,
            text_hidden_state=sequence[:, : text_shape[1]],
            visual_hidden_state=sequence[:, text_shape[1] :],
            attention_mask=joint_mask,
            hidden_states=all_hidden,
            attentions=all_attentions,
        )
        return output


# ----------------------------------------------------------------------------------------------------------------
# Pretraining
# ----------------------------------------------------------------------------------------------------------------


class RegionFeatureRegression(nn.Module):
    """MRFR head: transform, then the image projection `img_linear` used transposed (H -> feature dim), plus its own
    bias — the original ties the output weight to the input projection (`model/pretrain.py`)."""

    def __init__(self, hidden_size, feature_size, layer_norm_eps):
        super().__init__()
        self.transform = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        )
        self.bias = nn.Parameter(torch.zeros(feature_size))

    def forward(self, hidden_states, img_linear_weight):
        return F.linear(self.transform(hidden_states), img_linear_weight.t(), self.bias)


class UniterForPreTraining(UniterPreTrainedModel):
    """UNITER with its pretraining objectives. Each loss is computed when its labels are given:

    - MLM: `labels` (B, T) token ids at masked positions, -100 elsewhere.
    - MRFR: `region_mask` (B, R) + `region_feature_labels` (B, R, D) original features (read at masked regions).
    - MRC: `region_mask` + `region_class_labels` (B, R) class ids at masked regions, -100 elsewhere.
    - MRC-KL: `region_mask` + `region_soft_labels` (B, R, C) detector class distributions.
    - ITM: `itm_labels` (B,) 1 = matching pair, 0 = not, -100 = ignore; adds the word-region alignment (WRA)
      optimal-transport loss when `config.wra_weight > 0`.
    Conditional masking (mask one modality at a time, never for mismatched pairs) is the collator's job.
    Without any labels it returns `mlm_logits` (B, T, vocab) at every text position and `itm_logits` (B, 2).
    """

    _tied_weights_keys = {"mlm_head.decoder.weight": "uniter.embeddings.word_embeddings.weight"}

    def __init__(self, config: UniterConfig):
        super().__init__(config)
        eps = config.layer_norm_eps
        self.uniter = UniterModel(config)
        self.mlm_head = MaskedLMHead(config.hidden_size, config.vocab_size, config.hidden_act, eps)
        self.region_feature_head = RegionFeatureRegression(config.hidden_size, config.visual_feat_dim, eps)
        self.region_class_head = mlp_classifier(config.hidden_size, config.hidden_size, config.num_region_classes, eps)
        self.itm_head = nn.Linear(config.hidden_size, 2)
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
        visual_token_type_ids=None,
        region_mask=None,
        visual_location_feats=None,
        inputs_embeds=None,
        labels=None,
        region_feature_labels=None,
        region_class_labels=None,
        region_soft_labels=None,
        itm_labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> UniterForPreTrainingOutput:
        needs_region_mask = any(x is not None for x in (region_feature_labels, region_class_labels, region_soft_labels))
        if needs_region_mask and region_mask is None:
            raise ValueError(
                "masked region modelling labels were given without `region_mask` (B, R) marking the masked regions."
            )
        outputs = self.uniter(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            visual_token_type_ids=visual_token_type_ids,
            region_mask=region_mask,
            visual_location_feats=visual_location_feats,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        config = self.config
        result = UniterForPreTrainingOutput(hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        weighted = []

        if labels is not None:
            masked = labels != -100
            result.mlm_logits = self.mlm_head(outputs.text_hidden_state[masked])
            result.mlm_loss = masked_cross_entropy(result.mlm_logits, labels[masked])
            weighted.append(config.mlm_weight * result.mlm_loss)
        elif not needs_region_mask and itm_labels is None:
            # inference (e.g. prompt-based scoring): vocabulary logits at every text position, and ITM logits
            result.mlm_logits = self.mlm_head(outputs.text_hidden_state)
            result.itm_logits = self.itm_head(outputs.pooler_output)

        if needs_region_mask:
            masked = region_mask.bool()
            if visual_attention_mask is not None:
                masked = masked & visual_attention_mask.bool()
            masked_hidden = outputs.visual_hidden_state[masked]
            if region_feature_labels is not None:
                result.region_feature_predictions = self.region_feature_head(
                    masked_hidden, self.uniter.img_embeddings.img_linear.weight
                )
                result.mrfr_loss = region_feature_regression_loss(
                    result.region_feature_predictions, region_feature_labels[masked]
                )
                weighted.append(config.mrfr_weight * result.mrfr_loss)
            if region_class_labels is not None or region_soft_labels is not None:
                result.region_logits = self.region_class_head(masked_hidden)
            if region_class_labels is not None:
                result.mrc_loss = masked_cross_entropy(result.region_logits, region_class_labels[masked])
                weighted.append(config.mrc_weight * result.mrc_loss)
            if region_soft_labels is not None:
                if region_soft_labels.shape[-1] != config.num_region_classes:
                    raise ValueError(
                        f"`region_soft_labels` has {region_soft_labels.shape[-1]} classes, the model "
                        f"num_region_classes={config.num_region_classes}."
                    )
                result.mrc_kl_loss = region_kl_loss(result.region_logits, region_soft_labels[masked])
                weighted.append(config.mrc_kl_weight * result.mrc_kl_loss)

        if itm_labels is not None:
            result.itm_logits = self.itm_head(outputs.pooler_output)
            result.itm_loss = masked_cross_entropy(result.itm_logits, itm_labels)
            weighted.append(config.itm_weight * result.itm_loss)
            if config.wra_weight > 0:
                result.ot_distances, result.wra_loss = self.word_region_alignment(outputs, itm_labels)
                weighted.append(config.wra_weight * result.wra_loss)

        if weighted:
            result.loss = torch.stack(weighted).sum()
        return result

    def word_region_alignment(self, outputs, itm_labels):
        """WRA: optimal-transport distances between text and region states; the loss pulls matching pairs
        together and pushes mismatched ones apart, `(sum(d_pos) - sum(d_neg)) / (n_pos + n_neg)`."""
        text_len = outputs.text_hidden_state.shape[1]
        padding = outputs.attention_mask == 0
        distances = optimal_transport_distance(
            outputs.text_hidden_state,
            outputs.visual_hidden_state,
            padding[:, :text_len],
            padding[:, text_len:],
            beta=self.config.ot_beta,
            iterations=self.config.ot_iterations,
        )
        return distances, signed_alignment_loss(distances, itm_labels)


# ----------------------------------------------------------------------------------------------------------------
# Task heads
# ----------------------------------------------------------------------------------------------------------------


class UniterTaskModel(UniterPreTrainedModel):
    """Shared plumbing of the task heads: the backbone `uniter` and one forward. A head states what is its own:
    `build_head(config)` (its modules), `predict(outputs)` (logits from the backbone outputs), `compute_loss(logits,
    labels, outputs)`, and `encode(inputs)` where its inputs are laid out differently (NLVR2)."""

    def __init__(self, config: UniterConfig):
        super().__init__(config)
        self.uniter = UniterModel(config)
        self.build_head(config)
        self.post_init()

    def build_head(self, config):
        raise NotImplementedError(f"{type(self).__name__} must define `build_head(config)`")

    def encode(self, inputs):
        return self.uniter(**inputs)

    def predict(self, outputs):
        raise NotImplementedError

    def compute_loss(self, logits, labels, outputs, **loss_kwargs):
        raise NotImplementedError

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
        visual_location_feats=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> UniterTaskOutput:
        r"""
        Inputs as `UniterModel`. labels: the head's targets (see the class docstring); the loss is computed when
        they are given.
        """
        inputs = dict(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            visual_location_feats=visual_location_feats,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return self._task_forward(inputs, labels)

    def _task_forward(self, inputs, labels, **loss_kwargs):
        outputs = self.encode(inputs)
        logits = self.predict(outputs)
        has_targets = labels is not None or any(value is not None for value in loss_kwargs.values())
        loss = self.compute_loss(logits, labels, outputs, **loss_kwargs) if has_targets else None
        return UniterTaskOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class UniterForVisualQuestionAnswering(UniterTaskModel):
    """VQA as multi-label answer classification (`model/vqa.py`). `labels`: (B, num_labels) soft VQA scores (or (B,)
    answer ids); loss = BCE-with-logits averaged over examples and summed over answers (the original's
    `mean() * num_answers`)."""

    def build_head(self, config):
        self.classifier = mlp_classifier(
            config.hidden_size, 2 * config.hidden_size, config.num_labels, config.layer_norm_eps
        )

    def predict(self, outputs):
        return self.classifier(outputs.pooler_output)

    def compute_loss(self, logits, labels, outputs):
        return soft_score_loss(logits, labels, scaling="num_answers")


class UniterForVisualEntailment(UniterForVisualQuestionAnswering):
    """SNLI-VE: the VQA head with 3 classes (`model/ve.py`), trained with cross-entropy over
    {entailment, neutral, contradiction}. `labels`: (B,) class ids, or (B, 3) class probabilities."""

    def compute_loss(self, logits, labels, outputs):
        return F.cross_entropy(logits.float(), labels if labels.dim() == 1 else labels.float())


class SoftmaxSequencePool(nn.Module):
    """Softmax-weighted sum of a sequence, scores from a GELU'd linear layer (`AttentionPool` in `model/attention.py`
    of the original; renamed so that transformers' attention-interface check does not take it for an attention
    layer)."""

    def __init__(self, hidden_size):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(hidden_size, 1), nn.GELU())

    def forward(self, hidden_states, padding):
        scores = self.fc(hidden_states).squeeze(-1).masked_fill(padding, torch.finfo(hidden_states.dtype).min)
        return (scores.softmax(dim=-1).unsqueeze(1) @ hidden_states).squeeze(1)


class UniterForVisualReasoning(UniterTaskModel):
    """NLVR2: one statement, two images, a true/false label (`model/nlvr2.py`).

    Inputs: text (B, T) and two images stacked on dim 1: `visual_feats` (B, 2, R, D), `visual_pos` (B, 2, R, 4),
    `visual_attention_mask` (B, 2, R) (and `visual_location_feats` (B, 2, R, 7)). `config.nlvr2_head`:
      * "paired": text+image1 and text+image2 encoded separately, pooled outputs concatenated -> 2 classes.
      * "paired-attn": as paired, then each sequence attends to the other, attention-pooled, concatenated.
      * "triplet": one sequence text + image1 (type 1) + image2 (type 2), pooled -> 2 classes.
    Image 2 gets token type 2 (the original's `use_img_type`), so `type_vocab_size` must be >= 3.
    `labels`: (B,) 1 = statement true. Hidden states (on request) are those of the 2B (paired) or B (triplet) rows.
    """

    def build_head(self, config):
        if config.type_vocab_size < 3:
            raise ValueError("NLVR2 gives the second image token type 2: set `type_vocab_size` >= 3.")
        hidden = config.hidden_size
        self.classifier = nn.Linear(hidden if config.nlvr2_head == "triplet" else 2 * hidden, 2)
        if config.nlvr2_head == "paired-attn":
            heads, dropout = config.num_attention_heads, config.attention_probs_dropout_prob
            self.attn1 = nn.MultiheadAttention(hidden, heads, dropout=dropout)
            self.attn2 = nn.MultiheadAttention(hidden, heads, dropout=dropout)
            self.fc = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Dropout(config.hidden_dropout_prob))
            self.attn_pool = SoftmaxSequencePool(hidden)

    def encode(self, inputs):
        visual_feats = inputs["visual_feats"]
        if visual_feats is None or visual_feats.dim() != 4 or visual_feats.shape[1] != 2:
            shape = None if visual_feats is None else tuple(visual_feats.shape)
            raise ValueError(f"`visual_feats` must hold two images per example: (batch, 2, regions, dim), got {shape}.")
        batch, _, regions, _ = visual_feats.shape
        text = inputs["input_ids"] if inputs["input_ids"] is not None else inputs["inputs_embeds"]
        inputs = dict(inputs)
        if inputs["visual_attention_mask"] is None:
            inputs["visual_attention_mask"] = visual_feats.new_ones(batch, 2, regions, dtype=torch.long)
        if inputs["attention_mask"] is None:
            inputs["attention_mask"] = torch.ones(text.shape[:2], dtype=torch.long, device=text.device)
        image_types = torch.tensor([1, 2], device=visual_feats.device)
        if self.config.nlvr2_head == "triplet":
            joint = {k: v.flatten(1, 2) if k.startswith("visual_") and v is not None else v for k, v in inputs.items()}
            joint["visual_token_type_ids"] = image_types.repeat_interleave(regions).expand(batch, -1)
            return self.uniter(**joint)
        # each statement twice, once per image: rows (ex0 img1, ex0 img2, ex1 img1, ...)
        paired = {}
        for name, value in inputs.items():
            if not torch.is_tensor(value):
                paired[name] = value
            elif name.startswith("visual_"):
                paired[name] = value.flatten(0, 1)
            else:
                paired[name] = value.repeat_interleave(2, dim=0)
        paired["visual_token_type_ids"] = image_types.repeat(batch)[:, None].expand(-1, regions)
        return self.uniter(**paired)

    def predict(self, outputs):
        if self.config.nlvr2_head == "triplet":
            return self.classifier(outputs.pooler_output)
        if self.config.nlvr2_head == "paired":
            return self.classifier(outputs.pooler_output.view(-1, 2 * outputs.pooler_output.shape[-1]))
        return self.classifier(self._paired_attention(outputs.last_hidden_state, outputs.attention_mask))

    def compute_loss(self, logits, labels, outputs):
        return masked_cross_entropy(logits, labels)

    def _paired_attention(self, sequence, joint_mask):
        batch2, length, hidden = sequence.shape
        left, right = sequence.view(batch2 // 2, 2, length, hidden).unbind(1)
        left_pad, right_pad = (joint_mask == 0).view(batch2 // 2, 2, length).unbind(1)
        # nn.MultiheadAttention is sequence-first
        left_t, right_t = left.transpose(0, 1), right.transpose(0, 1)
        left_to_right, _ = self.attn1(left_t, right_t, right_t, key_padding_mask=right_pad)
        right_to_left, _ = self.attn2(right_t, left_t, left_t, key_padding_mask=left_pad)
        left = self.fc(torch.cat([left_to_right, left_t], dim=-1)).transpose(0, 1)
        right = self.fc(torch.cat([right_to_left, right_t], dim=-1)).transpose(0, 1)
        return torch.cat([self.attn_pool(left, left_pad), self.attn_pool(right, right_pad)], dim=-1)


class UniterForImageTextRetrieval(UniterTaskModel):
    """Image-text retrieval (`model/itm.py`): a scalar matching score per (text, image) pair from `rank_head`
    (initialised from the positive row of the ITM head, as the original's `init_output`). `logits`: (B,).

    Training, either:
      * `labels` (B,) 1/0 match: binary cross-entropy on the score;
      * `group_size=K`: rows come in groups of K, the first positive and K-1 negatives; the original's hinge
        loss `max(0, margin + sigmoid(s_neg) - sigmoid(s_pos))`, averaged.
    """

    def build_head(self, config):
        self.itm_head = nn.Linear(config.hidden_size, 2)
        self.rank_head = nn.Linear(config.hidden_size, 1)

    def init_rank_head_from_itm(self):
        with torch.no_grad():
            self.rank_head.weight.copy_(self.itm_head.weight[1:])
            self.rank_head.bias.copy_(self.itm_head.bias[1:])

    def predict(self, outputs):
        return self.rank_head(outputs.pooler_output).squeeze(-1)

    def compute_loss(self, logits, labels, outputs, group_size=None):
        return pair_loss(logits, labels, group_size, objective="hinge", margin=self.config.retrieval_margin)

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
        visual_location_feats=None,
        inputs_embeds=None,
        labels=None,
        group_size=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> UniterTaskOutput:
        r"""
        labels: (B,) 1 = the text matches the image (BCE), or with `group_size` the positive of each group.
        group_size: rows come in groups of this size, the positive first; hinge loss over each group.
        """
        inputs = dict(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            visual_location_feats=visual_location_feats,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return self._task_forward(inputs, labels, group_size=group_size)


class UniterForReferringExpression(UniterTaskModel):
    """Referring expressions (`model/re.py`): a score per region; `labels` (B,) index of the referred region.
    Padded regions get the dtype's lowest score. `logits`: (B, R)."""

    def build_head(self, config):
        if config.referring_head_layers == 1:
            self.region_scorer = nn.Linear(config.hidden_size, 1)
        else:
            self.region_scorer = mlp_classifier(config.hidden_size, config.hidden_size, 1, config.layer_norm_eps)

    def predict(self, outputs):
        logits = self.region_scorer(outputs.visual_hidden_state).squeeze(-1)
        text_len = outputs.text_hidden_state.shape[1]
        return logits.masked_fill(outputs.attention_mask[:, text_len:] == 0, torch.finfo(logits.dtype).min)

    def compute_loss(self, logits, labels, outputs):
        return masked_cross_entropy(logits, labels)


class UniterForVisualCommonsenseReasoning(UniterTaskModel):
    """VCR (`model/vcr.py`): every (question, choice) pair is one row, `vcr_output` = Linear(H, 2H), ReLU,
    LayerNorm(eps 1e-12), Linear(2H, 2) on its pooled output. `logits` (B, C): the choices' "right" scores (column 1,
    as the original ranks them). `labels` (B,): index of the right choice; the loss is the original's: 2-way
    cross-entropy of every row (1 for the right choice, 0 for the others), averaged over rows.

    Inputs: text per choice (B, C, T) — the original's token types are 0 question, 2 answer, 3 rationale (regions
    take 1), so `type_vocab_size` is 4 — and regions shared by the choices (B, R, ...) or per choice (B, C, R, ...).
    """

    def build_head(self, config):
        hidden = config.hidden_size
        self.vcr_output = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.LayerNorm(2 * hidden, eps=1e-12), nn.Linear(2 * hidden, 2)
        )

    def _task_forward(self, inputs, labels, **loss_kwargs):
        text = inputs["input_ids"] if inputs["input_ids"] is not None else inputs["inputs_embeds"]
        expected = 3 if inputs["input_ids"] is not None else 4
        if text is None or text.dim() != expected:
            shape = None if text is None else tuple(text.shape)
            raise ValueError(f"`input_ids` must be (batch, num_choices, seq_len) for VCR, got {shape}.")
        batch, choices = text.shape[:2]
        flat = {}
        for name, value in inputs.items():
            if not torch.is_tensor(value):
                flat[name] = value
                continue
            shared = name.startswith("visual_") and value.dim() == (3 if name != "visual_attention_mask" else 2)
            if shared:  # the same image for every choice
                value = value[:, None].expand(-1, choices, *value.shape[1:])
            if value.shape[:2] != (batch, choices):
                raise ValueError(
                    f"`{name}` must be (batch, num_choices, ...) = ({batch}, {choices}, ...) or shared by the "
                    f"choices, got {tuple(value.shape)}."
                )
            flat[name] = value.flatten(0, 1)
        outputs = self.uniter(**flat)
        pair_scores = self.vcr_output(outputs.pooler_output)  # (B * C, 2): wrong / right
        logits = pair_scores[:, 1].view(batch, choices)
        loss = None
        if labels is not None:
            if labels.shape != (batch,):
                raise ValueError(f"`labels` must be (batch,) = ({batch},) choice indices, got {tuple(labels.shape)}.")
            valid = labels != -100
            rows = F.one_hot(labels.clamp(min=0), choices).masked_fill(~valid[:, None], -100)
            loss = masked_cross_entropy(pair_scores, rows.flatten())
        return UniterTaskOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "UniterForImageTextRetrieval",
    "UniterForVisualCommonsenseReasoning",
    "UniterForPreTraining",
    "UniterForReferringExpression",
    "UniterForVisualEntailment",
    "UniterForVisualQuestionAnswering",
    "UniterForVisualReasoning",
    "UniterModel",
    "UniterPreTrainedModel",
]
