"""Box arithmetic, NMS and RoIPool of the bottom-up-attention detector, in plain torch, vectorised.

Each operation reproduces torchvision's CPU kernel (which is also Caffe's), the one the original detector calls
(shared/fixtures/frcnn/README.md, "Patches"):

* `nms_keep`: greedy NMS in descending score order; IoU `inter / (area_i + area_j - inter)` in the boxes' dtype with
  no +1, a box suppressed when IoU > threshold (compared in float64, as the kernel compares a float with a double).
  It works on a whole (..., N, N) IoU matrix: greedy NMS is the unique fixed point of
  "keep j unless a kept i before j overlaps it", and iterating that rule from "keep all" reaches it after as many
  rounds as the longest suppression chain (a loop over rounds, never over boxes).
* `roi_pool`: start/end `round(coord * scale)` rounded half away from zero in the features' float type, width
  `end - start + 1` (at least 1), bin edges `floor(p * bin)` / `ceil((p + 1) * bin)` clipped to the map, the max
  per bin and 0 for an empty bin. The max over each rectangular bin is read from a 2-D sparse table (maxima over
  2^k x 2^l windows), four look-ups per bin, so every RoI and bin is pooled at once.

`nms_keep_loop` / `roi_pool_loop` are the straightforward per-box loops; tests check the vectorised versions against
them and `benchmark_extraction` times both.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# ------------------------------------------------------------------------------------------------------------------
# boxes
# ------------------------------------------------------------------------------------------------------------------


def decode_boxes(deltas: torch.Tensor, boxes: torch.Tensor, weights, scale_clamp: float) -> torch.Tensor:
    """detectron2's `Box2BoxTransform.apply_deltas` for one set of deltas per box: width `x2 - x1` (no +1),
    centre `x1 + w/2`, `dw`/`dh` clamped at `scale_clamp`. `deltas` and `boxes` are (..., 4)."""
    wx, wy, ww, wh = (float(w) for w in weights)
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    ctr_x = boxes[..., 0] + 0.5 * widths
    ctr_y = boxes[..., 1] + 0.5 * heights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[..., 3] / wh, max=scale_clamp)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    return torch.stack(
        [pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h, pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h],
        dim=-1,
    )


def clip_boxes(boxes: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Clip x to [0, width] and y to [0, height]; `heights` / `widths` broadcast against `boxes[..., 0]`."""
    widths = widths.to(boxes.dtype)
    heights = heights.to(boxes.dtype)
    zero = torch.zeros((), dtype=boxes.dtype)
    x1 = torch.minimum(torch.maximum(boxes[..., 0], zero), widths)
    y1 = torch.minimum(torch.maximum(boxes[..., 1], zero), heights)
    x2 = torch.minimum(torch.maximum(boxes[..., 2], zero), widths)
    y2 = torch.minimum(torch.maximum(boxes[..., 3], zero), heights)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def box_iou(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(..., N, 4) x (..., M, 4) -> (..., N, M), with torchvision's CPU-kernel arithmetic: area (x2-x1)(y2-y1), no +1,
    `inter / (area_i + area_j - inter)` (symmetric in IEEE arithmetic)."""
    ax1, ay1, ax2, ay2 = (v[..., :, None] for v in first.unbind(-1))
    bx1, by1, bx2, by2 = (v[..., None, :] for v in second.unbind(-1))
    inter_w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    inter_h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = inter_w * inter_h
    return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)


def pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """(..., N, 4) -> (..., N, N)."""
    return box_iou(boxes, boxes)


# ------------------------------------------------------------------------------------------------------------------
# NMS
# ------------------------------------------------------------------------------------------------------------------


def _below_or_equal(threshold: float, dtype: torch.dtype) -> float:
    """The largest value of `dtype` <= `threshold`: for x of that dtype, `x > threshold` (the kernel's comparison of
    a float with a double) is exactly `x > _below_or_equal(threshold)`, so the IoU matrix need not be cast to
    float64."""
    if dtype == torch.float64:
        return threshold
    value = np.float32(threshold)
    if float(value) > threshold:
        value = np.nextafter(value, np.float32(-np.inf))
    return float(value)


def nms_keep(
    boxes: torch.Tensor, valid: torch.Tensor, iou_thresholds, max_keep: int | None = None, tile: int = 128
) -> torch.Tensor:
    """Greedy NMS of boxes ALREADY SORTED by descending score, batched.

    boxes: (..., N, 4); valid: (..., N) bool (invalid boxes are neither kept nor suppress anything);
    iou_thresholds: a float, or a sequence of T floats (then the result has a leading T dim: one NMS per threshold).
    max_keep: only the first `max_keep` kept boxes are wanted; the work stops once every row has them, and the mask
    is then exact up to them (False after). Returns the keep mask, (..., N) or (T, ..., N).

    The boxes go in tiles of `tile` in score order: a tile's boxes are first suppressed by the kept boxes of earlier
    tiles (one IoU block), then the greedy rule inside the tile is solved by iterating "j survives unless a kept
    i < j overlaps it" from "all survive" to its unique fixed point (at most chain-length + 1 rounds). No loop runs
    over boxes; the loop over tiles ends early with `max_keep` (the RPN needs 300 of 6000).
    """
    single = isinstance(iou_thresholds, (int, float))
    thresholds = [float(iou_thresholds)] if single else [float(t) for t in iou_thresholds]
    boxes = boxes.float() if boxes.dtype not in (torch.float32, torch.float64) else boxes
    limits = torch.tensor([_below_or_equal(t, boxes.dtype) for t in thresholds], dtype=boxes.dtype)
    limits = limits.view(-1, *([1] * (boxes.dim() - 1)), 1)  # (T, ..., 1, 1) against (..., N, M) IoU blocks
    n = boxes.shape[-2]
    keep = torch.zeros(len(thresholds), *valid.shape, dtype=torch.bool, device=valid.device)
    for start in range(0, n, tile):
        end = min(start + tile, n)
        current, current_valid = boxes[..., start:end, :], valid[..., start:end]
        alive = current_valid.expand(keep[..., start:end].shape).clone()
        if start:
            over_earlier = box_iou(boxes[..., :start, :], current) > limits  # (T, ..., start, tile)
            earlier_kept = keep[..., :start].to(boxes.dtype).unsqueeze(-2)
            alive &= ~(torch.matmul(earlier_kept, over_earlier.to(boxes.dtype)).squeeze(-2) > 0)
        later = torch.ones(end - start, end - start, dtype=torch.bool, device=boxes.device).triu(1)
        over = (pairwise_iou(current) > limits) & later & current_valid[..., None, :]
        over = over.to(boxes.dtype)
        candidates, survivors = alive, alive
        for _ in range(end - start + 1):
            suppressed = torch.matmul(survivors.to(boxes.dtype).unsqueeze(-2), over).squeeze(-2) > 0
            updated = candidates & ~suppressed
            if torch.equal(updated, survivors):
                break
            survivors = updated
        keep[..., start:end] = survivors
        if max_keep is not None and bool((keep.sum(-1) >= max_keep).all()):
            break
    return keep[0] if single else keep


def nms_keep_loop(
    boxes: torch.Tensor, valid: torch.Tensor, iou_thresholds, max_keep: int | None = None
) -> torch.Tensor:
    """The straightforward greedy loop (one image and one box at a time: each kept box suppresses the later boxes it
    overlaps), same contract and arithmetic as `nms_keep` (`max_keep` stops an image's loop after that many kept)."""
    single = isinstance(iou_thresholds, (int, float))
    thresholds = [float(iou_thresholds)] if single else [float(t) for t in iou_thresholds]
    flat_boxes = boxes.reshape(-1, *boxes.shape[-2:])
    flat_boxes = flat_boxes if flat_boxes.dtype in (torch.float32, torch.float64) else flat_boxes.float()
    flat_valid = valid.reshape(-1, valid.shape[-1])
    results = []
    for threshold in thresholds:
        keep = torch.zeros_like(flat_valid)
        for image in range(flat_boxes.shape[0]):
            b = flat_boxes[image]
            x1, y1, x2, y2 = b.unbind(-1)
            areas = (x2 - x1) * (y2 - y1)
            suppressed = (~flat_valid[image]).tolist()
            for i in range(b.shape[0]):
                if suppressed[i]:
                    continue
                keep[image, i] = True
                if max_keep is not None and int(keep[image].sum()) >= max_keep:
                    break
                inter = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0) * (
                    torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)
                ).clamp(min=0)
                iou = inter / (areas[i] + areas - inter)
                over = (iou.double() > threshold).tolist()
                for j in range(i + 1, b.shape[0]):
                    suppressed[j] = suppressed[j] or over[j]
        results.append(keep.reshape(valid.shape))
    return results[0] if single else torch.stack(results)


# ------------------------------------------------------------------------------------------------------------------
# RoIPool
# ------------------------------------------------------------------------------------------------------------------


def round_half_away_from_zero(values: torch.Tensor) -> torch.Tensor:
    """C's `round()` (what torchvision's and Caffe's kernels call), exactly: torch.round rounds halves to even."""
    rounded = torch.round(values)
    truncated = torch.trunc(values)
    half = (values - truncated).abs() == 0.5
    return torch.where(half, truncated + torch.sign(values), rounded)


def roi_pool_bins(rois: torch.Tensor, output_size, spatial_scale: float, height: int, width: int):
    """Integer bin edges of every RoI, as torchvision's CPU kernel computes them.

    rois: (R, 5) `batch_index, x1, y1, x2, y2`. Returns `(hstart, hend)` of shape (R, PH) and `(wstart, wend)` of
    shape (R, PW), int64, clipped to the map.
    """
    pooled_h, pooled_w = output_size
    dtype = rois.dtype
    scale = torch.tensor(spatial_scale, dtype=dtype)
    coords = round_half_away_from_zero(rois[:, 1:5] * scale).to(torch.int64)
    start_w, start_h, end_w, end_h = coords.unbind(-1)
    roi_w = (end_w - start_w + 1).clamp(min=1)
    roi_h = (end_h - start_h + 1).clamp(min=1)
    bin_h = roi_h.to(dtype) / torch.tensor(float(pooled_h), dtype=dtype)
    bin_w = roi_w.to(dtype) / torch.tensor(float(pooled_w), dtype=dtype)
    ph = torch.arange(pooled_h, dtype=dtype)
    pw = torch.arange(pooled_w, dtype=dtype)
    hstart = torch.floor(ph[None, :] * bin_h[:, None]).to(torch.int64) + start_h[:, None]
    hend = torch.ceil((ph[None, :] + 1) * bin_h[:, None]).to(torch.int64) + start_h[:, None]
    wstart = torch.floor(pw[None, :] * bin_w[:, None]).to(torch.int64) + start_w[:, None]
    wend = torch.ceil((pw[None, :] + 1) * bin_w[:, None]).to(torch.int64) + start_w[:, None]
    return (hstart.clamp(0, height), hend.clamp(0, height)), (wstart.clamp(0, width), wend.clamp(0, width))


def _floor_log2(lengths: torch.Tensor, largest: int) -> torch.Tensor:
    table = torch.zeros(largest + 1, dtype=torch.int64)
    for length in range(2, largest + 1):
        table[length] = length.bit_length() - 1
    return table[lengths]


def _window_maxima(features: torch.Tensor, levels_h: int, levels_w: int) -> torch.Tensor:
    """(B, H, W, C) -> (levels_h, levels_w, B, H, W, C): entry [k, l, b, h, w] is the max over rows h..h+2^k-1 and
    columns w..w+2^l-1 (positions whose window leaves the map hold partial maxima and are never read)."""
    table = features.new_empty(levels_h, levels_w, *features.shape)
    table[0, 0] = features
    for k in range(levels_h):
        if k:
            step = 2 ** (k - 1)
            table[k, 0] = table[k - 1, 0]
            table[k, 0, :, :-step] = torch.maximum(table[k - 1, 0, :, :-step], table[k - 1, 0, :, step:])
        for level in range(1, levels_w):
            step = 2 ** (level - 1)
            table[k, level] = table[k, level - 1]
            table[k, level, :, :, :-step] = torch.maximum(
                table[k, level - 1, :, :, :-step], table[k, level - 1, :, :, step:]
            )
    return table


def roi_pool(features: torch.Tensor, rois: torch.Tensor, output_size, spatial_scale: float) -> torch.Tensor:
    """Caffe / torchvision RoIPool. features: (B, C, H, W); rois: (R, 5) `batch_index, x1, y1, x2, y2` in input
    pixels (float32 for the original's rounding). Returns (R, C, PH, PW)."""
    if rois.dim() != 2 or rois.shape[-1] != 5:
        raise ValueError(f"rois must be (R, 5) [batch_index, x1, y1, x2, y2], got {tuple(rois.shape)}")
    batch, channels, height, width = features.shape
    pooled_h, pooled_w = output_size
    count = rois.shape[0]
    if count == 0:
        return features.new_zeros(0, channels, pooled_h, pooled_w)
    (hstart, hend), (wstart, wend) = roi_pool_bins(rois, output_size, spatial_scale, height, width)
    empty = (hend <= hstart)[:, :, None] | (wend <= wstart)[:, None, :]  # (R, PH, PW)
    len_h = (hend - hstart).clamp(min=1)  # (R, PH); empty bins read one cell and are zeroed below
    len_w = (wend - wstart).clamp(min=1)
    hstart = hstart.clamp(max=height - 1)
    wstart = wstart.clamp(max=width - 1)
    k = _floor_log2(len_h, max(int(len_h.max()), 1))
    level = _floor_log2(len_w, max(int(len_w.max()), 1))
    levels_h, levels_w = int(k.max()) + 1, int(level.max()) + 1
    table = _window_maxima(features.permute(0, 2, 3, 1), levels_h, levels_w).reshape(-1, channels)

    image = rois[:, 0].to(torch.int64)[:, None, None]
    h_last = (hstart + len_h - (1 << k)).clamp(min=0)  # the second row window ends at hend
    w_last = (wstart + len_w - (1 << level)).clamp(min=0)
    base = ((k[:, :, None] * levels_w + level[:, None, :]) * batch + image) * (height * width)

    def gather(rows, cols):
        index = base + rows[:, :, None] * width + cols[:, None, :]
        return table.index_select(0, index.reshape(-1))

    pooled = gather(hstart, wstart)
    in_place = not (torch.is_grad_enabled() and features.requires_grad)
    for rows, cols in ((h_last, wstart), (hstart, w_last), (h_last, w_last)):
        pooled = torch.maximum(pooled, gather(rows, cols), out=pooled if in_place else None)
    empty_rows = empty.reshape(-1).nonzero().squeeze(-1)  # few: bins entirely outside the map
    if empty_rows.numel():
        pooled = pooled.index_fill(0, empty_rows, 0) if not in_place else pooled.index_fill_(0, empty_rows, 0)
    pooled = pooled.reshape(count, pooled_h, pooled_w, channels)
    return pooled.permute(0, 3, 1, 2).contiguous()


def roi_pool_loop(features: torch.Tensor, rois: torch.Tensor, output_size, spatial_scale: float) -> torch.Tensor:
    """The straightforward kernel: a loop over RoIs and bins (bin edges in numpy float32 scalars, IEEE single
    arithmetic like the C kernel's floats), each bin a max over its slice, all channels at once."""
    _, channels, height, width = features.shape
    pooled_h, pooled_w = output_size
    out = features.new_zeros(rois.shape[0], channels, pooled_h, pooled_w)
    scale = np.float32(spatial_scale)
    for r, roi in enumerate(rois.detach().cpu().numpy().astype(np.float32)):
        image = int(roi[0])
        start_w, start_h, end_w, end_h = (int(_c_round(float(np.float32(v) * scale))) for v in roi[1:5])
        bin_h = np.float32(max(end_h - start_h + 1, 1)) / np.float32(pooled_h)
        bin_w = np.float32(max(end_w - start_w + 1, 1)) / np.float32(pooled_w)
        for ph in range(pooled_h):
            hstart = min(max(int(np.floor(np.float32(ph) * bin_h)) + start_h, 0), height)
            hend = min(max(int(np.ceil(np.float32(ph + 1) * bin_h)) + start_h, 0), height)
            for pw in range(pooled_w):
                wstart = min(max(int(np.floor(np.float32(pw) * bin_w)) + start_w, 0), width)
                wend = min(max(int(np.ceil(np.float32(pw + 1) * bin_w)) + start_w, 0), width)
                if hend <= hstart or wend <= wstart:
                    continue
                out[r, :, ph, pw] = features[image, :, hstart:hend, wstart:wend].amax(dim=(-2, -1))
    return out


def _c_round(value: float) -> float:
    """C's round() on a Python float (the float32 product converted exactly)."""
    # |value| + 0.5 is exact in float64 for a float32 value, so this is round-half-away-from-zero exactly
    return math.copysign(math.floor(abs(value) + 0.5), value)


__all__ = [
    "clip_boxes",
    "decode_boxes",
    "nms_keep",
    "nms_keep_loop",
    "pairwise_iou",
    "roi_pool",
    "roi_pool_bins",
    "roi_pool_loop",
    "round_half_away_from_zero",
]
