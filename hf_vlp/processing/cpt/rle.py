"""COCO run-length encoding, the format of RefCOCO detection masks (`segs.json`), decoded without pycocotools."""

from __future__ import annotations

import numpy as np


def _rle_counts_from_string(counts: str) -> list[int]:
    """COCO's compressed RLE string: 5-bit groups (ASCII offset 48) with a continuation bit; counts after the
    second are stored as differences to the count two places earlier (pycocotools `rleFrString`)."""
    values, position = [], 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("RLE `counts` string ends in the middle of a number.")
            chunk = ord(counts[position]) - 48
            value |= (chunk & 0x1F) << (5 * shift)
            more = bool(chunk & 0x20)
            position += 1
            shift += 1
            if not more and chunk & 0x10:
                value |= -1 << (5 * shift)  # sign extension
        if len(values) > 2:
            value += values[-2]
        values.append(value)
    return values


# The largest mask decoded when no image size is given: 2**28 pixels (a 16384 x 16384 image, 256 MiB as uint8).
# A compressed RLE of a few bytes can declare any size, so the size is checked before anything is allocated.
MAX_RLE_PIXELS = 1 << 28


def rle_size(rle, name: str = "rle") -> tuple[int, int]:
    """The declared `(height, width)` of a COCO RLE dict, validated (two non-negative integers)."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"`{name}` must be a COCO RLE dict with 'size' [height, width] and 'counts', got {rle!r:.80}.")
    size = rle["size"]
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}['size']` must be [height, width] integers, got {size!r:.80}.") from None
    if height < 0 or width < 0 or [height, width] != [float(v) for v in size]:
        raise ValueError(f"`{name}['size']` must be [height, width] non-negative integers, got {size!r:.80}.")
    return height, width


def decode_rle(
    rle: dict, image_size: tuple[int, int] | None = None, max_pixels: int | None = MAX_RLE_PIXELS, name: str = "rle"
) -> np.ndarray:
    """Decode a COCO RLE `{"size": [height, width], "counts": str | list[int]}` to an (H, W) uint8 0/1 mask.
    Runs alternate 0s and 1s (starting with 0s) over the pixels in column-major order.

    The declared size is checked before anything is allocated: it must equal `image_size` (height, width) when that
    is given, and cover at most `max_pixels` pixels (None: no limit)."""
    height, width = rle_size(rle, name)
    if image_size is not None and (height, width) != tuple(int(v) for v in image_size):
        raise ValueError(
            f"`{name}` has size {(height, width)} (height, width) but the image is {tuple(int(v) for v in image_size)}."
        )
    if max_pixels is not None and height * width > max_pixels:
        raise ValueError(
            f"`{name}` declares a {height}x{width} mask ({height * width} pixels), more than max_pixels={max_pixels}; "
            "pass the image size it belongs to (`image_size`) or raise `max_pixels`."
        )
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    counts = _rle_counts_from_string(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(c < 0 for c in counts) or sum(counts) != height * width:
        raise ValueError(
            f"RLE counts cover {sum(counts)} pixels (or hold negative runs) but its size {height}x{width} has "
            f"{height * width}."
        )
    values = np.zeros(len(counts), dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T.copy()
