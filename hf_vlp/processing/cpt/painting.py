"""CPT painting: the colour tables of the released code and Pillow's integer blend, applied to boxes, binary masks
(arrays or COCO RLE) and polygons.

Every paint of the released code (`prompt_feat/maskrcnn_benchmark/data/datasets/{refcoco,vg,gqa,vcr}dataset.py`) is
`img.paste(patch, (x, y), patch)` of an RGBA patch `(R, G, B, 127)` onto the RGB image, its alpha being the paste
mask; Pillow blends each channel with integer arithmetic (`_pillow_blend`). Boxes are truncated with `int()` after a
float32 round trip (maskrcnn's `BoxList` stores float32); RefCOCO and VG blocks exclude x2/y2, GQA blocks include
them; segmentation masks (COCO RLE) and VCR polygons are painted over the whole image
(`../shared/fixtures/cpt/README.md` §1).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numpy as np
from PIL import Image, ImageDraw

from .rle import decode_rle

# ------------------------------------------------------------------------------------------------------------------
# Colours
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CptColor:
    """A CPT colour: the word the model must predict, its RGB value and the paint alpha (0-255)."""

    name: str
    rgb: tuple[int, int, int]
    alpha: int = 127

    def __post_init__(self):
        if len(self.rgb) != 3 or any(not 0 <= int(c) <= 255 for c in self.rgb):
            raise ValueError(f"CptColor `rgb` must be three integers in 0..255, got {self.rgb!r}.")
        if not 0 <= int(self.alpha) <= 255:
            raise ValueError(f"CptColor `alpha` must be an integer in 0..255, got {self.alpha!r}.")

    @property
    def rgba(self) -> tuple[int, int, int, int]:
        return (*self.rgb, self.alpha)


RED = CptColor("red", (240, 0, 30))
BLUE = CptColor("blue", (0, 10, 255))
YELLOW = CptColor("yellow", (255, 255, 25))
PURPLE = CptColor("purple", (155, 50, 210))
GREEN = CptColor("green", (0, 255, 0))

# The colour tables of the released code (fixture colors.json).
PALETTES: dict[str, tuple[CptColor, ...]] = {
    # RefCoCoDataset, used by cmds/refcoco/cpt/*.sh: one colour, so one painted copy per candidate
    "refcoco": (RED,),
    # VGDataset: subject red, object blue
    "vg": (RED, BLUE),
    # GQAColorDataset / VCRColorDataset list; "blue" appears twice (index 0 and 3) in the original
    "gqa_vcr_original": (BLUE, RED, YELLOW, BLUE, PURPLE, GREEN),
    # the same list without the repeated blue: what the intended behaviour uses for more than 3 colours
    "gqa_vcr": (BLUE, RED, YELLOW, PURPLE, GREEN),
    # demo/color_image.py (stand-alone demo)
    "demo": (
        CptColor("red", (250, 0, 45), 120),
        CptColor("green", (100, 250, 0), 120),
        CptColor("blue", (0, 40, 250), 120),
    ),
    # RefcocoDemoDataset (not used by the scripts)
    "refcoco_demo": (CptColor("pink", (255, 205, 225), 160), CptColor("yellow", (250, 250, 50), 120)),
}


def _as_color(color) -> CptColor:
    if isinstance(color, CptColor):
        return color
    if isinstance(color, (tuple, list)) and len(color) == 2 and isinstance(color[0], str):
        rgba = tuple(int(c) for c in color[1])
        if len(rgba) not in (3, 4):
            raise ValueError(f"colour {color!r}: expected (name, (R, G, B[, A])).")
        return CptColor(color[0], rgba[:3], rgba[3] if len(rgba) == 4 else 127)
    raise ValueError(f"expected a CptColor or (name, (R, G, B[, A])), got {color!r}.")


def _as_palette(colors) -> tuple[CptColor, ...]:
    if isinstance(colors, str):
        if colors not in PALETTES:
            raise ValueError(f"unknown palette {colors!r}; expected one of {sorted(PALETTES)} or a list of colours.")
        return PALETTES[colors]
    palette = tuple(_as_color(c) for c in colors)
    if not palette:
        raise ValueError("`colors` must hold at least one colour.")
    return palette


# ------------------------------------------------------------------------------------------------------------------
# Painting
# ------------------------------------------------------------------------------------------------------------------


def to_rgb_array(image) -> np.ndarray:
    """A PIL image / (H, W, 3) uint8 array -> a new (H, W, 3) uint8 array (the original calls `.convert("RGB")`)."""
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"`image` must be a PIL image or an (H, W, 3) uint8 array, got {array.dtype} {array.shape}.")
    return array.copy()


def _pillow_blend(background: np.ndarray, color: CptColor) -> np.ndarray:
    """Pillow's `paste(patch, box, patch)` of a constant RGBA patch: per channel
    t = b * (255 - a) + c * a + 128, out = ((t >> 8) + t) >> 8 (integer divide by 255, rounded half up)."""
    alpha = int(color.alpha)
    t = background.astype(np.int32) * (255 - alpha) + np.asarray(color.rgb, dtype=np.int32) * alpha + 128
    return (((t >> 8) + t) >> 8).astype(np.uint8)


def blend_mask(pixels: np.ndarray, mask: np.ndarray, color: CptColor) -> None:
    """Blend `color` into the (H, W, 3) uint8 `pixels` where the (H, W) `mask` is true (in place)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != pixels.shape[:2]:
        raise ValueError(f"mask of shape {mask.shape} does not match the image (height, width) {pixels.shape[:2]}.")
    pixels[mask] = _pillow_blend(pixels[mask], color)


def _truncate(value) -> int:
    # maskrcnn_benchmark's BoxList stores float32; the datasets then call int() (truncation toward zero)
    return int(np.float32(value))


def box_block(box_xyxy, inclusive: bool) -> tuple[int, int, int, int]:
    """The painted pixel block of an `x1, y1, x2, y2` box: columns x1..x2-1 (or ..x2 if `inclusive`), as the
    original pastes a patch of size `(int(x2) - int(x1), ...)` (GQA/VCR: `max(int(x2) - int(x1) + 1, 1)`)
    at `(int(x1), int(y1))`. Returns `(left, top, right, bottom)` with exclusive right/bottom, not clipped."""
    x1, y1, x2, y2 = (_truncate(v) for v in box_xyxy)
    if inclusive:
        return x1, y1, x1 + max(x2 - x1 + 1, 1), y1 + max(y2 - y1 + 1, 1)
    return x1, y1, x1 + max(x2 - x1, 0), y1 + max(y2 - y1, 0)


def check_boxes(boxes, width: int, height: int, box_format: str = "xyxy", name: str = "boxes") -> np.ndarray:
    """Validate pixel boxes against the image; returns them as a float64 (N, 4) array in their own format."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"`{name}` must be (num_boxes, 4) {box_format} pixel boxes, got shape {array.shape}.")
    if box_format not in ("xyxy", "xywh"):
        raise ValueError(f"`box_format` must be 'xyxy' or 'xywh', got {box_format!r}.")
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` contains NaN or infinite coordinates.")
    xyxy = array.copy()
    if box_format == "xywh":
        if (array[:, 2] <= 0).any() or (array[:, 3] <= 0).any():
            raise ValueError(f"`{name}` (x, y, w, h) must have positive width and height, got {array.tolist()}.")
        xyxy[:, 2:] = array[:, :2] + array[:, 2:]
    elif (xyxy[:, 2] < xyxy[:, 0]).any() or (xyxy[:, 3] < xyxy[:, 1]).any():
        raise ValueError(f"`{name}` (x1, y1, x2, y2) must have x2 >= x1 and y2 >= y1, got {array.tolist()}.")
    eps = 1e-6 * max(width, height)  # float noise of x + w, nothing more
    outside = (xyxy[:, 0] < -eps) | (xyxy[:, 1] < -eps) | (xyxy[:, 2] > width + eps) | (xyxy[:, 3] > height + eps)
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"`{name}[{bad}]` = {array[bad].tolist()} ({box_format}) lies outside the {width}x{height} image; "
            f"boxes must satisfy 0 <= x1, 0 <= y1, x2 <= width, y2 <= height."
        )
    return array


def paint_boxes(image, boxes_xyxy, colors, inclusive: bool = False) -> Image.Image:
    """Paint one colour block per box, in order (later blocks cover earlier ones); a new RGB image."""
    pixels = to_rgb_array(image)
    height, width = pixels.shape[:2]
    boxes = check_boxes(boxes_xyxy, width, height, "xyxy")
    palette = [_as_color(c) for c in colors]
    if len(palette) != len(boxes):
        raise ValueError(f"got {len(boxes)} boxes but {len(palette)} colours; pass one colour per box.")
    for box, color in zip(boxes, palette):
        left, top, right, bottom = box_block(box, inclusive)
        # paste() clips the patch at the image border
        left, top, right, bottom = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
        if right > left and bottom > top:
            pixels[top:bottom, left:right] = _pillow_blend(pixels[top:bottom, left:right], color)
    return Image.fromarray(pixels)


def paint_masks(image, masks, colors) -> Image.Image:
    """Paint binary (H, W) masks (arrays or COCO RLE dicts), in order; a new RGB image."""
    pixels = to_rgb_array(image)
    height, width = pixels.shape[:2]
    palette = [_as_color(c) for c in colors]
    if len(palette) != len(masks):
        raise ValueError(f"got {len(masks)} masks but {len(palette)} colours; pass one colour per mask.")
    for index, (mask, color) in enumerate(zip(masks, palette)):
        # an RLE's declared size is checked against the image before it is decoded (allocated)
        mask = decode_rle(mask, (height, width), name=f"masks[{index}]") if isinstance(mask, dict) else np.asarray(mask)
        if mask.shape != (height, width):
            raise ValueError(
                f"`masks[{index}]` has size {mask.shape} (height, width) but the image is {(height, width)}."
            )
        blend_mask(pixels, mask != 0, color)
    return Image.fromarray(pixels)


def _polygon_points(part, index: int) -> list[tuple[float, float]]:
    """One polygon part as `(x, y)` points. Two layouts are accepted: a list of `[x, y]` points (VCR `segms`) or a
    flat `[x1, y1, x2, y2, ...]` list (COCO `segmentation`)."""
    expected = "a non-empty list of [x, y] points or a flat COCO list [x1, y1, x2, y2, ...]"
    if not isinstance(part, (list, tuple, np.ndarray)) or len(part) == 0:
        raise ValueError(f"polygon part {index} must be {expected}, got {part!r:.80}.")
    if all(isinstance(v, Real) for v in part):
        if len(part) % 2:
            raise ValueError(f"polygon part {index} is a flat [x1, y1, x2, y2, ...] list of odd length {len(part)}.")
        pairs = [part[i : i + 2] for i in range(0, len(part), 2)]
    else:
        pairs = part
    try:
        points = [tuple(float(v) for v in point) for point in pairs]
    except (TypeError, ValueError):
        raise ValueError(f"polygon part {index} must be {expected}, got {part!r:.80}.") from None
    if any(len(p) != 2 for p in points):
        raise ValueError(f"polygon part {index} must be {expected}, got {part!r:.80}.")
    if not np.isfinite(points).all():
        raise ValueError(f"polygon part {index} contains NaN or infinite coordinates: {part!r:.80}.")
    return points


def polygon_mask(polygons, width: int, height: int) -> np.ndarray:
    """Rasterise a list of polygons with Pillow's `ImageDraw.polygon` (boundary included), exactly as
    `VCRColorDataset.draw_segmasks` does; each polygon is a list of `[x, y]` points or a flat COCO list
    `[x1, y1, x2, y2, ...]`. A one-point part is drawn as a degenerate two-point polygon."""
    if not isinstance(polygons, (list, tuple, np.ndarray)):
        raise ValueError(f"`polygons` must be a list of polygon parts, got {type(polygons).__name__}.")
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for index, part in enumerate(polygons):
        points = _polygon_points(part, index)
        if len(points) < 2:
            points = points + points[:1]
        draw.polygon(points, fill=255)
    return np.array(canvas) > 0


def paint_polygons(image, objects_polygons, colors) -> Image.Image:
    """Paint objects given as polygon lists (one colour per object, composited one after another)."""
    pixels = to_rgb_array(image)
    height, width = pixels.shape[:2]
    palette = [_as_color(c) for c in colors]
    if len(palette) != len(objects_polygons):
        raise ValueError(f"got {len(objects_polygons)} objects but {len(palette)} colours; pass one per object.")
    for polygons, color in zip(objects_polygons, palette):
        blend_mask(pixels, polygon_mask(polygons, width, height), color)
    return Image.fromarray(pixels)
