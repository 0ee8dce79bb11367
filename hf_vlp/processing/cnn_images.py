"""Images for the CNN-backbone models (UniT, SOHO, E2E-VLP) and the detection-target format their set losses read.

`CnnImageProcessor` does DETR's evaluation preprocessing: resize so that the shorter side is `shortest_edge` unless
the longer side would then exceed `longest_edge` (then the longer side is `longest_edge`), RGB / 255, ImageNet
mean / std, and zero padding bottom / right to the largest image of the batch (rounded up to a multiple of
`size_divisibility`), with `pixel_mask` (B, H, W) = 1 on real pixels.

Detection targets are one dict per image: `class_labels` (n,) int64, `boxes` (n, 4) float (cx, cy, w, h) normalized
by the image's own width and height (so resizing with a kept aspect ratio leaves them unchanged, and padding does not
touch them: the model predicts boxes relative to the unpadded image, as DETR), and optionally `attributes`
(n, max_attributes) int64 with -1 for "none". `coco_to_detection_target` makes one from COCO (x, y, w, h) pixel
boxes; `detection_target_from_row` from a `datasets` row.
"""

import math

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_base import ImageProcessingMixin
from transformers.image_processing_utils import BaseImageProcessor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_size(height, width, shortest_edge, longest_edge=None):
    """(height, width) after DETR's resize: the shorter side to `shortest_edge`, unless the longer side would then
    exceed `longest_edge`, in which case the shorter side shrinks so the longer one fits (rounded)."""
    size = shortest_edge
    if longest_edge is not None:
        short, long = min(height, width), max(height, width)
        if long / short * size > longest_edge:
            size = int(round(longest_edge * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def coco_to_detection_target(boxes, class_labels, image_size, attributes=None, iscrowd=None):
    """COCO (x, y, w, h) pixel boxes of an image of `image_size` (height, width) -> a detection target dict.

    Boxes are clipped to the image; crowd boxes and boxes left with no width or height are dropped (as DETR's
    COCO loader). Raises a `ValueError` naming the argument for wrongly shaped input.
    """
    height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"`image_size` must be a positive (height, width), got {tuple(image_size)}.")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) if len(boxes) else np.zeros((0, 4), np.float32)
    class_labels = np.asarray(class_labels, dtype=np.int64).reshape(-1)
    if class_labels.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"`class_labels` ({class_labels.shape[0]}) and `boxes` ({boxes.shape[0]}) must have one entry per object."
        )
    corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    corners[:, 0::2] = corners[:, 0::2].clip(0, width)
    corners[:, 1::2] = corners[:, 1::2].clip(0, height)
    keep = (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
    if iscrowd is not None:
        keep &= np.asarray(iscrowd).reshape(-1) == 0
    corners = corners[keep]
    centre = (corners[:, :2] + corners[:, 2:]) / 2
    extent = corners[:, 2:] - corners[:, :2]
    scale = np.array([width, height], dtype=np.float32)
    target = {
        "class_labels": torch.from_numpy(class_labels[keep]),
        "boxes": torch.from_numpy(np.concatenate([centre / scale, extent / scale], axis=1).astype(np.float32)),
    }
    if attributes is not None:
        attributes = np.asarray(attributes, dtype=np.int64)
        if attributes.ndim != 2 or attributes.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"`attributes` must be (objects, max_attributes) ids with -1 for none, got shape {attributes.shape}."
            )
        target["attributes"] = torch.from_numpy(attributes[keep])
    return target


def detection_target_from_row(row, image_size=None):
    """A detection target from a `datasets` row: either the Hub's object-detection layout (`objects` with `bbox`
    and `category`, optionally `attributes` / `iscrowd`) or COCO's (`annotations`: a list of dicts with `bbox` and
    `category_id`). The image size comes from `image_size`, else the row's `height` / `width`, else its `image`."""
    if image_size is None:
        if "height" in row and "width" in row:
            image_size = (row["height"], row["width"])
        elif "image" in row and hasattr(row["image"], "size"):
            image_size = (row["image"].size[1], row["image"].size[0])
        else:
            raise ValueError("`image_size` is required: the row has no `height` / `width` and no PIL `image`.")
    if "objects" in row:
        objects = row["objects"]
        return coco_to_detection_target(
            objects["bbox"],
            objects["category"],
            image_size,
            attributes=objects.get("attributes"),
            iscrowd=objects.get("iscrowd"),
        )
    if "annotations" in row:
        annotations = row["annotations"]
        return coco_to_detection_target(
            [a["bbox"] for a in annotations],
            [a["category_id"] for a in annotations],
            image_size,
            iscrowd=[a.get("iscrowd", 0) for a in annotations],
        )
    raise ValueError(f"the row has neither `objects` nor `annotations` (keys {sorted(row)}).")


def _to_array(image, index):
    """An image (PIL, HWC uint8 / float array, or CHW tensor in [0, 1]) as an RGB float32 HWC array in [0, 255]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if torch.is_tensor(image):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"`images[{index}]` as a tensor must be (3, height, width) in [0, 1], got {tuple(image.shape)}."
            )
        return image.detach().float().permute(1, 2, 0).cpu().numpy() * 255.0
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"`images[{index}]` must be an RGB image (height, width, 3), got shape {array.shape}.")
    return array.astype(np.float32) if array.dtype == np.uint8 else array.astype(np.float32) * 255.0


class CnnImageProcessor(BaseImageProcessor):
    r"""
    Args:
        shortest_edge: target length of the shorter side (DETR / UniT evaluation: 800); None keeps the size.
        longest_edge: cap of the longer side (1333); None for no cap.
        size_divisibility: pad the batch's height and width up to a multiple of this (0 or 1: no rounding).
        image_mean, image_std: per-channel normalisation of RGB in [0, 1] (ImageNet's).
        resample: PIL resampling filter (bilinear, torchvision's default for PIL images).
    """

    model_input_names = ["pixel_values", "pixel_mask"]

    def __init__(
        self,
        shortest_edge=800,
        longest_edge=1333,
        size_divisibility=0,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        resample=int(Image.Resampling.BILINEAR),
        **kwargs,
    ):
        ImageProcessingMixin.__init__(self, **kwargs)
        if shortest_edge is not None and shortest_edge < 1:
            raise ValueError(f"`shortest_edge` must be a positive int or None, got {shortest_edge!r}.")
        if longest_edge is not None and shortest_edge is not None and longest_edge < shortest_edge:
            raise ValueError(f"`longest_edge` ({longest_edge}) must be at least `shortest_edge` ({shortest_edge}).")
        if size_divisibility < 0:
            raise ValueError(f"`size_divisibility` must be >= 0, got {size_divisibility}.")
        self.shortest_edge = shortest_edge
        self.longest_edge = longest_edge
        self.size_divisibility = size_divisibility
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.resample = resample

    def resize(self, image):
        """A PIL / HWC array image resized by `resized_size` (float32 HWC in [0, 255])."""
        height, width = image.shape[:2]
        if self.shortest_edge is None:
            return image
        new_height, new_width = resized_size(height, width, self.shortest_edge, self.longest_edge)
        if (new_height, new_width) == (height, width):
            return image
        channels = [
            np.asarray(Image.fromarray(image[..., c]).resize((new_width, new_height), resample=self.resample))
            for c in range(3)
        ]
        return np.stack(channels, axis=-1).astype(np.float32)

    def pad(self, arrays):
        """Zero-pad CHW arrays bottom / right to one size; returns (pixel_values, pixel_mask) tensors."""
        height = max(a.shape[1] for a in arrays)
        width = max(a.shape[2] for a in arrays)
        if self.size_divisibility > 1:
            height = math.ceil(height / self.size_divisibility) * self.size_divisibility
            width = math.ceil(width / self.size_divisibility) * self.size_divisibility
        pixel_values = torch.zeros(len(arrays), 3, height, width)
        pixel_mask = torch.zeros(len(arrays), height, width, dtype=torch.long)
        for index, array in enumerate(arrays):
            pixel_values[index, :, : array.shape[1], : array.shape[2]] = torch.from_numpy(array)
            pixel_mask[index, : array.shape[1], : array.shape[2]] = 1
        return pixel_values, pixel_mask

    def __call__(self, images, annotations=None, return_tensors="pt"):
        """
        images: an image or a list of images (PIL, HWC uint8 array, or CHW float tensor in [0, 1]).
        annotations: optional, one per image: a detection target dict (`class_labels`, normalized cxcywh `boxes`),
            or a `datasets` row / COCO-style dict that `detection_target_from_row` reads (sized by the ORIGINAL
            image). Returned as `labels`, the list the set-prediction loss takes.

        Returns a `BatchFeature` with `pixel_values` (B, 3, H, W), `pixel_mask` (B, H, W) and, with annotations,
        `labels`.
        """
        if return_tensors not in ("pt", None):
            raise ValueError(f"`return_tensors` must be 'pt', got {return_tensors!r}.")
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("`images` is empty: pass at least one image.")
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        arrays, original_sizes = [], []
        for index, image in enumerate(images):
            array = _to_array(image, index)
            original_sizes.append(array.shape[:2])
            array = self.resize(array)
            arrays.append(((array / 255.0 - mean) / std).transpose(2, 0, 1).astype(np.float32))
        pixel_values, pixel_mask = self.pad(arrays)
        data = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
        if annotations is not None:
            if not isinstance(annotations, (list, tuple)) or len(annotations) != len(images):
                raise ValueError(f"`annotations` must be a list with one entry per image ({len(images)}).")
            data["labels"] = [
                dict(a) if "class_labels" in a and "boxes" in a else detection_target_from_row(a, original_sizes[i])
                for i, a in enumerate(annotations)
            ]
        return BatchFeature(data=data)


__all__ = [
    "CnnImageProcessor",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "coco_to_detection_target",
    "detection_target_from_row",
    "resized_size",
]
