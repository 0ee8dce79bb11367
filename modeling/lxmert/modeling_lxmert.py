"""LXMERT (Tan & Bansal, EMNLP 2019) in hf_vlp: transformers' classes, subclassed where hf_vlp needs more.

transformers ships the model (`transformers.models.lxmert`) and reproduces the original github.com/airsplay/lxmert
forward to float rounding on the parity fixture (`shared/fixtures/lxmert`). These subclasses keep every weight
name (Hub checkpoints of transformers load unchanged) and add:

* Gradient checkpointing: transformers' LXMERT layers are plain modules; here the language, relational and
  cross-modality layers are re-classed as `GradientCheckpointingLayer`s (same parameters, same forward).
* `LxmertForPreTraining` returns each objective's loss (`mlm_loss`, `itm_loss` (matching), `obj_loss`, `attr_loss`,
  `feat_loss`, `qa_loss`) and the object-head predictions, computes losses in fp32, and does not return NaN when
  a batch has no masked word or no QA label. The losses are the original's (`src/lxrt/modeling.py::
  LXRTPretraining`): cross-entropy for MLM / matching / QA; per-region obj / attr cross-entropy weighted by the
  detector confidence and feature SmoothL1 weighted by the masked-region indicator, each averaged over all B*R
  regions and multiplied by `config.visual_loss_normalizer`. The original uses exactly 1/0.15; transformers'
  config default is 6.67 (converted checkpoints get 1/0.15).
* `LxmertForVisualQuestionAnswering` accepts soft VQA scores (B, num_qa_labels) and then trains with the
  original's `BCEWithLogitsLoss * num_answers` (`src/tasks/vqa.py`); class ids (B,) keep transformers'
  cross-entropy. Its output also exposes the answer scores as `.logits`.
* LoRA with gradient checkpointing: `enable_input_require_grads` also hooks the region encoder (`visn_fc`), so
  the region stream carries gradients into checkpointed layers, not only the text stream.

Labels use transformers' ignore index -100 (the original used -1; converters and collators map it).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.lxmert import modeling_lxmert as hf
from transformers.models.lxmert.modeling_lxmert import (  # named in `_no_split_modules`
    LxmertEmbeddings as LxmertEmbeddings,
)
from transformers.models.lxmert.modeling_lxmert import (
    LxmertVisualFeatureEncoder as LxmertVisualFeatureEncoder,
)
from transformers.utils import ModelOutput, can_return_tuple

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.layers import check_visual_inputs
from hf_vlp.pretraining.losses import masked_cross_entropy, soft_score_loss, zero_loss

# Default LoRA targets: query/key/value of every attention (language, relational, cross-modality, and the
# cross-modality self-attentions) plus the region-feature projection `visn_fc.visn_fc` (vision side).
LORA_TARGET_MODULES = ["query", "key", "value", "visn_fc.visn_fc"]

# The original's visual-loss weight (`modeling.py::VisualConfig.visual_loss_config`, 1 / 0.15 for obj/attr/feat).
ORIGINAL_VISUAL_LOSS_NORMALIZER = 1 / 0.15


# -- the same layers, as GradientCheckpointingLayers (the class names stay those of transformers) ---------------


class LxmertLayer(hf.LxmertLayer, GradientCheckpointingLayer):
    pass


class LxmertXLayer(hf.LxmertXLayer, GradientCheckpointingLayer):
    pass


def _make_layers_checkpointable(lxmert_model):
    """Re-class the encoder's layers in place: parameters and forward are untouched, only the class gains
    transformers' checkpointing wrapper (applied to `forward` when a GradientCheckpointingLayer subclass is made)."""
    encoder = lxmert_model.encoder
    for layer in list(encoder.layer) + list(encoder.r_layers):
        layer.__class__ = LxmertLayer
    for layer in encoder.x_layers:
        layer.__class__ = LxmertXLayer


class _HfVlpLxmertMixin(HubPushMixin):
    """Shared by every hf_vlp LXMERT class (put first in the bases)."""

    supports_gradient_checkpointing = True
    _no_split_modules = ["LxmertLayer", "LxmertXLayer", "LxmertEmbeddings", "LxmertVisualFeatureEncoder"]
    accepts_loss_kwargs = False  # every head normalises its own loss (docs/design.md, "Trainer under DDP")

    def _lxmert_backbone(self):
        return self if isinstance(self, hf.LxmertModel) else self.lxmert

    def enable_input_require_grads(self):
        """Also make the region encoder's output require grad: with reentrant checkpointing and frozen weights
        (LoRA), the region stream would otherwise reach the checkpointed relational layers without gradients."""
        super().enable_input_require_grads()

        def make_output_require_grad(module, inputs, output):
            output.requires_grad_(True)

        hook = self._lxmert_backbone().encoder.visn_fc.register_forward_hook(make_output_require_grad)
        self._require_grads_hooks = list(getattr(self, "_require_grads_hooks", [])) + [hook]


def _check_lxmert_inputs(input_ids, visual_feats, visual_pos, visual_attention_mask, visual_feat_dim):
    if visual_feats is None:
        raise ValueError("`visual_feats` (batch, regions, visual_feat_dim) is required.")
    if visual_pos is None:
        raise ValueError("`visual_pos` (batch, regions, 4) normalized x1, y1, x2, y2 boxes is required.")
    if visual_feats.dim() != 3 or visual_pos.dim() != 3 or visual_pos.shape[:2] != visual_feats.shape[:2]:
        raise ValueError(
            f"`visual_feats` {tuple(visual_feats.shape)} and `visual_pos` {tuple(visual_pos.shape)} must be "
            "(batch, regions, dim) with the same batch and regions."
        )
    if visual_attention_mask is not None and tuple(visual_attention_mask.shape) != tuple(visual_feats.shape[:2]):
        raise ValueError(
            f"`visual_attention_mask` must be (batch, regions) = {tuple(visual_feats.shape[:2])}, "
            f"got {tuple(visual_attention_mask.shape)}."
        )
    if input_ids is not None and input_ids.shape[0] != visual_feats.shape[0]:
        raise ValueError(
            f"`input_ids` batch {input_ids.shape[0]} and `visual_feats` batch {visual_feats.shape[0]} differ."
        )
    # the feature size against the config, then values: finite, boxes in [0, 1], 0/1 mask
    check_visual_inputs(visual_feats, visual_pos, visual_attention_mask, feature_dim=visual_feat_dim)


class LxmertModel(_HfVlpLxmertMixin, hf.LxmertModel):
    """transformers' `LxmertModel` with gradient checkpointing."""

    def __init__(self, config):
        super().__init__(config)
        _make_layers_checkpointable(self)

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        visual_feats=None,
        visual_pos=None,
        attention_mask=None,
        visual_attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> hf.LxmertModelOutput:
        _check_lxmert_inputs(input_ids, visual_feats, visual_pos, visual_attention_mask, self.config.visual_feat_dim)
        return super().forward(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )


@dataclass
class LxmertForPreTrainingOutput(hf.LxmertForPreTrainingOutput):
    """transformers' output plus each objective's loss and the object head's per-region predictions."""

    mlm_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    obj_loss: torch.FloatTensor | None = None
    attr_loss: torch.FloatTensor | None = None
    feat_loss: torch.FloatTensor | None = None
    qa_loss: torch.FloatTensor | None = None
    obj_logits: torch.FloatTensor | None = None
    attr_logits: torch.FloatTensor | None = None
    feat_predictions: torch.FloatTensor | None = None
    language_output: torch.FloatTensor | None = None
    vision_output: torch.FloatTensor | None = None
    pooled_output: torch.FloatTensor | None = None

    @property
    def matched_loss(self):
        """Former name of `itm_loss` (read by `hf_vlp.conversion.lxmert`'s fixture check)."""
        return self.itm_loss


class LxmertForPreTraining(_HfVlpLxmertMixin, hf.LxmertForPreTraining):
    """The original pre-training objectives, with transformers' argument names:

    labels: (B, T) masked-word ids, -100 elsewhere.
    matched_label: (B,) 1 = the sentence belongs to the image, 0 = it was swapped.
    obj_labels: {"obj": (ids (B, R), confidence (B, R)), "attr": (ids, confidence),
                 "feat": (unmasked features (B, R, D), masked-region indicator (B, R))}; the original predicts
                 object / attribute classes at EVERY region weighted by the detector confidence, and regresses
                 features only at masked regions. Give 0 weights to padded regions.
    ans: (B,) answer id, -100 when the pair has no QA label or is unmatched.
    """

    def __init__(self, config):
        super().__init__(config)
        _make_layers_checkpointable(self.lxmert)

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        visual_feats=None,
        visual_pos=None,
        attention_mask=None,
        visual_attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        labels=None,
        obj_labels=None,
        matched_label=None,
        ans=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        _check_lxmert_inputs(input_ids, visual_feats, visual_pos, visual_attention_mask, self.config.visual_feat_dim)
        outputs = self.lxmert(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            token_type_ids=token_type_ids,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        language_output, vision_output, pooled_output = (
            outputs.language_output,
            outputs.vision_output,
            outputs.pooled_output,
        )
        prediction_logits, cross_relationship_score = self.cls(language_output, pooled_output)
        answer_score = self.answer_head(pooled_output) if self.task_qa else None
        visual_predictions = self.obj_predict_head(vision_output) if self.task_obj_predict else {}

        losses = {}
        if labels is not None and self.task_mask_lm:
            losses["mlm_loss"] = masked_cross_entropy(prediction_logits.flatten(0, 1), labels.flatten())
        if matched_label is not None and self.task_matched:
            losses["itm_loss"] = masked_cross_entropy(cross_relationship_score, matched_label.view(-1))
        if obj_labels is not None and self.task_obj_predict:
            losses.update(self._visual_losses(visual_predictions, obj_labels))
        if ans is not None and self.task_qa:
            losses["qa_loss"] = masked_cross_entropy(answer_score, ans.view(-1))
        loss = sum(losses.values()) if losses else None

        result = LxmertForPreTrainingOutput(
            loss=loss,
            prediction_logits=prediction_logits,
            cross_relationship_score=cross_relationship_score,
            question_answering_score=answer_score,
            language_hidden_states=outputs.language_hidden_states,
            vision_hidden_states=outputs.vision_hidden_states,
            language_attentions=outputs.language_attentions,
            vision_attentions=outputs.vision_attentions,
            cross_encoder_attentions=outputs.cross_encoder_attentions,
            obj_logits=visual_predictions.get("obj"),
            attr_logits=visual_predictions.get("attr"),
            feat_predictions=visual_predictions.get("feat"),
            language_output=language_output,
            vision_output=vision_output,
            pooled_output=pooled_output,
            **losses,
        )
        return result

    def _visual_losses(self, predictions, obj_labels):
        """Original `LXRTPretraining.forward`: (per-region loss * weight).mean() over all B*R regions * normalizer."""
        if not isinstance(obj_labels, dict):
            raise ValueError("`obj_labels` must be a dict {'obj'|'attr'|'feat': (targets, weights)}.")
        losses = {}
        for key in predictions:
            if key not in obj_labels:
                continue
            target, weight = obj_labels[key]
            scores = predictions[key].float()
            if key == "feat":
                if target.shape != scores.shape:
                    raise ValueError(
                        f"`obj_labels['feat'][0]` must be {tuple(scores.shape)}, got {tuple(target.shape)}."
                    )
                per_region = F.smooth_l1_loss(scores, target.float(), reduction="none").mean(-1)
            else:
                if target.shape != scores.shape[:2]:
                    raise ValueError(
                        f"`obj_labels['{key}'][0]` must be (batch, regions) = {tuple(scores.shape[:2])}, "
                        f"got {tuple(target.shape)}."
                    )
                per_region = F.cross_entropy(
                    scores.flatten(0, 1), target.flatten(), reduction="none", ignore_index=-100
                )
                per_region = per_region.view(target.shape)
            if weight.shape != per_region.shape:
                raise ValueError(
                    f"`obj_labels['{key}'][1]` must be (batch, regions) = {tuple(per_region.shape)}, "
                    f"got {tuple(weight.shape)}."
                )
            losses[f"{key}_loss"] = (per_region * weight.float()).mean() * self.visual_loss_normalizer
        if not losses:
            losses["obj_loss"] = zero_loss(next(iter(predictions.values())))
        return losses


@dataclass
class LxmertForVisualQuestionAnsweringOutput(hf.LxmertForQuestionAnsweringOutput):
    @property
    def logits(self):
        """The answer scores (alias of `question_answering_score`, the name every hf_vlp task head uses)."""
        return self.question_answering_score


class LxmertForVisualQuestionAnswering(_HfVlpLxmertMixin, hf.LxmertForQuestionAnswering):
    """Answer classifier on the pooled output (`answer_head.logit_fc`: Linear(H, 2H), GeLU, LayerNorm, Linear).

    labels: (B, num_qa_labels) soft scores -> the original VQA/GQA loss `BCEWithLogits(mean) * num_qa_labels`;
            (B,) answer ids -> cross-entropy (transformers' behaviour), -100 ignored.
    """

    def __init__(self, config):
        super().__init__(config)
        _make_layers_checkpointable(self.lxmert)

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        visual_feats=None,
        visual_pos=None,
        attention_mask=None,
        visual_attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        _check_lxmert_inputs(input_ids, visual_feats, visual_pos, visual_attention_mask, self.config.visual_feat_dim)
        outputs = self.lxmert(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            token_type_ids=token_type_ids,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        answer_score = self.answer_head(outputs.pooled_output)
        loss = None
        if labels is not None:
            if labels.is_floating_point():
                if labels.shape != answer_score.shape:
                    raise ValueError(
                        f"soft `labels` must be (batch, num_qa_labels) = {tuple(answer_score.shape)}, "
                        f"got {tuple(labels.shape)}."
                    )
                loss = soft_score_loss(answer_score, labels, scaling="num_answers")
            else:
                loss = masked_cross_entropy(answer_score, labels.view(-1))
        result = LxmertForVisualQuestionAnsweringOutput(
            loss=loss,
            question_answering_score=answer_score,
            language_hidden_states=outputs.language_hidden_states,
            vision_hidden_states=outputs.vision_hidden_states,
            language_attentions=outputs.language_attentions,
            vision_attentions=outputs.vision_attentions,
            cross_encoder_attentions=outputs.cross_encoder_attentions,
        )
        return result


@dataclass
class LxmertForVisualReasoningOutput(ModelOutput):
    """`logits` (B, 2): 1 = the statement is true of the image pair. Hidden states and attentions are those of the
    2B (statement, image) encodings, ordered example 0 left, example 0 right, example 1 left, ..."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    language_hidden_states: tuple[torch.FloatTensor] | None = None
    vision_hidden_states: tuple[torch.FloatTensor] | None = None
    language_attentions: tuple[torch.FloatTensor] | None = None
    vision_attentions: tuple[torch.FloatTensor] | None = None
    cross_encoder_attentions: tuple[torch.FloatTensor] | None = None


class LxmertForVisualReasoning(_HfVlpLxmertMixin, hf.LxmertPreTrainedModel):
    """NLVR2 head of the original (`src/tasks/nlvr2_model.py`): the statement is encoded with each image separately,
    the two pooled outputs are concatenated (left, right) and classified by `classifier` = Linear(2H, 2H), GELU,
    LayerNorm(eps 1e-12), Linear(2H, 2) (the original's `logit_fc`; transformers has no LXMERT class for it).

    Inputs as every hf_vlp NLVR2 head takes them: text (B, T) once, regions of both images stacked on dim 1
    (`visual_feats` (B, 2, R, D), `visual_pos` (B, 2, R, 4), `visual_attention_mask` (B, 2, R)). `labels` (B,):
    1 = true; cross-entropy, -100 ignored.
    """

    def __init__(self, config):
        super().__init__(config)
        self.lxmert = LxmertModel(config)
        width = 2 * config.hidden_size
        self.classifier = nn.Sequential(
            nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=1e-12), nn.Linear(width, 2)
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        visual_feats=None,
        visual_pos=None,
        attention_mask=None,
        visual_attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> LxmertForVisualReasoningOutput:
        if visual_feats is None or visual_feats.dim() != 4 or visual_feats.shape[1] != 2:
            shape = None if visual_feats is None else tuple(visual_feats.shape)
            raise ValueError(f"`visual_feats` must be (batch, 2, regions, dim): NLVR2's two images, got {shape}.")
        batch = visual_feats.shape[0]
        if visual_pos is None or tuple(visual_pos.shape[:2]) != (batch, 2):
            shape = None if visual_pos is None else tuple(visual_pos.shape)
            raise ValueError(f"`visual_pos` must be (batch, 2, regions, 4) like `visual_feats`, got {shape}.")
        if visual_attention_mask is not None and tuple(visual_attention_mask.shape[:2]) != (batch, 2):
            raise ValueError(
                f"`visual_attention_mask` must be (batch, 2, regions), got {tuple(visual_attention_mask.shape)}."
            )

        def twice(tensor):  # each statement once per image: rows 2i and 2i + 1 belong to example i
            return None if tensor is None else tensor.repeat_interleave(2, dim=0)

        outputs = self.lxmert(
            input_ids=twice(input_ids),
            visual_feats=visual_feats.flatten(0, 1),
            visual_pos=visual_pos.flatten(0, 1),
            attention_mask=twice(attention_mask),
            visual_attention_mask=None if visual_attention_mask is None else visual_attention_mask.flatten(0, 1),
            token_type_ids=twice(token_type_ids),
            inputs_embeds=twice(inputs_embeds),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(outputs.pooled_output.reshape(-1, 2 * self.config.hidden_size))
        loss = masked_cross_entropy(logits, labels.view(-1)) if labels is not None else None
        return LxmertForVisualReasoningOutput(
            loss=loss,
            logits=logits,
            language_hidden_states=outputs.language_hidden_states,
            vision_hidden_states=outputs.vision_hidden_states,
            language_attentions=outputs.language_attentions,
            vision_attentions=outputs.vision_attentions,
            cross_encoder_attentions=outputs.cross_encoder_attentions,
        )


__all__ = [
    "LORA_TARGET_MODULES",
    "LxmertForVisualReasoning",
    "LxmertForVisualReasoningOutput",
    "ORIGINAL_VISUAL_LOSS_NORMALIZER",
    "LxmertForPreTraining",
    "LxmertForPreTrainingOutput",
    "LxmertForVisualQuestionAnswering",
    "LxmertForVisualQuestionAnsweringOutput",
    "LxmertModel",
]
