"""The bottom-up-attention Faster R-CNN (Anderson et al., CVPR 2018) in plain PyTorch, as released by unc-nlp
(`unc-nlp/frcnn-vg-finetuned`, the Hugging Face research-project port `lxmert/modeling_frcnn.py`).

ResNet C4 trunk (hf_vlp's shared ResNet, Caffe switches on) -> RPN (anchors read from the checkpoint) -> 14x14
RoIPool -> res5 with stride 1 and dilation 2 -> mean over the 14x14 map (the region feature) -> class, box and
attribute heads -> class-agnostic NMS over each proposal's best-class box, with the original's list of NMS
thresholds tried until `min_detections` boxes survive, then the first `max_detections`.

Everything after the trunk runs for the whole batch at once: NMS and RoIPool are the vectorised versions of
`box_ops` (equal to torchvision's CPU kernels), per-image differences (image sizes, proposal counts) are masks.
The only loop over images is in `extract_regions`, which runs one forward per group of equally sized images so that
no image is padded (padding changes border activations, so a padded batch is not the same as single images).

Every rounding rule and quirk reproduced here is listed in shared/fixtures/frcnn/README.md.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from hf_vlp.layers.resnet import Bottleneck, FrozenBatchNorm2d, ResNet, make_stage

from . import box_ops
from .configuration_bottom_up import BottomUpConfig


@dataclass
class BottomUpDetectorOutput(ModelOutput):
    r"""
    Per image, `max_detections` rows; rows at and after `num_detections[i]` are zeros.

    boxes: (B, D, 4) x1, y1, x2, y2 of the regressed best-class box, in raw-image pixels.
    normalized_boxes: (B, D, 4) `boxes` divided by the raw image's width / height (see
        `config.normalized_boxes_batch_bug`).
    object_ids, object_probs: (B, D) best foreground class (0..K-1) and its probability (softmax over K+1).
    attribute_ids, attribute_probs: (B, D) best attribute (0..M-1) and its probability (softmax over the M
        attribute logits, the "no attribute" column left out).
    class_probs: (B, D, K) the foreground columns of the K+1-way softmax (the background probability is
        `1 - class_probs.sum(-1)`): the detector's class distribution, MRC-KL's target.
    features: (B, D, C5) the pooled res5 feature of each selected proposal (the proposal box, not the regressed one).
    num_detections: (B,) rows that are detections.
    proposal_index: (B, D) index of each detection among the image's proposals, -1 on padding rows.
    nms_threshold: (B,) the NMS threshold that was used.
    image_sizes: (B, 2) resized (h, w) the detector saw; scales_yx: (B, 2) raw / resized.

    With `output_intermediates=True` also: `res4`, `rpn_objectness_logits`, `rpn_anchor_deltas`, `anchors`
    (h*w*A, 4), `proposals` (B, P, 4) and `proposal_logits` (B, P) sorted by logit, `num_proposals` (B,),
    `object_logits` (B, P, K+1), `attribute_logits` (B, P, M+1), `box_deltas` (B, P, 4K) and `proposal_features`
    (B, P, C5) for every proposal (zeros past `num_proposals`).
    """

    boxes: torch.Tensor | None = None
    normalized_boxes: torch.Tensor | None = None
    object_ids: torch.Tensor | None = None
    object_probs: torch.Tensor | None = None
    attribute_ids: torch.Tensor | None = None
    attribute_probs: torch.Tensor | None = None
    class_probs: torch.Tensor | None = None
    features: torch.Tensor | None = None
    num_detections: torch.Tensor | None = None
    proposal_index: torch.Tensor | None = None
    nms_threshold: torch.Tensor | None = None
    image_sizes: torch.Tensor | None = None
    scales_yx: torch.Tensor | None = None
    res4: torch.Tensor | None = None
    rpn_objectness_logits: torch.Tensor | None = None
    rpn_anchor_deltas: torch.Tensor | None = None
    anchors: torch.Tensor | None = None
    proposals: torch.Tensor | None = None
    proposal_logits: torch.Tensor | None = None
    num_proposals: torch.Tensor | None = None
    object_logits: torch.Tensor | None = None
    attribute_logits: torch.Tensor | None = None
    box_deltas: torch.Tensor | None = None
    proposal_features: torch.Tensor | None = None


def default_cell_anchors(sizes, aspect_ratios) -> torch.Tensor:
    """detectron2's `DefaultAnchorGenerator` cell anchors (size-major, centred on 0). Only the initial value of a
    fresh model: converted models carry the checkpoint's anchors (which need not be these)."""
    anchors = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            w = (area / ratio) ** 0.5
            h = ratio * w
            anchors.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(anchors, dtype=torch.float32)


def _pad_rows(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scatter flat rows (R, ...) into a zero (B, P, ...) tensor at the True places of `mask` (B, P)."""
    out = values.new_zeros(*mask.shape, *values.shape[1:])
    out[mask] = values
    return out


def _compact(keep: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the first `limit` True entries of each row of `keep` (B, N), in order, padded with 0, and the
    mask of real entries: the vectorised form of `nonzero()[:limit]` per row."""
    rank = keep.cumsum(-1)
    keep = keep & (rank <= limit)
    counts = keep.sum(-1)
    width = max(min(int(counts.max()) if counts.numel() else 0, limit), 0)
    order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices[..., :width]
    valid = torch.arange(width, device=keep.device)[None, :] < counts[:, None]
    return torch.where(valid, order, torch.zeros_like(order)), valid


class BottomUpRPN(nn.Module):
    """detectron2's `StandardRPNHead` (3x3 conv + ReLU, 1x1 objectness with one logit per anchor, 1x1 deltas) and the
    test-time proposal selection. `cell_anchors` (A, 4) is a buffer loaded from the checkpoint."""

    def __init__(self, config: BottomUpConfig):
        super().__init__()
        self.config = config
        channels, anchors = config.res4_channels, config.num_anchors
        self.conv = nn.Conv2d(channels, config.rpn_hidden_channels, 3, padding=1)
        self.objectness_logits = nn.Conv2d(config.rpn_hidden_channels, anchors, 1)
        self.anchor_deltas = nn.Conv2d(config.rpn_hidden_channels, 4 * anchors, 1)
        cell = torch.zeros(anchors, 4)
        if len(config.anchor_sizes) * len(config.anchor_aspect_ratios) == anchors:
            cell = default_cell_anchors(config.anchor_sizes, config.anchor_aspect_ratios)
        self.register_buffer("cell_anchors", cell)

    def forward(self, res4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.relu(self.conv(res4))
        return self.objectness_logits(hidden), self.anchor_deltas(hidden)

    def grid_anchors(self, height: int, width: int) -> torch.Tensor:
        """(height * width * A, 4): cell anchors shifted by (stride * column, stride * row), row-major, anchor last."""
        stride = self.config.feature_stride
        device = self.cell_anchors.device
        shift_x = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
        shift_y = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
        shift_y, shift_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
        return (shifts + self.cell_anchors.float().reshape(1, -1, 4)).reshape(-1, 4)

    def select_proposals(self, logits, deltas, anchors, image_sizes, nms_keep):
        """Top `rpn_pre_nms_topk` by logit, decode, clip to the resized image, drop boxes not wider / taller than
        `rpn_min_size`, NMS, keep the first `rpn_post_nms_topk`. Returns proposals (B, P, 4), their logits (B, P)
        and the mask of real ones (B, P)."""
        config = self.config
        batch, num_anchors = logits.shape[0], logits.shape[1]
        height, width = logits.shape[-2:]
        logits = logits.permute(0, 2, 3, 1).reshape(batch, -1).float()
        deltas = deltas.view(batch, num_anchors, 4, height, width).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4)
        top = min(config.rpn_pre_nms_topk, logits.shape[1])
        top_logits, order = torch.sort(logits, dim=1, descending=True, stable=True)
        top_logits, order = top_logits[:, :top], order[:, :top]
        boxes = box_ops.decode_boxes(
            deltas.float().gather(1, order[..., None].expand(-1, -1, 4)),
            anchors[order],
            config.rpn_bbox_reg_weights,
            config.box_scale_clamp,
        )
        boxes = box_ops.clip_boxes(boxes, image_sizes[:, 0:1], image_sizes[:, 1:2])
        valid = ((boxes[..., 2] - boxes[..., 0]) > config.rpn_min_size) & (
            (boxes[..., 3] - boxes[..., 1]) > config.rpn_min_size
        )
        keep = nms_keep(boxes, valid, config.rpn_nms_threshold, max_keep=config.rpn_post_nms_topk)
        index, real = _compact(keep, config.rpn_post_nms_topk)
        proposals = boxes.gather(1, index[..., None].expand(-1, -1, 4)) * real[..., None]
        proposal_logits = top_logits.gather(1, index) * real
        return proposals, proposal_logits, real


class BottomUpRoIHeads(nn.Module):
    """res5 on the pooled regions, mean over the pooled map, and the predictor: `cls_score` (K+1, background LAST),
    class-specific `bbox_pred` (4K, no background), and the attribute branch `attr_score(relu(fc_attr([feature,
    cls_embedding(argmax over all K+1 logits)])))` (M+1, "no attribute" last)."""

    def __init__(self, config: BottomUpConfig):
        super().__init__()
        width = config.num_groups * config.width_per_group * 8
        self.res5 = make_stage(
            config.res4_channels,
            config.feature_dim // 4,
            3,
            stride=config.res5_stride,
            dilation=config.res5_dilation,
            block="bottleneck",
            groups=config.num_groups,
            bottleneck_channels=width,
            stride_in_1x1=config.stride_in_1x1,
            norm="frozen",
            norm_eps=config.batch_norm_eps,
        )
        features = config.feature_dim
        self.cls_score = nn.Linear(features, config.num_classes + 1)
        self.bbox_pred = nn.Linear(features, 4 * config.num_classes)
        self.cls_embedding = nn.Embedding(config.num_classes + 1, config.class_embedding_dim)
        self.fc_attr = nn.Linear(features + config.class_embedding_dim, config.attribute_hidden_size)
        self.attr_score = nn.Linear(config.attribute_hidden_size, config.num_attributes + 1)

    def forward(self, pooled: torch.Tensor):
        features = self.res5(pooled).mean(dim=(2, 3))
        object_logits = self.cls_score(features)
        box_deltas = self.bbox_pred(features)
        embedded = self.cls_embedding(object_logits.argmax(-1))
        attribute_logits = self.attr_score(F.relu(self.fc_attr(torch.cat([features, embedded], dim=-1))))
        return features, object_logits, box_deltas, attribute_logits


class BottomUpPreTrainedModel(PreTrainedModel):
    config: BottomUpConfig
    config_class = BottomUpConfig
    base_model_prefix = "bottom_up"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["Bottleneck"]

    def _init_weights(self, module):
        # transformers calls this for modules that hold parameters or buffers themselves, so choices that depend on
        # a module's place are tags set by the parents (`init_std`, `zero_init`)
        if isinstance(module, nn.Conv2d):
            if hasattr(module, "init_std"):
                init.normal_(module.weight, std=module.init_std)
            else:
                init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=getattr(module, "init_std", self.config.initializer_range))
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, FrozenBatchNorm2d):
            (init.zeros_ if getattr(module, "zero_init", False) else init.ones_)(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
        elif isinstance(module, BottomUpRPN):
            config = self.config
            if len(config.anchor_sizes) * len(config.anchor_aspect_ratios) == config.num_anchors:
                init.copy_(module.cell_anchors, default_cell_anchors(config.anchor_sizes, config.anchor_aspect_ratios))

    def _tag_initialisation(self):
        """detectron2's initialisation of a fresh detector: RPN convs N(0, 0.01), class scores N(0, 0.01), box
        deltas N(0, 0.001); plus zero-gamma residuals (the last norm of every bottleneck starts at 0) so that a fresh
        100-layer trunk keeps its activation scale."""
        for conv in (self.rpn.conv, self.rpn.objectness_logits, self.rpn.anchor_deltas):
            conv.init_std = 0.01
        self.roi_heads.cls_score.init_std = 0.01
        self.roi_heads.bbox_pred.init_std = 0.001
        for module in self.modules():
            if isinstance(module, Bottleneck):
                module.bn3.zero_init = True


class BottomUpDetector(BottomUpPreTrainedModel):
    """Images in (`BottomUpImageProcessor`'s `pixel_values`, `image_sizes`, `scales_yx`), regions out
    (`BottomUpDetectorOutput`). `extract_regions(images)` does both steps for a list of images."""

    def __init__(self, config: BottomUpConfig):
        super().__init__(config)
        self.backbone = ResNet(
            "bottleneck",
            config.stage_blocks,
            stem_channels=config.stem_channels,
            base_channels=config.res2_channels // 4,
            groups=config.num_groups,
            bottleneck_channels=config.num_groups * config.width_per_group,
            stride_in_1x1=config.stride_in_1x1,
            caffe_stem_pool=config.caffe_max_pool,
            norm="frozen",
            norm_eps=config.batch_norm_eps,
            out_stages=("layer3",),
        )
        self.rpn = BottomUpRPN(config)
        self.roi_heads = BottomUpRoIHeads(config)
        self.use_reference_loops = False
        self._image_processor = None
        self._tag_initialisation()
        self.post_init()

    # -- the two operations with a straightforward loop twin ------------------------------------------------------

    def _nms(self, boxes, valid, thresholds, max_keep=None):
        nms = box_ops.nms_keep_loop if self.use_reference_loops else box_ops.nms_keep
        return nms(boxes, valid, thresholds, max_keep=max_keep)

    def pool_regions(self, res4: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """RoIPool (R, 5) `batch_index, x1, y1, x2, y2` boxes in resized pixels from res4 -> (R, C4, S, S)."""
        size = (self.config.pooler_resolution, self.config.pooler_resolution)
        pool = box_ops.roi_pool_loop if self.use_reference_loops else box_ops.roi_pool
        return pool(res4, rois.float(), size, 1.0 / self.config.feature_stride)

    @contextlib.contextmanager
    def reference_loops(self, enabled: bool = True):
        """Run NMS and RoIPool as straightforward per-box loops inside the block (the benchmark's baseline)."""
        previous, self.use_reference_loops = self.use_reference_loops, enabled
        try:
            yield self
        finally:
            self.use_reference_loops = previous

    # -- forward ----------------------------------------------------------------------------------------------------

    def _check_inputs(self, pixel_values, image_sizes, scales_yx):
        if not torch.is_tensor(pixel_values) or pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a (batch, 3, height, width) tensor, got {shape}")
        batch, _, height, width = pixel_values.shape
        if image_sizes is None:
            image_sizes = torch.tensor([[height, width]] * batch, dtype=torch.int64)
        image_sizes = torch.as_tensor(image_sizes).to(device=pixel_values.device, dtype=torch.int64)
        if image_sizes.shape != (batch, 2):
            raise ValueError(f"image_sizes must be (batch, 2) = ({batch}, 2), got {tuple(image_sizes.shape)}")
        if (image_sizes < 1).any() or (image_sizes[:, 0] > height).any() or (image_sizes[:, 1] > width).any():
            raise ValueError(f"image_sizes must lie in 1..({height}, {width}) (the padded size), got {image_sizes}")
        if scales_yx is None:
            scales_yx = torch.ones(batch, 2)
        scales_yx = torch.as_tensor(scales_yx).to(device=pixel_values.device, dtype=torch.float32)
        if scales_yx.shape != (batch, 2):
            raise ValueError(f"scales_yx must be (batch, 2) = ({batch}, 2), got {tuple(scales_yx.shape)}")
        return image_sizes, scales_yx

    def forward(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        scales_yx: torch.Tensor | None = None,
        output_intermediates: bool = False,
        return_dict: bool | None = None,
    ) -> BottomUpDetectorOutput | tuple:
        r"""
        pixel_values: (B, 3, H, W) BGR images minus the Caffe means, padded bottom / right (`BottomUpImageProcessor`).
        image_sizes: (B, 2) resized (h, w) of each image before padding (default: the padded size).
        scales_yx: (B, 2) raw / resized size (default: ones, i.e. boxes in the input's pixels).
        output_intermediates: also return the RPN, proposal and per-proposal head outputs.
        """
        config = self.config
        return_dict = return_dict if return_dict is not None else config.return_dict
        image_sizes, scales_yx = self._check_inputs(pixel_values, image_sizes, scales_yx)
        batch = pixel_values.shape[0]

        res4 = self.backbone(pixel_values)["layer3"]
        rpn_logits, rpn_deltas = self.rpn(res4)
        anchors = self.rpn.grid_anchors(*res4.shape[-2:])
        proposals, proposal_logits, real = self.rpn.select_proposals(
            rpn_logits, rpn_deltas, anchors, image_sizes, self._nms
        )

        # every proposal of every image through the RoI head at once
        image_index = torch.arange(batch, device=real.device)[:, None].expand_as(real)
        rois = torch.cat([image_index[real][:, None].float(), proposals[real]], dim=1)
        flat_features, flat_logits, flat_deltas, flat_attr = self.roi_heads(self.pool_regions(res4, rois))
        features = _pad_rows(flat_features, real)
        object_logits = _pad_rows(flat_logits.float(), real)
        box_deltas = _pad_rows(flat_deltas.float(), real)
        attribute_logits = _pad_rows(flat_attr.float(), real)

        detections = self._select_detections(
            proposals, real, features, object_logits, box_deltas, attribute_logits, image_sizes, scales_yx
        )
        output = BottomUpDetectorOutput(**detections, image_sizes=image_sizes, scales_yx=scales_yx)
        if output_intermediates:
            output.res4 = res4
            output.rpn_objectness_logits = rpn_logits
            output.rpn_anchor_deltas = rpn_deltas
            output.anchors = anchors
            output.proposals = proposals
            output.proposal_logits = proposal_logits
            output.num_proposals = real.sum(-1)
            output.object_logits = object_logits
            output.attribute_logits = attribute_logits
            output.box_deltas = box_deltas
            output.proposal_features = features
        return output if return_dict else output.to_tuple()

    def _select_detections(
        self, proposals, real, features, object_logits, box_deltas, attribute_logits, image_sizes, scales_yx
    ) -> dict:
        """The original's `ROIOutputs` + `do_nms`, for the whole batch: best foreground class per proposal and its
        clipped regressed box, class-agnostic NMS by that class's probability with the thresholds tried in order
        (the first that leaves >= min_detections; the last one if none does), the first `max_detections`."""
        config = self.config
        batch, num_props = real.shape
        num_classes = config.num_classes
        class_probs = F.softmax(object_logits, dim=-1)[..., :-1]
        object_probs, object_ids = class_probs.max(dim=-1)
        deltas = box_deltas.view(batch, num_props, num_classes, 4)
        deltas = deltas.gather(2, object_ids[..., None, None].expand(-1, -1, 1, 4)).squeeze(2)
        boxes = box_ops.decode_boxes(deltas, proposals, config.bbox_reg_weights, config.box_scale_clamp)
        boxes = box_ops.clip_boxes(boxes, image_sizes[:, 0:1], image_sizes[:, 1:2])
        # attributes: softmax over the M real attributes, the "no attribute" column dropped BEFORE the softmax
        attribute_probs, attribute_ids = F.softmax(attribute_logits[..., :-1], dim=-1).max(dim=-1)

        scores = object_probs.masked_fill(~real, float("-inf"))
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
        sorted_boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        sorted_real = real.gather(1, order)
        thresholds = config.nms_thresholds
        keeps = self._nms(sorted_boxes, sorted_real, thresholds, max_keep=config.max_detections)  # (T, B, P)
        enough = keeps.sum(-1) >= config.min_detections  # (T, B)
        choice = torch.where(enough.any(0), enough.to(torch.int64).argmax(0), len(thresholds) - 1)
        keep = keeps.gather(0, choice[None, :, None].expand(1, batch, num_props)).squeeze(0)
        position, selected = _compact(keep, config.max_detections)
        index = order.gather(1, position)  # proposal index of each detection, in output order

        limit = config.max_detections

        def pick(values):
            chosen = values.gather(
                1, index.view(batch, -1, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
            )
            chosen = chosen * selected.view(batch, -1, *([1] * (values.dim() - 2))).to(chosen.dtype)
            pad = limit - chosen.shape[1]
            return F.pad(chosen, [0, 0] * (values.dim() - 2) + [0, pad]) if pad else chosen

        raw_boxes = pick(boxes) * scales_yx[:, None, [1, 0, 1, 0]]
        raw_sizes = image_sizes.to(torch.float32) * scales_yx  # (B, 2) raw (h, w)
        normalized = raw_boxes.clone()
        if config.normalized_boxes_batch_bug:
            if batch > 2:
                raise ValueError(
                    "normalized_boxes_batch_bug reproduces the original's broadcasting, which only runs for batches of "
                    f"1 or 2 images; got {batch}"
                )
            normalized[:, :, (0, 2)] /= raw_sizes[:, 1]
            normalized[:, :, (1, 3)] /= raw_sizes[:, 0]
        else:
            normalized[..., 0::2] /= raw_sizes[:, None, 1:2]
            normalized[..., 1::2] /= raw_sizes[:, None, 0:1]
        proposal_index = torch.where(selected, index, torch.full_like(index, -1))
        return dict(
            boxes=raw_boxes,
            normalized_boxes=normalized,
            object_ids=pick(object_ids),
            object_probs=pick(object_probs),
            attribute_ids=pick(attribute_ids),
            attribute_probs=pick(attribute_probs),
            class_probs=pick(class_probs),
            features=pick(features),
            num_detections=selected.sum(-1),
            proposal_index=F.pad(proposal_index, [0, limit - proposal_index.shape[1]], value=-1),
            nms_threshold=torch.tensor(thresholds, dtype=torch.float32, device=choice.device)[choice],
        )

    # -- images in, regions out ------------------------------------------------------------------------------------

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    @property
    def detector_name(self) -> str:
        """What produced the features: the checkpoint's name or path when loaded, else the model type."""
        return getattr(self.config, "_name_or_path", "") or self.config.model_type

    @property
    def image_processor(self):
        """The preprocessing of this detector (from its config unless one was attached with `image_processor = ...`)."""
        if self._image_processor is None:
            from .image_processing_bottom_up import BottomUpImageProcessor

            self._image_processor = BottomUpImageProcessor.from_detector_config(self.config)
        return self._image_processor

    @image_processor.setter
    def image_processor(self, processor):
        self._image_processor = processor

    @torch.no_grad()
    def extract_regions(self, images, batch_size: int = 8) -> list[dict]:
        """Regions of each image: a list (one dict per image, in order) with `features` (R, D) float32, `boxes`
        (R, 4) x1 y1 x2 y2 in raw-image pixels, `normalized_boxes` (R, 4) in [0, 1], `image_size` (h, w) of the raw
        image, `class_probs` (R, K), `object_ids`, `object_probs`, `attribute_ids`, `attribute_probs` (R,).

        Images are PIL images, arrays or paths (`BottomUpImageProcessor`). Images of the same resized size run
        together, up to `batch_size` at a time; images of different sizes run separately, so no image is ever
        padded and each result equals the image's result alone.
        """
        if isinstance(images, (str, bytes)) or not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            return []
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        processor = self.image_processor
        arrays = [processor.to_rgb_array(image, index) for index, image in enumerate(images)]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, array in enumerate(arrays):
            groups.setdefault(processor.resized_size(*array.shape[:2]), []).append(index)
        results: list[dict | None] = [None] * len(arrays)
        device = next(self.parameters()).device
        for indices in groups.values():  # one loop over image sizes: sizes differ, so these cannot share a batch
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                inputs = processor([arrays[i] for i in chunk], return_tensors="pt")
                output = self(
                    pixel_values=inputs["pixel_values"].to(device=device, dtype=next(self.parameters()).dtype),
                    image_sizes=inputs["image_sizes"].to(device),
                    scales_yx=inputs["scales_yx"].to(device),
                )
                for row, index in enumerate(chunk):
                    count = int(output.num_detections[row])
                    results[index] = {
                        "features": output.features[row, :count].float().cpu(),
                        "boxes": output.boxes[row, :count].float().cpu(),
                        "normalized_boxes": output.normalized_boxes[row, :count].float().cpu(),
                        "image_size": tuple(int(v) for v in arrays[index].shape[:2]),
                        "class_probs": output.class_probs[row, :count].float().cpu(),
                        "object_ids": output.object_ids[row, :count].cpu(),
                        "object_probs": output.object_probs[row, :count].float().cpu(),
                        "attribute_ids": output.attribute_ids[row, :count].cpu(),
                        "attribute_probs": output.attribute_probs[row, :count].float().cpu(),
                    }
        return results


__all__ = ["BottomUpDetector", "BottomUpDetectorOutput", "BottomUpPreTrainedModel", "default_cell_anchors"]
