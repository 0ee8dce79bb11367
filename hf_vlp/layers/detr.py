"""DETR-style set prediction (Carion et al. 2020), written once for the CNN-backbone models (UniT, SOHO, E2E-VLP).

- `DetrAttention`: multi-head attention whose parameters are stored as `nn.MultiheadAttention` stores them
  (`in_proj_weight` / `in_proj_bias` packed q, k, v, then `out_proj`), so DETR / MMF checkpoints load one to one;
  the kernel is transformers' attention interface (SDPA by default, eager, flex...).
- `DetrEncoderLayer` / `DetrDecoderLayer` (post-norm or pre-norm, positions added to queries and keys only),
  `DetrEncoder`, and `DetrDecoder` which returns every layer's output after the decoder's final LayerNorm.
- `MLP` (the box head), `AttributeHead` (Visual Genome attributes conditioned on the object class).
- `HungarianMatcher` (`scipy.optimize.linear_sum_assignment` on class + L1 + GIoU costs) and `SetPredictionLoss`
  (class cross-entropy with a down-weighted no-object class, L1 and GIoU on matched boxes, the attribute loss, and
  the same on every auxiliary decoder layer).

Every tensor here is batch first: (batch, sequence, hidden). Padding masks follow transformers: 1 / True = a real
position. Boxes are (cx, cy, w, h) normalized to [0, 1] unless a name says `xyxy`.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN
from transformers.image_transforms import center_to_corners_format, corners_to_center_format
from transformers.loss.loss_for_object_detection import generalized_box_iou
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .attention import eager_attention_forward

__all__ = [
    "AttributeHead",
    "DetrAttention",
    "DetrDecoder",
    "DetrDecoderLayer",
    "DetrDecoderOutput",
    "DetrEncoder",
    "DetrEncoderLayer",
    "HungarianMatcher",
    "MLP",
    "SetPredictionLoss",
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "check_detection_labels",
    "generalized_box_iou",
]


def box_cxcywh_to_xyxy(boxes):
    """(cx, cy, w, h) -> (x1, y1, x2, y2), last dimension."""
    return center_to_corners_format(boxes)


def box_xyxy_to_cxcywh(boxes):
    """(x1, y1, x2, y2) -> (cx, cy, w, h), last dimension."""
    return corners_to_center_format(boxes)


def check_detection_labels(labels, batch_size, num_classes, max_attributes=None, argument="labels"):
    """Raise a `ValueError` naming `argument` unless `labels` is a list of `batch_size` dicts, each with
    `class_labels` (n,) in [0, num_classes) and `boxes` (n, 4) normalized (cx, cy, w, h): centres in [0, 1],
    0 < w, h <= 1; and, when `max_attributes` is given and `attributes` present, (n, max_attributes) ids (-1 = none).
    """
    if not isinstance(labels, (list, tuple)) or len(labels) != batch_size:
        got = type(labels).__name__ if not isinstance(labels, (list, tuple)) else f"{len(labels)} entries"
        raise ValueError(f"`{argument}` must be a list of {batch_size} dicts (one per image), got {got}.")
    tolerance = 1e-4
    for index, target in enumerate(labels):
        if not isinstance(target, dict) or "class_labels" not in target or "boxes" not in target:
            raise ValueError(f"`{argument}[{index}]` must be a dict with `class_labels` and `boxes`.")
        classes, boxes = target["class_labels"], target["boxes"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or classes.shape != boxes.shape[:1]:
            raise ValueError(
                f"`{argument}[{index}]`: `boxes` must be (n, 4) and `class_labels` (n,), got {tuple(boxes.shape)} "
                f"and {tuple(classes.shape)}."
            )
        if classes.numel() and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(
                f"`{argument}[{index}]['class_labels']` must be in [0, {num_classes}), got {classes.tolist()}."
            )
        if boxes.numel():
            centres, sizes = boxes[:, :2], boxes[:, 2:]
            if (
                not torch.isfinite(boxes).all()
                or (centres < -tolerance).any()
                or (centres > 1 + tolerance).any()
                or (sizes <= 0).any()
                or (sizes > 1 + tolerance).any()
            ):
                raise ValueError(
                    f"`{argument}[{index}]['boxes']` must be normalized (cx, cy, w, h) boxes (centres in [0, 1], "
                    f"0 < w, h <= 1; COCO pixel boxes go through `coco_to_detection_target`), got "
                    f"{[[round(float(v), 4) for v in box] for box in boxes[:4]]}."
                )
        if max_attributes is not None and "attributes" in target:
            attributes = target["attributes"]
            if attributes.shape != (boxes.shape[0], max_attributes):
                raise ValueError(
                    f"`{argument}[{index}]['attributes']` must be ({boxes.shape[0]}, {max_attributes}) attribute ids "
                    f"(-1 = none), got {tuple(attributes.shape)}."
                )


class DetrAttention(nn.Module):
    """Multi-head attention with `nn.MultiheadAttention`'s parameter layout and transformers' attention kernels.

    `config` (optional) supplies `_attn_implementation`; without it SDPA runs.
    """

    def __init__(self, hidden_size, num_heads, dropout=0.0, config=None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"`hidden_size` {hidden_size} is not a multiple of `num_heads` {num_heads}.")
        self.config = config
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.scaling = self.head_size**-0.5
        self.dropout = dropout
        self.is_causal = False
        self.in_proj_weight = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * hidden_size))
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, states, weight, bias):
        batch, length = states.shape[:2]
        return F.linear(states, weight, bias).view(batch, length, self.num_heads, self.head_size).transpose(1, 2)

    def forward(self, query, key, value, key_padding_mask=None, **kwargs):
        """`query` (B, Q, D), `key` / `value` (B, S, D), `key_padding_mask` (B, S) with 1 on real keys."""
        weights = self.in_proj_weight.chunk(3)
        biases = self.in_proj_bias.chunk(3)
        batch, query_len = query.shape[:2]
        query_states = self._heads(query, weights[0], biases[0])
        key_states = self._heads(key, weights[1], biases[1])
        value_states = self._heads(value, weights[2], biases[2])
        attention_mask = None
        if key_padding_mask is not None:
            attention_mask = torch.zeros(key_padding_mask.shape, dtype=query.dtype, device=query.device)
            attention_mask = attention_mask.masked_fill(~key_padding_mask.bool(), torch.finfo(query.dtype).min)
            attention_mask = attention_mask[:, None, None, :]
        implementation = getattr(self.config, "_attn_implementation", None) or "sdpa"
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, attention_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return self.out_proj(output.reshape(batch, query_len, -1)), attention_weights


def _with_position(states, position_embeddings):
    return states if position_embeddings is None else states + position_embeddings


class DetrEncoderLayer(GradientCheckpointingLayer):
    """Self-attention + feed-forward; positions are added to queries and keys, not values. `pre_norm` normalises
    before each block (DETR's `normalize_before`), otherwise after the residual (post-norm, DETR's default).
    Returns (hidden_states, attention weights)."""

    def __init__(self, hidden_size, num_heads, ffn_size, dropout=0.1, activation="relu", pre_norm=False, config=None):
        super().__init__()
        self.self_attn = DetrAttention(hidden_size, num_heads, dropout, config)
        self.linear1 = nn.Linear(hidden_size, ffn_size)
        self.linear2 = nn.Linear(ffn_size, hidden_size)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.activation = ACT2FN[activation]
        self.pre_norm = pre_norm

    def _feed_forward(self, states):
        return self.dropout(self.linear2(self.dropout(self.activation(self.linear1(states)))))

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None):
        if self.pre_norm:
            normed = self.norm1(hidden_states)
            query = _with_position(normed, position_embeddings)
            attended, weights = self.self_attn(query, query, normed, attention_mask)
            hidden_states = hidden_states + self.dropout(attended)
            return hidden_states + self._feed_forward(self.norm2(hidden_states)), weights
        query = _with_position(hidden_states, position_embeddings)
        attended, weights = self.self_attn(query, query, hidden_states, attention_mask)
        hidden_states = self.norm1(hidden_states + self.dropout(attended))
        return self.norm2(hidden_states + self._feed_forward(hidden_states)), weights


class DetrDecoderLayer(GradientCheckpointingLayer):
    """Self-attention over the queries, cross-attention to the memory, feed-forward. `query_position_embeddings`
    are added to the queries (and self-attention keys), `position_embeddings` to the memory keys.
    Returns (hidden_states, self-attention weights, cross-attention weights)."""

    def __init__(self, hidden_size, num_heads, ffn_size, dropout=0.1, activation="relu", pre_norm=False, config=None):
        super().__init__()
        self.self_attn = DetrAttention(hidden_size, num_heads, dropout, config)
        self.multihead_attn = DetrAttention(hidden_size, num_heads, dropout, config)
        self.linear1 = nn.Linear(hidden_size, ffn_size)
        self.linear2 = nn.Linear(ffn_size, hidden_size)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.norm3 = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.activation = ACT2FN[activation]
        self.pre_norm = pre_norm

    def _feed_forward(self, states):
        return self.dropout(self.linear2(self.dropout(self.activation(self.linear1(states)))))

    def forward(
        self,
        hidden_states,
        memory,
        memory_mask=None,
        position_embeddings=None,
        query_position_embeddings=None,
    ):
        memory_keys = _with_position(memory, position_embeddings)
        if self.pre_norm:
            normed = self.norm1(hidden_states)
            query = _with_position(normed, query_position_embeddings)
            attended, self_weights = self.self_attn(query, query, normed)
            hidden_states = hidden_states + self.dropout(attended)
            normed = self.norm2(hidden_states)
            attended, cross_weights = self.multihead_attn(
                _with_position(normed, query_position_embeddings), memory_keys, memory, memory_mask
            )
            hidden_states = hidden_states + self.dropout(attended)
            return hidden_states + self._feed_forward(self.norm3(hidden_states)), self_weights, cross_weights
        query = _with_position(hidden_states, query_position_embeddings)
        attended, self_weights = self.self_attn(query, query, hidden_states)
        hidden_states = self.norm1(hidden_states + self.dropout(attended))
        attended, cross_weights = self.multihead_attn(
            _with_position(hidden_states, query_position_embeddings), memory_keys, memory, memory_mask
        )
        hidden_states = self.norm2(hidden_states + self.dropout(attended))
        return self.norm3(hidden_states + self._feed_forward(hidden_states)), self_weights, cross_weights


class DetrEncoder(nn.Module):
    """`num_layers` encoder layers (`layers.N`); a final LayerNorm (`norm`) only with `pre_norm`, as DETR.
    Returns a `BaseModelOutput` (`hidden_states`: the input and every layer's output, when asked)."""

    def __init__(
        self, num_layers, hidden_size, num_heads, ffn_size, dropout=0.1, activation="relu", pre_norm=False, config=None
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            DetrEncoderLayer(hidden_size, num_heads, ffn_size, dropout, activation, pre_norm, config)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size) if pre_norm else None

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        position_embeddings=None,
        output_hidden_states=False,
        output_attentions=False,
    ):
        all_hidden, all_attentions = [], []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            # tensors positionally: reentrant gradient checkpointing sees only positional inputs
            hidden_states, weights = layer(hidden_states, attention_mask, position_embeddings)
            if output_attentions:
                all_attentions.append(weights)
        if self.norm is not None:
            hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        return BaseModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )


@dataclass
class DetrDecoderOutput(ModelOutput):
    """`intermediate_hidden_states` (num_layers, B, Q, D): every layer's output after the final LayerNorm (the last
    entry is the decoder's output); `hidden_states` (when asked): the queries' input and every layer's raw output;
    `attentions` / `cross_attentions` (when asked): per layer."""

    intermediate_hidden_states: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


class DetrDecoder(nn.Module):
    """`num_layers` decoder layers (`layers.N`) and a final LayerNorm (`norm`) applied to EVERY layer's output
    (DETR's `return_intermediate`, which feeds the auxiliary losses)."""

    def __init__(
        self, num_layers, hidden_size, num_heads, ffn_size, dropout=0.1, activation="relu", pre_norm=False, config=None
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            DetrDecoderLayer(hidden_size, num_heads, ffn_size, dropout, activation, pre_norm, config)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)

    def forward(
        self,
        hidden_states,
        memory,
        memory_mask=None,
        position_embeddings=None,
        query_position_embeddings=None,
        output_hidden_states=False,
        output_attentions=False,
    ):
        intermediate, all_hidden, self_attentions, cross_attentions = [], [], [], []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            hidden_states, self_weights, cross_weights = layer(
                hidden_states, memory, memory_mask, position_embeddings, query_position_embeddings
            )
            intermediate.append(self.norm(hidden_states))
            if output_attentions:
                self_attentions.append(self_weights)
                cross_attentions.append(cross_weights)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        return DetrDecoderOutput(
            intermediate_hidden_states=torch.stack(intermediate),
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(self_attentions) if output_attentions else None,
            cross_attentions=tuple(cross_attentions) if output_attentions else None,
        )


class MLP(nn.Module):
    """`num_layers` Linear layers (`layers.N`) with ReLU between them (DETR's box head)."""

    def __init__(self, input_size, hidden_size, output_size, num_layers):
        super().__init__()
        sizes = [input_size] + [hidden_size] * (num_layers - 1) + [output_size]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(sizes[:-1], sizes[1:]))

    def forward(self, hidden_states):
        for index, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states)
            if index < len(self.layers) - 1:
                hidden_states = F.relu(hidden_states)
        return hidden_states


class AttributeHead(nn.Module):
    """Visual Genome attribute scores from a box's hidden state and its object class (the Bottom-Up detector's
    attribute branch as UniT uses it): relu(linear2(linear1([hidden, class embedding]))). The class embedding table
    has `num_classes + 1` rows (the last = no object)."""

    def __init__(self, num_classes, num_attributes, hidden_size, class_embedding_size=256, intermediate_size=512):
        super().__init__()
        self.cls_embed = nn.Embedding(num_classes + 1, class_embedding_size)
        self.attr_linear1 = nn.Linear(hidden_size + class_embedding_size, intermediate_size)
        self.attr_linear2 = nn.Linear(intermediate_size, num_attributes)
        for module in (self.cls_embed, self.attr_linear1, self.attr_linear2):
            nn.init.normal_(module.weight, std=0.01)
        nn.init.zeros_(self.attr_linear1.bias)
        nn.init.zeros_(self.attr_linear2.bias)

    def forward(self, hidden_states, class_ids):
        joined = torch.cat([hidden_states, self.cls_embed(class_ids)], dim=-1)
        return F.relu(self.attr_linear2(self.attr_linear1(joined)))


class HungarianMatcher(nn.Module):
    """One-to-one matching of predictions to targets minimising
    `cost_class * -p(target class) + cost_bbox * L1(boxes) + cost_giou * -GIoU(boxes)` per image
    (`log_softmax=True` uses log-probabilities for the class cost, UniT's `use_bcl`)."""

    def __init__(self, cost_class=1.0, cost_bbox=1.0, cost_giou=1.0, log_softmax=False):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: `cost_class`, `cost_bbox` and `cost_giou` cannot all be 0.")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.log_softmax = log_softmax

    def cost_matrix(self, logits, boxes, target_classes, target_boxes):
        """(Q, n) matching cost of one image's Q predictions against its n targets."""
        probabilities = logits.log_softmax(-1) if self.log_softmax else logits.softmax(-1)
        cost = -self.cost_class * probabilities[:, target_classes]
        cost = cost + self.cost_bbox * torch.cdist(boxes, target_boxes, p=1)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes))
        return cost - self.cost_giou * giou

    @torch.no_grad()
    def forward(self, pred_logits, pred_boxes, labels):
        """`pred_logits` (B, Q, C+1), `pred_boxes` (B, Q, 4), `labels` a list of B target dicts. Returns B pairs
        (prediction indices, target indices), int64, of length min(Q, n)."""
        indices = []
        for logits, boxes, target in zip(pred_logits.float(), pred_boxes.float(), labels):
            if target["boxes"].shape[0] == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            cost = self.cost_matrix(logits, boxes, target["class_labels"], target["boxes"].float())
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices


class SetPredictionLoss(nn.Module):
    """DETR's set criterion on every decoder layer.

    Returns a dict of WEIGHTED losses: `loss_ce` (cross-entropy over num_classes + 1 classes, the no-object class
    weighted `eos_coef`, buffer `empty_weight`), `loss_bbox` (L1, sum over matched boxes / number of target boxes),
    `loss_giou` (1 - GIoU, same normalisation) and, with an `attribute_head` and targets carrying `attributes`,
    `loss_attr`; the last decoder layer's keys are bare, auxiliary layer k's end in `_k` (only when `aux_loss`).
    The number of target boxes is averaged over processes when torch.distributed runs, as DETR.
    """

    def __init__(
        self,
        num_classes,
        matcher,
        eos_coef=0.1,
        class_loss_coef=1.0,
        bbox_loss_coef=5.0,
        giou_loss_coef=2.0,
        attribute_loss_coef=1.0,
        attribute_head=None,
        max_attributes=16,
        aux_loss=True,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {
            "loss_ce": class_loss_coef,
            "loss_bbox": bbox_loss_coef,
            "loss_giou": giou_loss_coef,
            "loss_attr": attribute_loss_coef,
        }
        self.attribute_head = attribute_head
        self.max_attributes = max_attributes
        self.aux_loss = aux_loss
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def _num_boxes(self, labels, device):
        count = torch.tensor([float(sum(len(t["class_labels"]) for t in labels))], device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(count)
            count = count / torch.distributed.get_world_size()
        return torch.clamp(count, min=1).item()

    def attribute_loss(self, attribute_logits, target_attributes):
        """Bottom-Up's attribute loss: per box, 0.5 * cross-entropy of each of its valid attributes divided by their
        count, summed; averaged over the boxes with a non-zero loss."""
        num_attributes = attribute_logits.shape[-1]
        logits = attribute_logits.reshape(-1, 1, num_attributes).expand(-1, self.max_attributes, -1)
        targets = target_attributes.reshape(-1, self.max_attributes)
        valid = (targets >= 0).sum(1, keepdim=True).float()
        per_slot_weight = torch.where(valid > 0, valid.reciprocal(), torch.zeros_like(valid)).expand_as(targets)
        per_slot = 0.5 * F.cross_entropy(
            logits.reshape(-1, num_attributes), targets.reshape(-1), reduction="none", ignore_index=-1
        )
        per_box = (per_slot.view_as(targets) * per_slot_weight).sum(1)
        boxes_with_loss = int((per_box != 0).sum())
        if boxes_with_loss == 0:
            return (per_box * 0.0).sum()
        return (per_box / boxes_with_loss).sum()

    def layer_losses(self, logits, boxes, labels, num_boxes, hidden_states=None):
        indices = self.matcher(logits, boxes, labels)
        batch_index = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(logits.device)
        query_index = torch.cat([src for src, _ in indices]).to(logits.device)
        matched_classes = torch.cat(
            [t["class_labels"][tgt.to(t["class_labels"].device)] for t, (_, tgt) in zip(labels, indices)]
        ).to(logits.device)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch_index, query_index] = matched_classes
        losses = {
            "loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits.dtype))
        }
        matched_boxes = boxes[batch_index, query_index]
        target_boxes = torch.cat([t["boxes"][tgt.to(t["boxes"].device)] for t, (_, tgt) in zip(labels, indices)])
        target_boxes = target_boxes.to(matched_boxes)
        losses["loss_bbox"] = F.l1_loss(matched_boxes, target_boxes, reduction="none").sum() / num_boxes
        giou = torch.diag(
            generalized_box_iou(box_cxcywh_to_xyxy(matched_boxes.float()), box_cxcywh_to_xyxy(target_boxes.float()))
        )
        losses["loss_giou"] = (1 - giou).sum() / num_boxes
        if self.attribute_head is not None and hidden_states is not None and "attributes" in labels[0]:
            attribute_logits = self.attribute_head(hidden_states, target_classes)
            target_attributes = torch.full(
                (*logits.shape[:2], self.max_attributes), -1, dtype=torch.int64, device=logits.device
            )
            target_attributes[batch_index, query_index] = torch.cat(
                [t["attributes"][tgt.to(t["attributes"].device)] for t, (_, tgt) in zip(labels, indices)]
            ).to(logits.device)
            losses["loss_attr"] = self.attribute_loss(attribute_logits, target_attributes)
        return {name: value * self.weights[name] for name, value in losses.items()}

    def forward(self, layer_logits, layer_boxes, labels, layer_hidden_states=None):
        """`layer_logits` (L, B, Q, C+1), `layer_boxes` (L, B, Q, 4) sigmoid boxes, one entry per decoder layer (the
        last = the model's prediction), `labels` B target dicts, `layer_hidden_states` (L, B, Q, D) for attributes."""
        num_boxes = self._num_boxes(labels, layer_logits.device)
        num_layers = layer_logits.shape[0]
        losses = {}
        for layer in range(num_layers):
            last = layer == num_layers - 1
            if not (last or self.aux_loss):
                continue
            hidden = None if layer_hidden_states is None else layer_hidden_states[layer]
            layer_loss = self.layer_losses(layer_logits[layer], layer_boxes[layer], labels, num_boxes, hidden)
            suffix = "" if last else f"_{layer}"
            losses.update({name + suffix: value for name, value in layer_loss.items()})
        return losses
