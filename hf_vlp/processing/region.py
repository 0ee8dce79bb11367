"""The region-feature processor shared by every region-based model (UNITER, ViLBERT, Oscar, LXMERT, VisualBERT ...).

Takes per-image detector outputs — features (N_i, D) and boxes (N_i, 4) `x1, y1, x2, y2` in pixels with the image
size, or already normalized to [0, 1] — and returns padded `visual_feats` (B, R, D), `visual_pos` (B, R, 4)
normalized boxes and `visual_attention_mask` (B, R), the inputs every hf_vlp region model takes (docs/design.md,
"Input vocabulary").
"""

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_base import ImageProcessingMixin
from transformers.image_processing_utils import BaseImageProcessor

# pixel boxes may stick out of the image by rounding in detector dumps; more than this is an error
PIXEL_TOLERANCE = 1.0


def _as_array(value, name, index, ndim):
    array = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=np.float32)
    if array.ndim != ndim:
        raise ValueError(f"`{name}[{index}]` must have {ndim} dimensions, got shape {array.shape}.")
    return array


class RegionFeatureProcessor(BaseImageProcessor):
    r"""
    Args:
        add_global_region: prepend a whole-image region (mean of the region features, box [0, 0, 1, 1]), as
            ViLBERT's data loaders do.
        max_regions: keep at most this many regions per image (after the global region), in the given order.
        normalize_boxes_by_image_size: pixel boxes are divided by (width, height); set False when boxes are given
            normalized already.
    """

    model_input_names = ["visual_feats", "visual_pos", "visual_attention_mask"]

    def __init__(self, add_global_region=False, max_regions=None, normalize_boxes_by_image_size=True, **kwargs):
        # BaseImageProcessor only for the Auto-class registry; its pixel pipeline does not apply to region features
        ImageProcessingMixin.__init__(self, **kwargs)
        self.add_global_region = add_global_region
        self.max_regions = max_regions
        self.normalize_boxes_by_image_size = normalize_boxes_by_image_size

    def __call__(self, visual_feats, boxes, image_sizes=None, return_tensors="pt", **extra_region_fields):
        """
        visual_feats: list of (N_i, D) arrays/tensors (or one (B, N, D) array).
        boxes: list of (N_i, 4) `x1, y1, x2, y2` arrays, in pixels, or in [0, 1] if the processor was built with
            `normalize_boxes_by_image_size=False`.
        image_sizes: list of (width, height), required for pixel boxes.
        extra_region_fields: per-region arrays (N_i, ...) padded alongside (e.g. `region_labels` with -100,
            `region_class_probs` with 0); the global region, if added, gets the padding value.
        """
        if visual_feats is None or boxes is None:
            raise ValueError("`visual_feats` and `boxes` are both required (one entry per image).")
        if len(visual_feats) != len(boxes):
            raise ValueError(f"got {len(visual_feats)} `visual_feats` entries but {len(boxes)} `boxes` entries.")
        if self.normalize_boxes_by_image_size:
            if image_sizes is None:
                raise ValueError(
                    "`image_sizes` [(width, height), ...] is required to normalize pixel boxes; pass it, or build "
                    "the processor with normalize_boxes_by_image_size=False for boxes already in [0, 1]."
                )
            if len(image_sizes) != len(boxes):
                raise ValueError(f"got {len(image_sizes)} `image_sizes` for {len(boxes)} images.")

        features, positions, extras = [], [], {name: [] for name in extra_region_fields}
        for i in range(len(boxes)):
            feats = _as_array(visual_feats[i], "visual_feats", i, 2)
            box = _as_array(boxes[i], "boxes", i, 2)
            if box.shape[-1] != 4:
                raise ValueError(f"`boxes[{i}]` must be (num_regions, 4) x1,y1,x2,y2, got shape {box.shape}.")
            if len(feats) != len(box):
                raise ValueError(f"image {i}: {len(feats)} region features but {len(box)} boxes.")
            box = self._normalize(box, image_sizes[i] if self.normalize_boxes_by_image_size else None, i)
            if self.add_global_region:
                feats = np.concatenate([feats.mean(0, keepdims=True) if len(feats) else feats[:1], feats])
                box = np.concatenate([np.array([[0, 0, 1, 1]], dtype=np.float32), box])
            features.append(feats[: self.max_regions])
            positions.append(box[: self.max_regions])
            for name, values in extra_region_fields.items():
                values = np.asarray(values[i])
                if len(values) != len(box) - int(self.add_global_region):
                    raise ValueError(f"image {i}: `{name}` has {len(values)} entries for {len(box)} regions.")
                if self.add_global_region:
                    values = np.concatenate([np.full_like(values[:1], _pad_value(values)), values])
                extras[name].append(values[: self.max_regions])

        dims = {f.shape[1] for f in features}
        if len(dims) > 1:
            raise ValueError(f"all images' `visual_feats` must have the same feature size, got {sorted(dims)}.")
        data = {
            "visual_feats": _pad(features, 0.0),
            "visual_pos": _pad(positions, 0.0),
            "visual_attention_mask": _pad([np.ones(len(f), dtype=np.int64) for f in features], 0),
        }
        for name, values in extras.items():
            data[name] = _pad(values, _pad_value(values[0]))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _normalize(self, box, image_size, index):
        if image_size is not None:
            width, height = float(image_size[0]), float(image_size[1])
            if width <= 0 or height <= 0:
                raise ValueError(f"`image_sizes[{index}]` must be a positive (width, height), got {image_size}.")
            limit = np.array([width, height, width, height], dtype=np.float32)
            if (box < -PIXEL_TOLERANCE).any() or (box > limit + PIXEL_TOLERANCE).any():
                raise ValueError(
                    f"`boxes[{index}]` has coordinates outside the {width:g}x{height:g} image (pixel x1,y1,x2,y2 "
                    f"expected): min {box.min():.1f}, max per column {box.max(0).tolist()}."
                )
            box = np.clip(box, 0, limit) / limit
        elif (box < 0).any() or (box > 1).any():
            raise ValueError(
                f"`boxes[{index}]` must be normalized to [0, 1] (normalize_boxes_by_image_size=False), got values in "
                f"[{box.min():.3f}, {box.max():.3f}]."
            )
        if (box[:, 2] < box[:, 0]).any() or (box[:, 3] < box[:, 1]).any():
            raise ValueError(f"`boxes[{index}]` must be x1,y1,x2,y2 with x2 >= x1 and y2 >= y1.")
        return box


def _pad_value(values):
    return -100 if np.issubdtype(np.asarray(values).dtype, np.integer) else 0.0


def _pad(arrays, value):
    """Right-pad a list of (N_i, ...) arrays to (B, max N, ...)."""
    longest = max((len(a) for a in arrays), default=0)
    first = np.asarray(arrays[0])
    out = np.full((len(arrays), longest, *first.shape[1:]), value, dtype=first.dtype)
    for i, array in enumerate(arrays):
        out[i, : len(array)] = array
    return out
