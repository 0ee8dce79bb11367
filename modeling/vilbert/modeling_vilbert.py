"""ViLBERT: two-stream vision-and-language BERT (Lu et al., NeurIPS 2019) and the 12-in-1 multi-task model
(Lu et al., CVPR 2020).

Reproduces github.com/facebookresearch/vilbert-multi-task `vilbert/vilbert.py`: `BertModel` (text stream, visual
stream, co-attention connection layers), `BertForMultiModalPreTraining` (masked multi-modal modelling + multimodal
alignment) and `VILBertForVLTasks` (the task heads of 12-in-1, with task tokens). Numbers match the original to
fp32 rounding on the fixture in `shared/fixtures/vilbert` (see `hf_vlp.conversion.vilbert`).

Layout: the text stream runs BERT layers (`encoder.layer`), the visual stream the same layers sized by the `v_` fields
(`encoder.v_layer`), and `CoAttentionLayer`s (`encoder.c_layer`) exchange keys/values between them on the schedule
given by `v_biattention_id` / `t_biattention_id`. The pooled outputs (first token / first region, Linear + ReLU) are
fused by element-wise product and feed the sentence-level heads.

Inputs follow docs/design.md's input vocabulary: `visual_pos` (B, R, 4) normalized x1,y1,x2,y2; the model derives the
original 5-d location `[x1, y1, x2, y2, w*h]`. Region 0 is the whole-image region (mean feature, box [0,0,1,1])
that `VilbertProcessor` adds, as the original data loaders do.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, can_return_tuple

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.layers import (
    MaskedLMHead,
    PredictionHeadTransform,
    TextEmbeddings,
    TransformerLayer,
    additive_attention_mask,
    box_location_features,
    check_visual_inputs,
    mlp_classifier,
)
from hf_vlp.layers.coattention import CoAttentionLayer, StreamSpec
from hf_vlp.pretraining.losses import (
    classification_loss,
    masked_cross_entropy,
    pair_loss,
    region_feature_regression_loss,
    region_kl_loss,
    region_nce_loss,
    region_selection_loss,
    soft_score_loss,
)

from .configuration_vilbert import VilbertConfig

# LoRA preset: the query / value projections of the text layers, the visual layers and both directions of every
# co-attention layer (`peft.LoraConfig(target_modules=LORA_TARGET_MODULES)`).
LORA_TARGET_MODULES = (
    r".*encoder\.(layer|v_layer)\.\d+\.attention\.self\.(query|value)"
    r"|.*encoder\.c_layer\.\d+\.(text|visual)_attention\.self\.(query|value)"
)


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class VilbertModelOutput(ModelOutput):
    """
    text_hidden_state: (B, T', H) final text states; T' = T + 1 with task tokens (index 1 is the task token).
    visual_hidden_state: (B, R, V) final visual states (row 0 = whole-image region).
    text_pooler_output / visual_pooler_output: (B, bi) ReLU(Linear(first token / first region)).
    pooler_output: (B, bi) fused pooled vector (`fusion_method`: product or sum).
    attention_mask: (B, T') text padding mask used by the encoder (a leading 1 for the task token).
    text_hidden_states / visual_hidden_states: each stream's input embeddings and its state after every layer that
        updated it (single-stream or co-attention), in execution order.
    text_attentions / visual_attentions / cross_attentions: attention weights (eager attention only);
        cross_attentions holds (text->visual, visual->text) pairs per co-attention layer.
    """

    text_hidden_state: torch.FloatTensor | None = None
    visual_hidden_state: torch.FloatTensor | None = None
    text_pooler_output: torch.FloatTensor | None = None
    visual_pooler_output: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None
    text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    visual_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_attentions: tuple[torch.FloatTensor, ...] | None = None
    visual_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[tuple[torch.FloatTensor, torch.FloatTensor], ...] | None = None


@dataclass
class VilbertForPreTrainingOutput(ModelOutput):
    """Summed weighted `loss`, each objective's loss, and the head outputs.

    Without labels the logits cover every position (`mlm_logits` (B, T, vocab), `region_logits` (B, R, C)); with
    labels, only the masked positions in row-major order ((N, vocab), (N, C)), as the losses use them.
    `itm_logits` (B, 2): index 1 = the text matches the image.
    """

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    mrm_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    region_logits: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    text_hidden_state: torch.FloatTensor | None = None
    visual_hidden_state: torch.FloatTensor | None = None
    text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    visual_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_attentions: tuple[torch.FloatTensor, ...] | None = None
    visual_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[tuple[torch.FloatTensor, torch.FloatTensor], ...] | None = None


@dataclass
class VilbertTaskOutput(ModelOutput):
    """`loss` when labels are given, the head's `logits`, and on request each stream's hidden states and attentions
    (`VilbertModelOutput` names)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    visual_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_attentions: tuple[torch.FloatTensor, ...] | None = None
    visual_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[tuple[torch.FloatTensor, torch.FloatTensor], ...] | None = None


@dataclass
class VilbertMultiTaskOutput(ModelOutput):
    """Every head of the 12-in-1 model (names of `VILBertForVLTasks` in brackets). With `task=...`, `loss` and
    `logits` are that task's; the other fields are filled only when `task` is None."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    vqa_logits: torch.FloatTensor | None = None  # vil_prediction
    gqa_logits: torch.FloatTensor | None = None  # vil_prediction_gqa
    pair_scores: torch.FloatTensor | None = None  # vil_logit (retrieval, multiple choice)
    nlvr2_logits: torch.FloatTensor | None = None  # vil_binary_prediction (consecutive row pairs)
    entailment_logits: torch.FloatTensor | None = None  # vil_tri_prediction
    region_scores: torch.FloatTensor | None = None  # vision_logit (padded regions at the dtype's lowest value)
    token_scores: torch.FloatTensor | None = None  # linguisic_logit
    mlm_logits: torch.FloatTensor | None = None  # linguisic_prediction
    region_logits: torch.FloatTensor | None = None  # vision_prediction
    itm_logits: torch.FloatTensor | None = None
    text_hidden_state: torch.FloatTensor | None = None
    visual_hidden_state: torch.FloatTensor | None = None
    text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    visual_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_attentions: tuple[torch.FloatTensor, ...] | None = None
    visual_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[tuple[torch.FloatTensor, torch.FloatTensor], ...] | None = None


# ----------------------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------------------


class VilbertTextEmbeddings(TextEmbeddings):
    """BERT embeddings plus, for the 12-in-1 model, a task token inserted after [CLS].

    The task token gets no position or token-type embedding; it is inserted after word + position + type are summed
    and before the LayerNorm, so real tokens keep positions 0..T-1 (original `BertEmbeddings`).
    """

    def __init__(self, config):
        super().__init__(config)
        self.task_embeddings = (
            nn.Embedding(config.num_task_tokens, config.hidden_size) if config.task_specific_tokens else None
        )

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, task_ids=None):
        embeddings = self.summed(input_ids, token_type_ids, position_ids, inputs_embeds)
        if self.task_embeddings is not None:
            task = self.task_embeddings(task_ids.view(-1, 1)).to(embeddings.dtype)
            embeddings = torch.cat([embeddings[:, :1], task, embeddings[:, 1:]], dim=1)
        return self.dropout(self.LayerNorm(embeddings))


class VilbertRegionEmbeddings(nn.Module):
    """LayerNorm(Linear(region feature) + Linear(5-d location)); no position or type embedding for regions
    (original `BertImageEmbeddings`)."""

    def __init__(self, config):
        super().__init__()
        self.image_embeddings = nn.Linear(config.v_feature_size, config.v_hidden_size)
        self.image_location_embeddings = nn.Linear(5, config.v_hidden_size)
        self.LayerNorm = nn.LayerNorm(config.v_hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, visual_feats, visual_pos):
        location = box_location_features(visual_pos, "xyxy_area").to(visual_feats.dtype)
        embeddings = self.image_embeddings(visual_feats) + self.image_location_embeddings(location)
        return self.dropout(self.LayerNorm(embeddings))


# ----------------------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------------------


def visual_stream(config):
    """The visual stream's sizes (the `v_` fields of the config)."""
    return StreamSpec(
        config.v_hidden_size,
        config.v_num_attention_heads,
        config.v_intermediate_size,
        config.v_hidden_act,
        config.v_hidden_dropout_prob,
        config.v_attention_probs_dropout_prob,
    )


def coattention_schedule(v_biattention_id, t_biattention_id, v_num_layers, t_num_layers):
    """The execution order of the two-stream encoder as ("text" | "visual" | "co", index) steps.

    Connection k runs after text layers [t_ids[k-1], t_ids[k]) and visual layers [v_ids[k-1], v_ids[k]); after the
    last connection the remaining visual, then text layers run (original `BertEncoder.forward`).
    """
    steps, t_start, v_start = [], 0, 0
    for k, (v_end, t_end) in enumerate(zip(v_biattention_id, t_biattention_id)):
        steps += [("text", i) for i in range(t_start, t_end)]
        steps += [("visual", j) for j in range(v_start, v_end)]
        steps.append(("co", k))
        t_start, v_start = t_end, v_end
    steps += [("visual", j) for j in range(v_start, v_num_layers)]
    steps += [("text", i) for i in range(t_start, t_num_layers)]
    return steps


class VilbertEncoder(nn.Module):
    """Text layers (`layer`), visual layers (`v_layer`) and co-attention layers (`c_layer`) run on the schedule of
    `coattention_schedule`."""

    def __init__(self, config):
        super().__init__()
        eps = config.layer_norm_eps
        text, visual = StreamSpec.from_config(config), visual_stream(config)
        self.layer = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_hidden_layers))
        self.v_layer = nn.ModuleList(TransformerLayer(config, visual, eps) for _ in range(config.v_num_hidden_layers))
        self.c_layer = nn.ModuleList(
            CoAttentionLayer(config, text, visual, config.bi_hidden_size, config.bi_num_attention_heads, eps)
            for _ in config.v_biattention_id
        )
        self.schedule = coattention_schedule(
            config.v_biattention_id, config.t_biattention_id, config.v_num_hidden_layers, config.num_hidden_layers
        )
        self.gradient_checkpointing = False

    def forward(self, text, visual, text_mask, visual_mask, output_hidden_states=False, output_attentions=False):
        text_states = (text,) if output_hidden_states else None
        visual_states = (visual,) if output_hidden_states else None
        text_attn, visual_attn, cross_attn = ((), (), ()) if output_attentions else (None, None, None)
        for kind, index in self.schedule:
            if kind == "text":
                text, weights = self.layer[index](text, text_mask)
                text_states = text_states + (text,) if output_hidden_states else None
                text_attn = text_attn + (weights,) if output_attentions else None
            elif kind == "visual":
                visual, weights = self.v_layer[index](visual, visual_mask)
                visual_states = visual_states + (visual,) if output_hidden_states else None
                visual_attn = visual_attn + (weights,) if output_attentions else None
            else:
                text, visual, weights = self.c_layer[index](text, visual, text_mask, visual_mask)
                if output_hidden_states:
                    text_states, visual_states = text_states + (text,), visual_states + (visual,)
                cross_attn = cross_attn + (weights,) if output_attentions else None
        return text, visual, text_states, visual_states, (text_attn, visual_attn, cross_attn)


class VilbertPooler(nn.Module):
    """ReLU(dense(first position)) to the co-attention width (original `BertTextPooler` / `BertImagePooler`)."""

    def __init__(self, input_size, output_size):
        super().__init__()
        self.dense = nn.Linear(input_size, output_size)
        self.activation = nn.ReLU()

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states[:, 0]))


# ----------------------------------------------------------------------------------------------------------------
# Base model
# ----------------------------------------------------------------------------------------------------------------


class VilbertPreTrainedModel(HubPushMixin, PreTrainedModel):
    config_class = VilbertConfig
    base_model_prefix = "vilbert"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # the streams use additive (B, 1, 1, L) key masks, which the flash / flex interfaces do not take; untested there
    _supports_flash_attn = False
    _supports_flex_attn = False
    _no_split_modules = [
        "TransformerLayer",
        "CoAttentionLayer",
        "VilbertTextEmbeddings",
        "VilbertRegionEmbeddings",
    ]
    accepts_loss_kwargs = False  # each head normalises its own loss (docs/design.md, "Trainer under DDP")

    # the name heads use to pick their default task token (`config.task_token_ids`)
    task_name = None

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MaskedLMHead):
            init.zeros_(module.bias)

    def enable_input_require_grads(self):
        """Also make the region embeddings' output require grad: region features are not token embeddings, and
        with LoRA + gradient checkpointing the visual stream would otherwise get no gradients."""
        super().enable_input_require_grads()

        def make_output_require_grad(module, inputs, output):
            output.requires_grad_(True)

        for module in self.modules():
            if isinstance(module, VilbertRegionEmbeddings):
                self._require_grads_hooks.append(module.register_forward_hook(make_output_require_grad))

    def _encode(self, task_name=None, **inputs):
        """Run the backbone, filling `task_ids` with the head's task token when the model has task tokens."""
        config = self.config
        task_name = task_name or self.task_name
        if config.task_specific_tokens and inputs.get("task_ids") is None:
            if task_name is None or task_name not in config.task_token_ids:
                raise ValueError(
                    f"this model has task tokens: pass `task_ids` (batch,) with values in [0, {config.num_task_tokens})"
                )
            batch = (inputs.get("input_ids") if inputs.get("input_ids") is not None else inputs["inputs_embeds"]).shape[
                0
            ]
            device = self.device
            inputs["task_ids"] = torch.full((batch,), config.task_token_ids[task_name], device=device)
        return self.base_model(**inputs)


class VilbertModel(VilbertPreTrainedModel):
    """The ViLBERT two-stream encoder. Inputs: `input_ids` (B, T), `visual_feats` (B, R, v_feature_size),
    `visual_pos` (B, R, 4) normalized x1,y1,x2,y2, optional masks, `token_type_ids`, `task_ids` (B,) for models
    with task tokens, and `region_mask` (B, R) whose True regions get zero features (masked region modelling)."""

    def __init__(self, config: VilbertConfig, add_pooling_layer=True):
        super().__init__(config)
        self.embeddings = VilbertTextEmbeddings(config)
        self.v_embeddings = VilbertRegionEmbeddings(config)
        self.encoder = VilbertEncoder(config)
        self.t_pooler = VilbertPooler(config.hidden_size, config.bi_hidden_size) if add_pooling_layer else None
        self.v_pooler = VilbertPooler(config.v_hidden_size, config.bi_hidden_size) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def _check_task_ids(self, task_ids, batch):
        config = self.config
        if not config.task_specific_tokens:
            if task_ids is not None:
                raise ValueError(
                    "`task_ids` was given but this model has no task tokens (config.task_specific_tokens=False)."
                )
            return None
        if task_ids is None:
            raise ValueError(f"this model has task tokens: pass `task_ids` (batch,) in [0, {config.num_task_tokens}).")
        task_ids = torch.as_tensor(task_ids).long()
        if task_ids.numel() != batch or (task_ids.dim() == 2 and task_ids.shape[1] != 1) or task_ids.dim() > 2:
            raise ValueError(
                f"`task_ids` must have shape (batch,) or (batch, 1) with batch={batch}, got {tuple(task_ids.shape)}."
            )
        if ((task_ids < 0) | (task_ids >= config.num_task_tokens)).any():
            raise ValueError(
                f"`task_ids` must be in [0, {config.num_task_tokens}) (config.num_task_tokens), got values "
                f"{sorted(set(task_ids.view(-1).tolist()))}."
            )
        return task_ids.view(batch)

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
        task_ids=None,
        region_mask=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> VilbertModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of `input_ids` and `inputs_embeds`.")
        text_shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        check_visual_inputs(visual_feats, visual_pos, visual_attention_mask, batch_size=text_shape[0])
        if visual_feats.shape[-1] != self.config.v_feature_size:
            raise ValueError(
                f"`visual_feats` must have {self.config.v_feature_size} features per region (config.v_feature_size), "
                f"got {visual_feats.shape[-1]}."
            )
        if attention_mask is not None and attention_mask.shape != text_shape:
            raise ValueError(
                f"`attention_mask` must have shape {tuple(text_shape)}, got {tuple(attention_mask.shape)}."
            )
        if region_mask is not None and region_mask.shape != visual_feats.shape[:2]:
            raise ValueError(
                f"`region_mask` must be (batch, regions) = {tuple(visual_feats.shape[:2])}, got {tuple(region_mask.shape)}."
            )
        task_ids = self._check_task_ids(task_ids, text_shape[0])
        output_hidden_states = output_hidden_states or self.config.output_hidden_states
        output_attentions = output_attentions or self.config.output_attentions

        text = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, task_ids=task_ids)
        if region_mask is not None:
            # masked regions are zeroed (original `random_region`: the loader sets their features to 0)
            visual_feats = visual_feats.masked_fill(region_mask.bool()[..., None], 0.0)
        visual = self.v_embeddings(visual_feats.to(text.dtype), visual_pos)

        device = text.device
        if attention_mask is None:
            attention_mask = torch.ones(text_shape, dtype=torch.long, device=device)
        if task_ids is not None:
            attention_mask = torch.cat([attention_mask[:, :1].new_ones(text_shape[0], 1), attention_mask], dim=1)
        if visual_attention_mask is None:
            visual_attention_mask = torch.ones(visual_feats.shape[:2], dtype=torch.long, device=device)

        text, visual, text_states, visual_states, (text_attn, visual_attn, cross_attn) = self.encoder(
            text,
            visual,
            additive_attention_mask(attention_mask, text.dtype),
            additive_attention_mask(visual_attention_mask, visual.dtype),
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        output = VilbertModelOutput(
            text_hidden_state=text,
            visual_hidden_state=visual,
            attention_mask=attention_mask,
            text_hidden_states=text_states,
            visual_hidden_states=visual_states,
            text_attentions=text_attn,
            visual_attentions=visual_attn,
            cross_attentions=cross_attn,
        )
        if self.t_pooler is not None:
            output.text_pooler_output = self.t_pooler(text)
            output.visual_pooler_output = self.v_pooler(visual)
            output.pooler_output = fuse_pooled(output.text_pooler_output, output.visual_pooler_output, self.config)
        return output


def fuse_pooled(text_pooled, visual_pooled, config):
    """The fused pooled vector of the sentence-level heads: product (released models) or sum."""
    return text_pooled * visual_pooled if config.fusion_method == "mul" else text_pooled + visual_pooled


def token_states(outputs, config):
    """Text states aligned with `input_ids`: drops the task token (index 1) when the model has task tokens."""
    states = outputs.text_hidden_state
    if config.task_specific_tokens:
        states = torch.cat([states[:, :1], states[:, 2:]], dim=1)
    return states


# ----------------------------------------------------------------------------------------------------------------
# Pretraining
# ----------------------------------------------------------------------------------------------------------------


class VilbertRegionHead(nn.Module):
    """Masked-region head: transform (dense, text `hidden_act`, LayerNorm) then a decoder to region classes (or
    features, for the regression / NCE targets) with its own bias (original `BertImagePredictionHead`)."""

    def __init__(self, config):
        super().__init__()
        self.transform = PredictionHeadTransform(config.v_hidden_size, config.hidden_act, config.layer_norm_eps)
        self.decoder = nn.Linear(config.v_hidden_size, config.region_target_size)

    def forward(self, hidden_states):
        return self.decoder(self.transform(hidden_states))


class VilbertForPreTraining(VilbertPreTrainedModel):
    """ViLBERT with its pretraining objectives (paper Sec. 3.2); each loss is computed when its labels are given.

    - masked language modelling: `labels` (B, T) token ids at masked positions, -100 elsewhere.
    - masked multi-modal (region) modelling, `region_mask` (B, R) True at masked regions, and by
      `config.visual_target`:
        * "kl": `region_soft_labels` (B, R, v_target_size) detector class distributions; KL(target || predicted)
          summed over classes, averaged over masked regions (the released objective);
        * "classification": `region_class_labels` (B, R) class ids (-100 = ignore); cross-entropy;
        * "regression": `region_feature_labels` (B, R, v_feature_size); MSE averaged over masked elements;
        * "nce": `region_feature_labels`; the prediction must score its own region's feature above every other
          valid region's feature in the batch (cross-entropy over dot products).
    - multimodal alignment prediction: `itm_labels` (B,) 1 = the caption matches the image, 0 = not, -100 =
      ignore. (The original's `next_sentence_label` uses 0 for a match; the converter reorders the head rows.)
    Masking (15% of tokens 80/10/10, 15% of regions of which 90% zeroed, none for mismatched pairs) is the
    collator's job; the model zeroes the features of `region_mask` regions itself.
    """

    _tied_weights_keys = {"mlm_head.decoder.weight": "vilbert.embeddings.word_embeddings.weight"}

    def __init__(self, config: VilbertConfig):
        super().__init__(config)
        self.vilbert = VilbertModel(config)
        self.mlm_head = MaskedLMHead(config.hidden_size, config.vocab_size, config.hidden_act, config.layer_norm_eps)
        self.region_head = VilbertRegionHead(config)
        self.itm_head = nn.Linear(config.bi_hidden_size, 2)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
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
        task_ids=None,
        region_mask=None,
        inputs_embeds=None,
        labels=None,
        region_soft_labels=None,
        region_class_labels=None,
        region_feature_labels=None,
        itm_labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> VilbertForPreTrainingOutput:
        config = self.config
        region_labels = {
            "region_soft_labels": region_soft_labels,
            "region_class_labels": region_class_labels,
            "region_feature_labels": region_feature_labels,
        }
        expected = {
            "kl": "region_soft_labels",
            "classification": "region_class_labels",
            "regression": "region_feature_labels",
            "nce": "region_feature_labels",
        }[config.visual_target]
        for name, value in region_labels.items():
            if value is not None and name != expected:
                raise ValueError(
                    f"`{name}` does not fit config.visual_target={config.visual_target!r}, which trains on `{expected}`."
                )
        region_targets = region_labels[expected]
        if region_targets is not None and region_mask is None:
            raise ValueError("masked region labels were given without `region_mask` (B, R) marking the masked regions.")

        outputs = self._encode(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            task_ids=task_ids,
            region_mask=region_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        text_states = token_states(outputs, config)
        visual_states = outputs.visual_hidden_state
        result = VilbertForPreTrainingOutput(
            text_hidden_state=outputs.text_hidden_state, visual_hidden_state=visual_states, **stream_outputs(outputs)
        )
        weighted = []

        if labels is not None:
            masked = labels != -100
            result.mlm_logits = self.mlm_head(text_states[masked])
            result.mlm_loss = masked_cross_entropy(result.mlm_logits, labels[masked])
            weighted.append(config.mlm_weight * result.mlm_loss)
        else:
            result.mlm_logits = self.mlm_head(text_states)

        if region_targets is not None:
            masked = region_mask.bool()
            if visual_attention_mask is not None:
                masked = masked & visual_attention_mask.bool()
            result.region_logits = self.region_head(visual_states[masked])
            result.mrm_loss = self._region_loss(result.region_logits, region_targets, masked, visual_attention_mask)
            weighted.append(config.mrm_weight * result.mrm_loss)
        else:
            result.region_logits = self.region_head(visual_states)

        result.itm_logits = self.itm_head(self.dropout(outputs.pooler_output))
        if itm_labels is not None:
            result.itm_loss = masked_cross_entropy(result.itm_logits, itm_labels)
            weighted.append(config.itm_weight * result.itm_loss)

        if weighted:
            result.loss = torch.stack(weighted).sum()
        return result

    def _region_loss(self, predictions, targets, masked, visual_attention_mask):
        target = self.config.visual_target
        if target == "kl":
            return region_kl_loss(predictions, targets[masked])
        if target == "classification":
            return masked_cross_entropy(predictions, targets[masked])
        if target == "regression":
            return region_feature_regression_loss(predictions, targets[masked])
        return region_nce_loss(predictions, targets, masked, visual_attention_mask)


# ----------------------------------------------------------------------------------------------------------------
# Task heads (12-in-1 `VILBertForVLTasks`; one class per task, same module names, so the multi-task checkpoint loads
# into any of them)
# ----------------------------------------------------------------------------------------------------------------


def masked_region_scores(scores, visual_attention_mask):
    """(B, R) region scores with padded regions at the dtype's lowest value (the original adds -10000)."""
    if visual_attention_mask is None:
        return scores
    return scores.masked_fill(visual_attention_mask == 0, torch.finfo(scores.dtype).min)


def pair_inputs(inputs):
    """NLVR2 inputs with two images per statement (`visual_*` of shape (B, 2, R, ...)) -> 2B rows (statement
    repeated) in the order (ex0 img0, ex0 img1, ex1 img0, ...), the pairing of the original's `view(-1, 2 * bi)`."""
    visual_feats = inputs.get("visual_feats")
    if visual_feats is None or visual_feats.dim() != 4 or visual_feats.shape[1] != 2:
        shape = None if visual_feats is None else tuple(visual_feats.shape)
        raise ValueError(f"`visual_feats` must hold two images per example: (batch, 2, regions, dim), got {shape}.")
    paired = {}
    for name, value in inputs.items():
        if value is None or not torch.is_tensor(value):
            paired[name] = value
        elif name.startswith("visual_") or name == "region_mask":
            paired[name] = value.flatten(0, 1)
        else:
            paired[name] = value.repeat_interleave(2, dim=0)
    return paired


def choice_inputs(inputs):
    """Multiple choice: text (B, C, T) -> (B*C, T); visual inputs (B, R, ...) repeated per choice, or (B, C, R, ...)
    flattened. Returns the flattened inputs and C."""
    input_ids = inputs.get("input_ids")
    reference = input_ids if input_ids is not None else inputs.get("inputs_embeds")
    if reference is None or reference.dim() != (3 if input_ids is not None else 4):
        shape = None if reference is None else tuple(reference.shape)
        raise ValueError(f"`input_ids` must be (batch, num_choices, seq_len) for multiple choice, got {shape}.")
    batch, choices = reference.shape[:2]
    flat = {}
    for name, value in inputs.items():
        if value is None or not torch.is_tensor(value):
            flat[name] = value
        elif name in ("visual_feats", "visual_pos", "visual_attention_mask", "region_mask"):
            per_choice = value.dim() == (4 if name in ("visual_feats", "visual_pos") else 3)
            flat[name] = value.flatten(0, 1) if per_choice else value.repeat_interleave(choices, dim=0)
        elif name == "task_ids":
            flat[name] = value.view(batch, -1)[:, :1].repeat_interleave(choices, dim=0).view(-1)
        else:
            flat[name] = value.flatten(0, 1)
    return flat, choices


def stream_outputs(outputs):
    """The per-layer fields of a `VilbertModelOutput` that every head passes on."""
    return {
        "text_hidden_states": outputs.text_hidden_states,
        "visual_hidden_states": outputs.visual_hidden_states,
        "text_attentions": outputs.text_attentions,
        "visual_attentions": outputs.visual_attentions,
        "cross_attentions": outputs.cross_attentions,
    }


class VilbertTaskModel(VilbertPreTrainedModel):
    """Shared plumbing of the task heads: the backbone (named by `base_model_prefix`, built by `backbone_class`,
    so variants such as ERNIE-ViL reuse the heads), the dropout applied to pooled / sequence features, one forward.

    A head states what is its own: `build_head(config)` (its modules), `prepare_inputs` (e.g. NLVR2 pairs, multiple
    choice), `predict(outputs, inputs)` (logits) and `compute_loss(logits, labels, inputs)`. The multi-task model
    runs the same methods on its own modules.
    """

    backbone_class = VilbertModel

    def __init__(self, config):
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.backbone_class(config))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.build_head(config)
        self.post_init()

    def build_head(self, config):
        raise NotImplementedError(f"{type(self).__name__} must define `build_head(config)`")

    def prepare_inputs(self, inputs):
        """Backbone inputs from the head's inputs; returns (inputs, layout) where layout is passed to `predict`."""
        return inputs, None

    def predict(self, outputs, inputs, layout):
        raise NotImplementedError

    def compute_loss(self, logits, labels, inputs, **loss_kwargs):
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
        task_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> VilbertTaskOutput:
        r"""
        Inputs as `VilbertModel`; `task_ids` default to the head's task token for models with task tokens.
        labels: the head's targets (see the class docstring); the loss is computed when they are given.
        """
        inputs = dict(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            task_ids=task_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return self._task_forward(inputs, labels)

    def _task_forward(self, inputs, labels, task_name=None, **loss_kwargs):
        inputs, layout = self.prepare_inputs(inputs)
        outputs = self._encode(task_name, **inputs)
        logits = self.predict(outputs, inputs, layout)
        has_targets = labels is not None or any(value is not None for value in loss_kwargs.values())
        loss = self.compute_loss(logits, labels, inputs, **loss_kwargs) if has_targets else None
        return VilbertTaskOutput(loss=loss, logits=logits, **stream_outputs(outputs))


class VilbertForVisualQuestionAnswering(VilbertTaskModel):
    """VQA (12-in-1 `vil_prediction`): GELU-LayerNorm MLP on the fused pooled vector to `config.num_labels` answers
    (3129 for VQA v2). `labels`: (B, num_labels) soft VQA scores or (B,) answer ids; BCE summed over answers and
    averaged over examples, as the original."""

    task_name = "vqa"

    def build_head(self, config):
        bi = config.bi_hidden_size
        self.vqa_classifier = mlp_classifier(bi, 2 * bi, config.num_labels, config.layer_norm_eps)

    def predict(self, outputs, inputs, layout):
        return self.vqa_classifier(self.dropout(outputs.pooler_output))

    def compute_loss(self, logits, labels, inputs):
        return soft_score_loss(logits, labels, scaling="num_answers")


class VilbertForGQA(VilbertForVisualQuestionAnswering):
    """GQA (12-in-1 `vil_prediction_gqa`): the VQA head with `config.gqa_num_labels` (1533) answers."""

    task_name = "gqa"

    def build_head(self, config):
        bi = config.bi_hidden_size
        self.gqa_classifier = mlp_classifier(bi, 2 * bi, config.gqa_num_labels, config.layer_norm_eps)

    def predict(self, outputs, inputs, layout):
        return self.gqa_classifier(self.dropout(outputs.pooler_output))


class VilbertForImageTextRetrieval(VilbertTaskModel):
    """Image-text retrieval (12-in-1 `vil_logit`): a matching score per (text, image) row. Training: `labels` (B,)
    1/0 -> BCE, or `group_size=K` (rows in groups of K, positive first; the original uses 1 + 3 negatives) ->
    cross-entropy over each group. `logits`: (B,)."""

    task_name = "retrieval"

    def build_head(self, config):
        self.pair_scorer = nn.Linear(config.bi_hidden_size, 1)

    def predict(self, outputs, inputs, layout):
        return self.pair_scorer(self.dropout(outputs.pooler_output)).squeeze(-1)

    def compute_loss(self, logits, labels, inputs, group_size=None):
        return pair_loss(logits, labels, group_size, objective="softmax")

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
        task_ids=None,
        inputs_embeds=None,
        labels=None,
        group_size=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> VilbertTaskOutput:
        r"""
        labels: (B,) 1 = the text matches the image (BCE), or with `group_size` the positive of each group.
        group_size: rows come in groups of this size, the positive first; softmax cross-entropy over each group.
        """
        inputs = dict(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            task_ids=task_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return self._task_forward(inputs, labels, group_size=group_size)


class VilbertForMultipleChoice(VilbertTaskModel):
    """Multiple choice, e.g. VCR Q->A and QA->R (12-in-1 `vil_logit` per choice, process "expand").

    Inputs: `input_ids` / `attention_mask` / `token_type_ids` (B, C, T); visual inputs (B, R, ...) shared by the
    choices or (B, C, R, ...). `labels` (B,) index of the right choice; cross-entropy. `logits`: (B, C)."""

    task_name = "vcr"

    def build_head(self, config):
        self.pair_scorer = nn.Linear(config.bi_hidden_size, 1)

    def prepare_inputs(self, inputs):
        return choice_inputs(inputs)

    def predict(self, outputs, inputs, layout):
        return self.pair_scorer(self.dropout(outputs.pooler_output)).view(-1, layout)

    def compute_loss(self, logits, labels, inputs):
        return masked_cross_entropy(logits, labels)


class VilbertForVisualReasoning(VilbertTaskModel):
    """NLVR2 (12-in-1 `vil_binary_prediction`): one statement, two images. Each image is encoded with the statement;
    the two fused pooled vectors are concatenated and classified (MLP, 2 classes).

    Inputs as UNITER's NLVR2 head: text (B, T), `visual_feats` (B, 2, R, D), `visual_pos` (B, 2, R, 4),
    `visual_attention_mask` (B, 2, R). `labels`: (B,) 1 = statement true (cross-entropy), or (B, 2) targets (BCE,
    as the original)."""

    task_name = "nlvr2"

    def build_head(self, config):
        bi = config.bi_hidden_size
        self.nlvr2_classifier = mlp_classifier(2 * bi, 2 * bi, 2, config.layer_norm_eps)

    def prepare_inputs(self, inputs):
        return pair_inputs(inputs), None

    def predict(self, outputs, inputs, layout):
        pooled = self.dropout(outputs.pooler_output)
        return self.nlvr2_classifier(pooled.view(-1, 2 * pooled.shape[-1]))

    def compute_loss(self, logits, labels, inputs):
        return classification_loss(logits, labels)


class VilbertForVisualEntailment(VilbertTaskModel):
    """SNLI-VE (12-in-1 `vil_tri_prediction`): Linear on the fused pooled vector to 3 classes in the order of
    `config.entailment_labels` (original: contradiction, neutral, entailment). `labels`: (B,) ids or (B, 3)."""

    task_name = "entailment"

    def build_head(self, config):
        self.entailment_classifier = nn.Linear(config.bi_hidden_size, len(config.entailment_labels))

    def predict(self, outputs, inputs, layout):
        return self.entailment_classifier(self.dropout(outputs.pooler_output))

    def compute_loss(self, logits, labels, inputs):
        return classification_loss(logits, labels)


class VilbertForReferringExpression(VilbertTaskModel):
    """Referring expressions (12-in-1 `vision_logit`): a score per region from its final visual state; padded
    regions get the dtype's lowest score. Region 0 is the whole-image region. `labels`: (B,) referred region index
    (cross-entropy) or (B, R) soft targets (BCE, as the original). `logits`: (B, R)."""

    task_name = "refexp"

    def build_head(self, config):
        self.region_scorer = nn.Linear(config.v_hidden_size, 1)

    def predict(self, outputs, inputs, layout):
        scores = self.region_scorer(self.dropout(outputs.visual_hidden_state)).squeeze(-1)
        return masked_region_scores(scores, inputs.get("visual_attention_mask"))

    def compute_loss(self, logits, labels, inputs):
        return region_selection_loss(logits, labels, inputs.get("visual_attention_mask"))


# the single-task class whose inputs, logits and loss each task of the multi-task model uses
MULTI_TASK_HEADS = {
    head.task_name: head
    for head in (
        VilbertForVisualQuestionAnswering,
        VilbertForGQA,
        VilbertForImageTextRetrieval,
        VilbertForMultipleChoice,
        VilbertForVisualReasoning,
        VilbertForVisualEntailment,
        VilbertForReferringExpression,
    )
}


class VilbertForMultiTask(VilbertPreTrainedModel):
    """The 12-in-1 multi-task model (`VILBertForVLTasks`): one backbone (with task tokens) and every task head.

    `forward(task=None, ...)` returns every head's output like the original (NLVR2 from consecutive row pairs
    when the batch is even). `forward(task=name, labels=..., ...)` runs one task with the inputs and loss of
    the matching single-task class (`vqa`, `gqa`, `retrieval`, `vcr`, `nlvr2`, `entailment`, `refexp`); `task_ids`
    default to `config.task_token_ids[task]`. 12-in-1 trains by cycling through the tasks, one task per batch
    (`examples/vilbert_multitask.py`).
    """

    _tied_weights_keys = {"mlm_head.decoder.weight": "vilbert.embeddings.word_embeddings.weight"}

    def __init__(self, config: VilbertConfig):
        super().__init__(config)
        bi = config.bi_hidden_size
        eps = config.layer_norm_eps
        self.vilbert = VilbertModel(config)
        # the original `cls` heads (MLM, masked region, alignment) are part of the multi-task model too
        self.mlm_head = MaskedLMHead(config.hidden_size, config.vocab_size, config.hidden_act, eps)
        self.region_head = VilbertRegionHead(config)
        self.itm_head = nn.Linear(bi, 2)
        self.vqa_classifier = mlp_classifier(bi, 2 * bi, config.num_labels, eps)
        self.gqa_classifier = mlp_classifier(bi, 2 * bi, config.gqa_num_labels, eps)
        self.nlvr2_classifier = mlp_classifier(2 * bi, 2 * bi, 2, eps)
        self.pair_scorer = nn.Linear(bi, 1)
        self.entailment_classifier = nn.Linear(bi, len(config.entailment_labels))
        self.region_scorer = nn.Linear(config.v_hidden_size, 1)
        self.token_scorer = nn.Linear(config.hidden_size, 1)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
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
        task_ids=None,
        inputs_embeds=None,
        task=None,
        labels=None,
        group_size=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> VilbertMultiTaskOutput:
        r"""
        task: one of `vqa`, `gqa`, `retrieval`, `vcr`, `nlvr2`, `entailment`, `refexp` to run that task's head (with
            its inputs layout and loss), or None for every head's output on one batch.
        labels / group_size: the chosen task's targets, as the single-task class takes them.
        """
        inputs = dict(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            task_ids=task_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        if task is not None:
            return self._single_task(task, inputs, labels, group_size)
        if self.config.task_specific_tokens and task_ids is None:
            raise ValueError(f"pass `task_ids` (batch,) or `task=` (one of {tuple(MULTI_TASK_HEADS)})")
        outputs = self.vilbert(**inputs)
        pooled = self.dropout(outputs.pooler_output)
        result = VilbertMultiTaskOutput(
            vqa_logits=self.vqa_classifier(pooled),
            gqa_logits=self.gqa_classifier(pooled),
            pair_scores=self.pair_scorer(pooled).squeeze(-1),
            entailment_logits=self.entailment_classifier(pooled),
            region_scores=masked_region_scores(
                self.region_scorer(self.dropout(outputs.visual_hidden_state)).squeeze(-1), visual_attention_mask
            ),
            token_scores=self.token_scorer(self.dropout(outputs.text_hidden_state)).squeeze(-1),
            mlm_logits=self.mlm_head(outputs.text_hidden_state),
            region_logits=self.region_head(outputs.visual_hidden_state),
            itm_logits=self.itm_head(pooled),
            text_hidden_state=outputs.text_hidden_state,
            visual_hidden_state=outputs.visual_hidden_state,
            **stream_outputs(outputs),
        )
        if pooled.shape[0] % 2 == 0:
            result.nlvr2_logits = self.nlvr2_classifier(pooled.view(-1, 2 * pooled.shape[-1]))
        return result

    def _single_task(self, task, inputs, labels, group_size):
        """One task through the single-task class's own steps, on this model's modules (same names)."""
        head = MULTI_TASK_HEADS.get(task)
        if head is None:
            raise ValueError(f"`task` must be one of {tuple(MULTI_TASK_HEADS)}, got {task!r}")
        if self.config.task_specific_tokens and inputs.get("task_ids") is None:
            if task not in self.config.task_token_ids:
                raise ValueError(f"config.task_token_ids has no entry for task {task!r}: pass `task_ids`.")
        loss_kwargs = {"group_size": group_size} if head is VilbertForImageTextRetrieval else {}
        inputs, layout = head.prepare_inputs(self, inputs)
        outputs = self._encode(task, **inputs)
        logits = head.predict(self, outputs, inputs, layout)
        has_targets = labels is not None or group_size is not None
        loss = head.compute_loss(self, logits, labels, inputs, **loss_kwargs) if has_targets else None
        return VilbertMultiTaskOutput(
            loss=loss,
            logits=logits,
            text_hidden_state=outputs.text_hidden_state,
            visual_hidden_state=outputs.visual_hidden_state,
            **stream_outputs(outputs),
        )


__all__ = [
    "LORA_TARGET_MODULES",
    "VilbertForGQA",
    "VilbertForImageTextRetrieval",
    "VilbertForMultiTask",
    "VilbertForMultipleChoice",
    "VilbertForPreTraining",
    "VilbertForReferringExpression",
    "VilbertForVisualEntailment",
    "VilbertForVisualQuestionAnswering",
    "VilbertForVisualReasoning",
    "VilbertModel",
    "VilbertPreTrainedModel",
]
