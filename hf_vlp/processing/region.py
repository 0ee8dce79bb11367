"""The region-feature processor shared by every region-based model (UNITER, ViLBERT, Oscar, LXMERT, VisualBERT ...).

Takes per-image detector outputs — features (N_i, D) and boxes (N_i, 4) `x1, y1, x2, y2` in pixels with the image
size, or already normalized to [0, 1] — and returns padded `visual_feats` (B, R, D), `visual_pos` (B, R, 4)
normalized boxes and `visual_attention_mask` (B, R), the inputs every hf_vlp region model takes (docs/design.md,
"Input vocabulary"). Its saved config also records the features the model expects (`feature_dim`, `detector_name`,
`max_regions`) and how to rebuild the detector saved with the processor; images become region features in
`RegionTextProcessor` (hf_vlp/processing/vl_processor.py).
"""

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_base import ImageProcessingMixin
from transformers.image_processing_utils import BaseImageProcessor

# pixel boxes may stick out of the image by rounding in detector dumps; more than this is an error
PIXEL_TOLERANCE = 1.0
# per-region fields that hold ids (class / type / attribute ids): refused unless integral, padded with -100; so are
# fields named `*_ids` / `*_labels` and fields every image gives as integers
INTEGER_REGION_FIELDS = frozenset({"region_labels", "visual_token_type_ids", "obj_ids", "attr_ids"})


def _as_array(value, name, index, ndim=None, dtype=np.float32):
    """`value` as a numpy array; a `ValueError` naming `name[index]` for ragged, non-numeric or wrongly shaped input."""
    if torch.is_tensor(value):
        value = value.detach().cpu()
        value = value.float() if value.is_floating_point() else value  # numpy has no bfloat16
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}[{index}]` must be a numeric array (one row per region), got {error}.") from None
    if ndim is not None and array.ndim != ndim:
        raise ValueError(
            f"`{name}[{index}]` must have {ndim} dimensions, got shape {array.shape} (pass one array per image: "
            "wrap a single image's array in a list)."
        )
    return array


def _check_finite(array, name, index):
    """`ValueError` naming `name[index]` and the first non-finite entry (region, column)."""
    finite = np.isfinite(array)
    if not finite.all():
        where = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(
            f"`{name}[{index}]` holds {int((~finite).sum())} non-finite value(s) ({array[where]} at region "
            f"{where[0]}{f', column {where[1]}' if len(where) > 1 else ''}); fix or drop this image."
        )


def _check_max_regions(max_regions):
    if max_regions is not None and (
        isinstance(max_regions, bool) or not isinstance(max_regions, (int, np.integer)) or max_regions < 1
    ):
        raise ValueError(f"`max_regions` must be None (keep every region) or a positive int, got {max_regions!r}.")


class RegionFeatureProcessor(BaseImageProcessor):
    r"""
    Args:
        add_global_region: prepend a whole-image region (mean of the region features, box [0, 0, 1, 1]), as
            ViLBERT's data loaders do; an image without regions gets a zero feature vector there.
        max_regions: keep at most this many regions per image (the global region counts as one), in the given
            order; None keeps every region.
        normalize_boxes_by_image_size: pixel boxes are divided by (width, height); set False when boxes are given
            normalized already.
        feature_dim: the region feature size the model expects (its `visual_feat_dim`, ...); features of another
            size are a `ValueError` naming both sizes. None: not recorded (any size is passed on).
        detector_name: the detector whose features the model was trained on (e.g. "bottom-up-attention
            frcnn-vg-finetuned R101 2048-d"), recorded for the reader and named in errors.
        detector_class / detector_name_or_path: how a detector saved with the processor is rebuilt (the processor
            sets them when it saves its detector; `detector_name_or_path` None means the `detector/` subfolder of
            the saved processor).
    """

    model_input_names = ["visual_feats", "visual_pos", "visual_attention_mask"]

    def __init__(
        self,
        add_global_region=False,
        max_regions=None,
        normalize_boxes_by_image_size=True,
        feature_dim=None,
        detector_name=None,
        detector_class=None,
        detector_name_or_path=None,
        **kwargs,
    ):
        # BaseImageProcessor only for the Auto-class registry; its pixel pipeline does not apply to region features
        ImageProcessingMixin.__init__(self, **kwargs)
        _check_max_regions(max_regions)
        _check_feature_dim(feature_dim)
        self.add_global_region = add_global_region
        self.max_regions = max_regions
        self.normalize_boxes_by_image_size = normalize_boxes_by_image_size
        self.feature_dim = feature_dim
        self.detector_name = detector_name
        self.detector_class = detector_class
        self.detector_name_or_path = detector_name_or_path

    def check_feature_dim(self, dim, source="`visual_feats`"):
        """`ValueError` naming both sizes when `dim` differs from the recorded `feature_dim`."""
        _check_feature_dim(self.feature_dim)
        if self.feature_dim is not None and dim is not None and int(dim) != int(self.feature_dim):
            trained_on = f" ({self.detector_name})" if self.detector_name else ""
            raise ValueError(
                f"{source} has {int(dim)}-d region features but the model expects {int(self.feature_dim)}-d "
                f"features{trained_on}: use the detector the model was trained with, or a model whose feature size "
                f"is {int(dim)}."
            )

    def __call__(self, visual_feats, boxes, image_sizes=None, return_tensors="pt", **extra_region_fields):
        """
        visual_feats: list of (N_i, D) arrays/tensors (or one (B, N, D) array).
        boxes: list of (N_i, 4) `x1, y1, x2, y2` arrays, in pixels, or in [0, 1] if the processor was built with
            `normalize_boxes_by_image_size=False`.
        image_sizes: list of (width, height), required for pixel boxes.
        extra_region_fields: per-region arrays (N_i, ...) padded alongside (e.g. `region_labels` with -100,
            `region_class_probs` with 0); the global region, if added, gets the padding value. Id fields
            (`INTEGER_REGION_FIELDS`, names ending in `_ids` / `_labels`, or a field every image gives as integers)
            must hold integers.

        Every value is checked: non-finite features / boxes / sizes, boxes outside the image or with x2 < x1,
        non-integral ids and counts that do not match raise a `ValueError` naming the argument and the image index.
        An image with no regions is kept (all of its positions are padding); with `add_global_region` its whole-image
        region gets a zero feature vector, the mean of no features being undefined.
        """
        _check_max_regions(self.max_regions)
        if visual_feats is None or boxes is None:
            raise ValueError("`visual_feats` and `boxes` are both required (one entry per image).")
        if len(visual_feats) != len(boxes):
            raise ValueError(f"got {len(visual_feats)} `visual_feats` entries but {len(boxes)} `boxes` entries.")
        if len(boxes) == 0:
            raise ValueError("`visual_feats` and `boxes` are empty: pass one entry per image.")
        if self.normalize_boxes_by_image_size:
            if image_sizes is None:
                raise ValueError(
                    "`image_sizes` [(width, height), ...] is required to normalize pixel boxes; pass it, or build "
                    "the processor with normalize_boxes_by_image_size=False for boxes already in [0, 1]."
                )
            if len(image_sizes) != len(boxes):
                raise ValueError(f"got {len(image_sizes)} `image_sizes` for {len(boxes)} images.")
        for name, values in extra_region_fields.items():
            if values is None or len(values) != len(boxes):
                count = None if values is None else len(values)
                raise ValueError(f"`{name}` must have one entry per image ({len(boxes)}), got {count}.")

        features, positions, extras = [], [], {name: [] for name in extra_region_fields}
        for i in range(len(boxes)):
            feats = _as_array(visual_feats[i], "visual_feats", i, 2)
            box = _as_array(boxes[i], "boxes", i, 2)
            if box.shape[-1] != 4:
                raise ValueError(f"`boxes[{i}]` must be (num_regions, 4) x1,y1,x2,y2, got shape {box.shape}.")
            if len(feats) != len(box):
                raise ValueError(f"image {i}: {len(feats)} region features but {len(box)} boxes.")
            _check_finite(feats, "visual_feats", i)
            _check_finite(box, "boxes", i)
            num_regions = len(box)  # detector regions, before the whole-image one
            box = self._normalize(box, image_sizes[i] if self.normalize_boxes_by_image_size else None, i)
            if self.add_global_region:
                whole = feats.mean(0, keepdims=True) if num_regions else np.zeros((1, feats.shape[1]), feats.dtype)
                feats = np.concatenate([whole, feats])
                box = np.concatenate([np.array([[0, 0, 1, 1]], dtype=np.float32), box])
            features.append(feats[: self.max_regions])
            positions.append(box[: self.max_regions])
            for name, values in extra_region_fields.items():
                values = _as_array(values[i], name, i, dtype=None)
                if values.ndim == 0:
                    raise ValueError(f"`{name}[{i}]` must have one entry per region ({num_regions}), got a scalar.")
                if len(values) != num_regions:
                    raise ValueError(
                        f"image {i}: `{name}` has {len(values)} entries for {num_regions} regions (one per given "
                        "region; the whole-image region is added by the processor)."
                    )
                extras[name].append(values)

        dims = {f.shape[1] for f in features}
        if len(dims) > 1:
            raise ValueError(f"all images' `visual_feats` must have the same feature size, got {sorted(dims)}.")
        self.check_feature_dim(dims.pop())
        data = {
            "visual_feats": _pad(features, 0.0),
            "visual_pos": _pad(positions, 0.0),
            "visual_attention_mask": _pad([np.ones(len(f), dtype=np.int64) for f in features], 0),
        }
        for name, values in extras.items():
            values = _region_field(name, values, _is_id_field(name))
            if self.add_global_region:
                values = [np.concatenate([np.full_like(v[:1], _pad_value(v)), v]) for v in values]
            data[name] = _pad([v[: self.max_regions] for v in values], _pad_value(values[0]))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _normalize(self, box, image_size, index):
        if image_size is not None:
            size = _as_array(image_size, "image_sizes", index)
            if size.shape != (2,) or not np.isfinite(size).all() or (size <= 0).any():
                raise ValueError(
                    f"`image_sizes[{index}]` must be a finite, positive (width, height), got {image_size}."
                )
            width, height = float(size[0]), float(size[1])
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
        flipped = (box[:, 2] < box[:, 0]) | (box[:, 3] < box[:, 1])
        if flipped.any():
            region = int(np.argmax(flipped))
            raise ValueError(
                f"`boxes[{index}]` must be x1,y1,x2,y2 with x2 >= x1 and y2 >= y1; region {region} is "
                f"{box[region].tolist()} (x,y,w,h boxes must be converted first)."
            )
        return box


def _check_feature_dim(feature_dim):
    if feature_dim is not None and (
        isinstance(feature_dim, bool) or not isinstance(feature_dim, (int, np.integer)) or feature_dim < 1
    ):
        raise ValueError(f"`feature_dim` must be None or a positive int, got {feature_dim!r}.")


def _is_id_field(name):
    return name in INTEGER_REGION_FIELDS or name.endswith(("_ids", "_labels"))


def _region_field(name, arrays, integer):
    """One dtype per extra region field: int64 for id fields (`integer`, or every image gives integers; integral
    floats are accepted, others refused rather than truncated), float32 otherwise (never rounded to the dtype of
    the first image)."""
    kinds = {array.dtype.kind for array in arrays if array.size}
    if not kinds <= set("biuf"):
        raise ValueError(f"`{name}` must hold numbers, got arrays of dtype {sorted(str(a.dtype) for a in arrays)}.")
    integer = integer or (bool(kinds) and kinds <= set("biu"))
    trailing = {array.shape[1:] for array in arrays if array.size}
    if len(trailing) > 1:
        raise ValueError(f"`{name}` must have the same shape per region in every image, got {sorted(trailing)}.")
    trailing = trailing.pop() if trailing else arrays[0].shape[1:]
    converted = []
    for index, array in enumerate(arrays):
        if array.dtype.kind == "f":
            _check_finite(array, name, index)
            if integer and (array != np.round(array)).any():
                where = tuple(int(i) for i in np.argwhere(array != np.round(array))[0])
                raise ValueError(
                    f"`{name}[{index}]` must hold integer ids, got {array[where]} at region {where[0]}: ids are not "
                    "rounded or truncated."
                )
        array = array.reshape(0, *trailing) if array.size == 0 else array  # an image without regions
        converted.append(array.astype(np.int64 if integer else np.float32))
    return converted


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
