"""CPT's box conventions: RefCOCO's inclusive `x + w - 1` ends, its IoU, the 6-d region geometry appended to each
detector feature, and the overlapping pairs VG paints."""

from __future__ import annotations

import random

import numpy as np


def finite_boxes(boxes, dtype=np.float64, name: str = "boxes") -> np.ndarray:
    """`boxes` as an (N, 4) array of `dtype`; NaN or infinite coordinates are an error."""
    array = np.array(boxes, dtype=dtype).reshape(-1, 4)
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(1))[0])
        raise ValueError(f"`{name}[{bad}]` = {array[bad].tolist()} contains NaN or infinite coordinates.")
    return array


def xywh_to_cpt_xyxy(boxes_xywh) -> np.ndarray:
    """RefCOCO candidates `[x, y, w, h]` -> `[x, y, x + w - 1, y + h - 1]` (`RefCoCoDataset.__getitem__`)."""
    boxes = finite_boxes(boxes_xywh, name="boxes_xywh")
    boxes[:, 2] = boxes[:, 0] + boxes[:, 2] - 1
    boxes[:, 3] = boxes[:, 1] + boxes[:, 3] - 1
    return boxes


def cpt_iou_xywh(box1, box2) -> float:
    """CPT's `computeIoU` on `[x, y, w, h]` boxes (`Oscar/oscar/utils/iou.py`): inclusive pixel ends (`x + w - 1`),
    intersection counted only when strictly positive in both axes."""
    inter_x1, inter_y1 = max(box1[0], box2[0]), max(box1[1], box2[1])
    inter_x2 = min(box1[0] + box1[2] - 1, box2[0] + box2[2] - 1)
    inter_y2 = min(box1[1] + box1[3] - 1, box2[1] + box2[3] - 1)
    inter = (inter_x2 - inter_x1 + 1) * (inter_y2 - inter_y1 + 1) if inter_x1 < inter_x2 and inter_y1 < inter_y2 else 0
    return float(inter) / (box1[2] * box1[3] + box2[2] * box2[3] - inter)


def rect_to_xywh(rect_xyxy) -> list[float]:
    """A painted rect `[x1, y1, x2, y2]` (inclusive ends) -> `[x, y, w, h]`, as the evaluation code converts it."""
    return [rect_xyxy[0], rect_xyxy[1], rect_xyxy[2] - rect_xyxy[0] + 1, rect_xyxy[3] - rect_xyxy[1] + 1]


def region_geometry(boxes_xyxy, width: float, height: float) -> np.ndarray:
    """The 6 values CPT appends to each 2048-d region feature (`# modify features` block of
    `engine/inference_ref.py`): `[x1/W, y1/H, x2/W, y2/H, (x2-x1)/W, (y2-y1)/H]`, float32 (N, 6)."""
    boxes = finite_boxes(boxes_xyxy, np.float32, "boxes_xyxy")
    scale = np.array([width, height, width, height], dtype=np.float32)
    normalized = boxes / scale
    return np.concatenate([normalized, normalized[:, 2:] - normalized[:, :2]], axis=1).astype(np.float32)


def overlapping_pairs(boxes_xyxy) -> list[tuple[int, int]]:
    """Ordered pairs `(i, j)`, `i < j`, whose boxes overlap with maskrcnn's `+1` pixel convention (IoU > 0), in
    row-major order — the pairs `VGDataset` paints (before its `random.seed(0)` shuffle)."""
    boxes = finite_boxes(boxes_xyxy, np.float32, "boxes_xyxy")
    inter_w = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0]) + 1
    inter_h = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1]) + 1
    overlap = (inter_w > 0) & (inter_h > 0)
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(overlap)) if i < j]


def shuffled_like_vg_dataset(pairs: list, seed: int = 0) -> list:
    """`VGDataset` shuffles its (whole) list of painted pairs with `random.seed(0); random.shuffle(...)`."""
    pairs = list(pairs)
    random.Random(seed).shuffle(pairs)
    return pairs
