"""ERNIE-ViL: knowledge-enhanced vision-language representations through scene graphs (Yu et al., AAAI 2021).

A variant of ViLBERT (`hf_vlp.modeling.vilbert`): the encoder is ViLBERT's two-stream encoder — text BERT layers,
visual layers, co-attention blocks on the `v_biattention_id` / `t_biattention_id` schedule, ReLU first-token poolers
to `co_hidden_size`, fusion by element-wise product — built from the same classes, with ERNIE-ViL's config
(LayerNorm eps 1e-5, one activation for both streams, text FFN 4 * hidden). What is ERNIE-ViL's own is here: the
pretraining objectives (scene-graph prediction: object, attribute and relationship prediction on caption words
parsed from the caption's scene graph — `scene_graph.py` builds the targets — plus MLM, masked region
classification and image-text matching) and its fine-tuning heads (PaddlePaddle/ERNIE `ernie-vil/finetune.py`:
VCR, VQA, Flickr30k retrieval, RefCOCO+).

Differences from the Paddle original that do not change outputs at real positions: masks are applied to keys only
(the original also masks padded query rows, whose outputs nobody reads); `position_ids` default to 0..T-1 (the
original's readers feed exactly that).
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput, can_return_tuple

from hf_vlp.layers import MaskedLMHead
from hf_vlp.modeling.vilbert.modeling_vilbert import (
    VilbertForImageTextRetrieval,
    VilbertForMultipleChoice,
    VilbertForReferringExpression,
    VilbertForVisualQuestionAnswering,
    VilbertModel,
    VilbertPreTrainedModel,
    VilbertRegionHead,
    stream_outputs,
)
from hf_vlp.pretraining.losses import circle_loss, grouped_scores, masked_cross_entropy, region_kl_loss

from .configuration_ernie_vil import ErnieVilConfig

SCENE_GRAPH_OBJECTIVES = ("object", "attribute", "relation")


@dataclass
class ErnieVilForPreTrainingOutput(ModelOutput):
    """Summed weighted `loss` and each objective's loss. `mlm_logits` (B, T, vocab) and `region_logits` (B, R, C)
    cover every position when no text / region labels are given; `itm_logits` (B, 2), index 1 = match."""

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    object_loss: torch.FloatTensor | None = None
    attribute_loss: torch.FloatTensor | None = None
    relation_loss: torch.FloatTensor | None = None
    mrc_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    region_logits: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    visual_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_attentions: tuple[torch.FloatTensor, ...] | None = None
    visual_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[tuple[torch.FloatTensor, torch.FloatTensor], ...] | None = None


class ErnieVilPreTrainedModel(VilbertPreTrainedModel):
    config_class = ErnieVilConfig
    base_model_prefix = "ernie_vil"


class ErnieVilModel(ErnieVilPreTrainedModel, VilbertModel):
    """The ERNIE-ViL two-stream encoder (ViLBERT's `VilbertModel` under an ERNIE-ViL config). Inputs as ViLBERT's:
    `input_ids`, `token_type_ids` (the original's `sentence_ids`), `position_ids`, `attention_mask`, `visual_feats`
    (B, R, 2048) with the whole-image mean feature as region 0, `visual_pos` (B, R, 4) normalized boxes (the
    5-d location `[x1, y1, x2, y2, area]` is derived inside), `visual_attention_mask`."""


class ErnieVilForPreTraining(ErnieVilPreTrainedModel):
    """ERNIE-ViL with its pretraining objectives; each loss is computed when its labels are given.

    Text (all (B, T) token ids at masked positions, -100 elsewhere; one shared MLM head predicts every masked word,
    paper Sec. 3.2):
      - `labels`: masked language modelling on randomly masked words;
      - `object_labels`: object prediction — words of scene-graph objects, masked;
      - `attribute_labels`: attribute prediction — attribute words of object-attribute pairs, masked;
      - `relation_labels`: relationship prediction — relation words of (subject, relation, object) triplets, masked.
      `SceneGraphTargetBuilder` makes them from captions.
    Image: `region_mask` (B, R) + `region_soft_labels` (B, R, class_size) detector distributions (KL, the original's
    `use_soft_label=True`) and/or `region_class_labels` (B, R) (cross-entropy): masked region classification.
    Matching: `itm_labels` (B,) 1 = the caption describes the image.
    """

    _tied_weights_keys = {"mlm_head.decoder.weight": "ernie_vil.embeddings.word_embeddings.weight"}

    def __init__(self, config: ErnieVilConfig):
        super().__init__(config)
        self.ernie_vil = ErnieVilModel(config)
        self.mlm_head = MaskedLMHead(config.hidden_size, config.vocab_size, config.hidden_act, config.layer_norm_eps)
        self.region_head = VilbertRegionHead(config)
        self.itm_head = nn.Linear(config.co_hidden_size, 2)
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
        region_mask=None,
        inputs_embeds=None,
        labels=None,
        object_labels=None,
        attribute_labels=None,
        relation_labels=None,
        region_soft_labels=None,
        region_class_labels=None,
        itm_labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> ErnieVilForPreTrainingOutput:
        config = self.config
        has_region_labels = region_soft_labels is not None or region_class_labels is not None
        if has_region_labels and region_mask is None:
            raise ValueError("masked region labels were given without `region_mask` (B, R) marking the masked regions.")
        outputs = self.ernie_vil(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            region_mask=region_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        result = ErnieVilForPreTrainingOutput(**stream_outputs(outputs))
        weighted = []

        text_labels = {
            "mlm": (labels, config.mlm_weight),
            "object": (object_labels, config.object_weight),
            "attribute": (attribute_labels, config.attribute_weight),
            "relation": (relation_labels, config.relation_weight),
        }
        given = {name: value for name, value in text_labels.items() if value[0] is not None}
        if given:
            # one pass of the MLM head over every position some objective predicts
            shape = outputs.text_hidden_state.shape[:2]
            for name, (value, _) in given.items():
                if value.shape != shape:
                    raise ValueError(
                        f"`{name if name == 'mlm' else name + '_'}labels` must have shape {tuple(shape)}, got {tuple(value.shape)}."
                    )
            predicted = torch.zeros(shape, dtype=torch.bool, device=outputs.text_hidden_state.device)
            for value, _ in given.values():
                predicted |= value != -100
            logits = self.mlm_head(outputs.text_hidden_state[predicted])
            for name, (value, weight) in given.items():
                loss = masked_cross_entropy(logits, value[predicted])
                setattr(result, f"{name}_loss", loss)
                weighted.append(weight * loss)
            result.mlm_logits = logits
        else:
            result.mlm_logits = self.mlm_head(outputs.text_hidden_state)

        visual_states = outputs.visual_hidden_state
        if has_region_labels:
            masked = region_mask.bool()
            if visual_attention_mask is not None:
                masked = masked & visual_attention_mask.bool()
            result.region_logits = self.region_head(visual_states[masked])
            losses = []
            if region_soft_labels is not None:
                losses.append(region_kl_loss(result.region_logits, region_soft_labels[masked]))
            if region_class_labels is not None:
                losses.append(masked_cross_entropy(result.region_logits, region_class_labels[masked]))
            result.mrc_loss = torch.stack(losses).sum()
            weighted.append(config.mrc_weight * result.mrc_loss)
        else:
            result.region_logits = self.region_head(visual_states)

        result.itm_logits = self.itm_head(self.dropout(outputs.pooler_output))
        if itm_labels is not None:
            result.itm_loss = masked_cross_entropy(result.itm_logits, itm_labels)
            weighted.append(config.itm_weight * result.itm_loss)

        if weighted:
            result.loss = torch.stack(weighted).sum()
        return result


class ErnieVilForMultipleChoice(ErnieVilPreTrainedModel, VilbertForMultipleChoice):
    """VCR Q->A / QA->R (`create_vcr_model`): Linear(co_hidden, 1) (`<task_prefix>_fc`) on the fused pooled vector of
    each (question + choice, image) pair, softmax over the choices. Inputs and labels as `VilbertForMultipleChoice`."""

    backbone_class = ErnieVilModel


class ErnieVilForVisualQuestionAnswering(ErnieVilPreTrainedModel, VilbertForVisualQuestionAnswering):
    """VQA (`create_vqa_model`): Linear(co_hidden, vqa_hidden_size) + ReLU + dropout 0.5 + Linear(num_labels) on the
    fused pooled vector (`vqa_fc_w_0/b_0`, `vqa_fc_w_1/b_1`; no LayerNorm, unlike ViLBERT's head). `labels`: (B,
    num_labels) soft scores or (B,) answer ids; sigmoid cross-entropy summed over answers, averaged over examples."""

    backbone_class = ErnieVilModel

    def build_head(self, config):
        self.vqa_classifier = nn.Sequential(
            nn.Linear(config.co_hidden_size, config.vqa_hidden_size),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(config.vqa_hidden_size, config.num_labels),
        )

    def predict(self, outputs, inputs, layout):
        return self.vqa_classifier(outputs.pooler_output)


class ErnieVilForImageTextRetrieval(ErnieVilPreTrainedModel, VilbertForImageTextRetrieval):
    """Flickr30k retrieval (`create_flickr_model`): Linear(co_hidden, 1) (`match_fc`) on the fused pooled vector.

    Training: `labels` (B,) 1/0 -> BCE. With `group_size=G`, rows come in the original's groups: the matching pair
    first, then image negatives, then caption negatives (the first `(G + 1) // 2 - 1` negatives are images, as the
    original splits them); with `config.retrieval_loss="circle"` (default) the loss is the original's mean of the
    circle losses of the positive against the caption negatives and against the image negatives, on sigmoid scores
    (`config.circle_margin` 0.3, `config.circle_scale` 32); with "softmax", cross-entropy over each group."""

    backbone_class = ErnieVilModel

    def compute_loss(self, logits, labels, inputs, group_size=None):
        if group_size is None or self.config.retrieval_loss != "circle":
            return super().compute_loss(logits, labels, inputs, group_size=group_size)
        if labels is not None:
            raise ValueError(
                "with retrieval_loss='circle' the positive is the first row of each group (the original's layout): "
                "pass `group_size` without `labels`"
            )
        scores = grouped_scores(logits, group_size).sigmoid()
        split = (int(group_size) + 1) // 2  # columns 1 .. split-1: image negatives; split ..: caption negatives
        if split < 2 or split >= group_size:
            raise ValueError(
                f"group_size={group_size} leaves no image or no caption negative: the circle loss needs the positive, "
                "at least one image negative and at least one caption negative per group (group_size >= 3)"
            )
        positive = scores[:, :1]
        margin, scale = self.config.circle_margin, self.config.circle_scale
        caption_loss = circle_loss(positive, scores[:, split:], margin, scale)
        image_loss = circle_loss(positive, scores[:, 1:split], margin, scale)
        return (caption_loss + image_loss) / 2


class ErnieVilForReferringExpression(ErnieVilPreTrainedModel, VilbertForReferringExpression):
    """RefCOCO+ (`create_refcoco_plus_model`): Linear(v_hidden, 1) (`cls_seq_label_vl_out`) on each final visual
    state; padded regions get the dtype's lowest score. Labels as `VilbertForReferringExpression`."""

    backbone_class = ErnieVilModel


__all__ = [
    "ErnieVilForImageTextRetrieval",
    "ErnieVilForMultipleChoice",
    "ErnieVilForPreTraining",
    "ErnieVilForReferringExpression",
    "ErnieVilForVisualQuestionAnswering",
    "ErnieVilModel",
    "ErnieVilPreTrainedModel",
]
