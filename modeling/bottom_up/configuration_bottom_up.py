"""Configuration of the bottom-up-attention Faster R-CNN (Anderson et al. 2018) as released by unc-nlp
(`unc-nlp/frcnn-vg-finetuned`, the Hugging Face research-project port): ResNet-101 C4, 12-anchor RPN, 14x14 RoIPool
into a res5 head with stride 1 and dilation 2, 1600 object classes and 400 attributes.

Defaults are that released model with the selection settings of its public JSON config copy (800/1333 input,
NMS thresholds tried in order 0.5, 0.6, 0.7, 36 to 36 detections); see shared/fixtures/frcnn/README.md.
"""

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

# detectron2's ResNet depths -> bottleneck blocks per stage
RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@strict
class BottomUpConfig(PreTrainedConfig):
    r"""
    depth: ResNet depth (50, 101 or 152); res2..res4 form the trunk, res5 the RoI head.
    stem_channels: output channels of the 7x7 stem (64).
    res2_channels: output channels of res2 (256); doubled per stage, so res4 gives 4x and res5 (the region feature
        size) 8x this.
    num_groups, width_per_group: ResNeXt grouping; the res2 bottleneck width is `num_groups * width_per_group`,
        doubled per stage (detectron2's convention).
    stride_in_1x1: the stride of a stage's first block sits in its first 1x1 conv (Caffe / MSRA weights).
    caffe_max_pool: the stem max-pool is 3x3/2 with no padding and `ceil_mode=True` (Caffe pooling).
    batch_norm_eps: eps of every (frozen) batch norm.
    feature_stride: stride of res4 (16): the anchor grid step and 1 / the RoIPool scale.
    num_anchors: anchors per position; their boxes are a buffer read from the checkpoint (`anchor_sizes` and
        `anchor_aspect_ratios` only generate the initial value of a freshly built model).
    rpn_hidden_channels: width of the RPN's 3x3 conv (512).
    rpn_pre_nms_topk, rpn_post_nms_topk, rpn_nms_threshold, rpn_min_size: proposal selection at test time.
    pooler_resolution: RoIPool output size (14).
    res5_stride, res5_dilation: the res5 head; the released (Caffe) layout has stride 1 and dilation 2 in every block
        (`res5halve: false`).
    num_classes, num_attributes: object classes and attributes without background / "no attribute" (1600 / 400).
    class_embedding_dim, attribute_hidden_size: the attribute branch, `fc_attr([feature, embed(argmax class)])`.
    bbox_reg_weights, box_scale_clamp: the box coder of the RoI head (10, 10, 5, 5) and the clamp of dw / dh.
    nms_thresholds: class-agnostic NMS thresholds tried in order until at least `min_detections` boxes survive.
    min_detections, max_detections: box counts per image; outputs are padded to `max_detections` rows.
    normalized_boxes_batch_bug: reproduce the original's normalisation of a batch of two images (x1 of every image
        divided by image 0's width, x2 by image 1's; likewise y). Off: each image by its own size.
    min_size, max_size, pixel_mean, pixel_std, pad_value: the preprocessing (short side, long-side cap, BGR mean and
        std on the 0-255 scale, padding value after normalisation); `BottomUpImageProcessor` reads them.
    """

    model_type = "bottom_up_frcnn"

    depth: int = 101
    stem_channels: int = 64
    res2_channels: int = 256
    num_groups: int = 1
    width_per_group: int = 64
    stride_in_1x1: bool = True
    caffe_max_pool: bool = True
    batch_norm_eps: float = 1e-5
    feature_stride: int = 16
    num_anchors: int = 12
    anchor_sizes: list[float] | tuple[float, ...] = (64.0, 128.0, 256.0, 512.0)
    anchor_aspect_ratios: list[float] | tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_hidden_channels: int = 512
    rpn_pre_nms_topk: int = 6000
    rpn_post_nms_topk: int = 300
    rpn_nms_threshold: float = 0.7
    rpn_min_size: float = 0.0
    rpn_bbox_reg_weights: list[float] | tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    pooler_resolution: int = 14
    res5_stride: int = 1
    res5_dilation: int = 2
    num_classes: int = 1600
    num_attributes: int = 400
    class_embedding_dim: int = 256
    attribute_hidden_size: int = 512
    bbox_reg_weights: list[float] | tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    box_scale_clamp: float = math.log(1000.0 / 16)
    nms_thresholds: list[float] | tuple[float, ...] = (0.5, 0.6, 0.7)
    min_detections: int = 36
    max_detections: int = 36
    normalized_boxes_batch_bug: bool = False
    min_size: int = 800
    max_size: int = 1333
    pixel_mean: list[float] | tuple[float, ...] = (102.9801, 115.9465, 122.7717)
    pixel_std: list[float] | tuple[float, ...] = (1.0, 1.0, 1.0)
    pad_value: float = 0.0
    initializer_range: float = 0.01

    def __post_init__(self, **kwargs):
        if self.depth not in RESNET_DEPTHS:
            raise ValueError(f"`depth` must be one of {sorted(RESNET_DEPTHS)}, got {self.depth}")
        for name in ("anchor_sizes", "anchor_aspect_ratios", "rpn_bbox_reg_weights", "bbox_reg_weights"):
            setattr(self, name, [float(v) for v in getattr(self, name)])
        self.nms_thresholds = [float(v) for v in self.nms_thresholds]
        self.pixel_mean = [float(v) for v in self.pixel_mean]
        self.pixel_std = [float(v) for v in self.pixel_std]
        if len(self.rpn_bbox_reg_weights) != 4 or len(self.bbox_reg_weights) != 4:
            raise ValueError("`rpn_bbox_reg_weights` and `bbox_reg_weights` must have 4 entries (wx, wy, ww, wh)")
        if not self.nms_thresholds:
            raise ValueError("`nms_thresholds` must list at least one IoU threshold")
        if not 0 <= self.min_detections <= self.max_detections or self.max_detections < 1:
            raise ValueError(
                f"need 0 <= min_detections <= max_detections and max_detections >= 1, got "
                f"{self.min_detections} / {self.max_detections}"
            )
        if self.res2_channels % 4:
            raise ValueError(
                f"`res2_channels` must be a multiple of 4 (bottleneck expansion), got {self.res2_channels}"
            )
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError("`pixel_mean` and `pixel_std` must give 3 values (B, G, R)")
        super().__post_init__(**kwargs)

    @property
    def res4_channels(self) -> int:
        return self.res2_channels * 4

    @property
    def feature_dim(self) -> int:
        """The region feature size: res5's output channels (2048 for the released model)."""
        return self.res2_channels * 8

    @property
    def stage_blocks(self) -> tuple[int, ...]:
        return RESNET_DEPTHS[self.depth]


__all__ = ["BottomUpConfig", "RESNET_DEPTHS"]
