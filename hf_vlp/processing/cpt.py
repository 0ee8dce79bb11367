"""CPT — Colorful Prompt Tuning (Yao et al. 2021, "CPT: Colorful Prompt Tuning for Pre-trained Vision-Language
Models"): paint image regions with semi-transparent colours and ask a masked-LM vision-language model which colour a
phrase refers to ("<caption> is in [MASK] color.").

This module is the processing half: colours, painting, prompt texts and token rows. `hf_vlp.cpt` scores them with a
model. Everything follows the authors' released code (GitHub thunlp/CPT, commit c0347e8), as documented in
`../shared/fixtures/cpt/README.md`:

* painting (`prompt_feat/maskrcnn_benchmark/data/datasets/{refcoco,vg,gqa,vcr}dataset.py`): an RGBA patch of
  `(R, G, B, 127)` is pasted with Pillow onto the RGB image using its own alpha as the paste mask; Pillow blends
  each channel with integer arithmetic (`_pillow_blend`). Boxes are truncated with `int()` after a float32
  round trip (maskrcnn's `BoxList` stores float32); RefCOCO and VG blocks exclude x2/y2, GQA blocks include them;
  segmentation masks (COCO RLE) and VCR polygons are painted over the whole image.
* prompts (`Oscar/oscar/datasets/*cpt*_dataset.py`, `Oscar/oscar/fewshot/*_cpt.py`): the text_a templates, the
  object-tag text_b with the colour word put in front of the painted object's tag, and Oscar's
  `[CLS] a [SEP] b [SEP]` token rows padded to a fixed length.

The released code has bugs: VG tags enumerated character by character, VCR colours assigned in hash-randomised
set order (and objects told apart by their box), RefCOCO templates 4-6 crashing, a double space in the VG prompt,
and multi-colour RefCOCO copies that reuse the copy's first mask/colour. By default the intended behaviour is
implemented; `original_quirks=True` reproduces the released code (and the fixture) byte for byte.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

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
        mask = decode_rle(mask) if isinstance(mask, dict) else np.asarray(mask)
        if mask.shape != (height, width):
            raise ValueError(
                f"`masks[{index}]` has size {mask.shape} (height, width) but the image is {(height, width)}."
            )
        blend_mask(pixels, mask != 0, color)
    return Image.fromarray(pixels)


def polygon_mask(polygons, width: int, height: int) -> np.ndarray:
    """Rasterise a list of polygons (each a list of `[x, y]`) with Pillow's `ImageDraw.polygon` (boundary included),
    exactly as `VCRColorDataset.draw_segmasks` does; a one-point part is drawn as a degenerate two-point polygon."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for index, part in enumerate(polygons):
        points = [tuple(float(v) for v in point) for point in part]
        if not points or any(len(p) != 2 for p in points):
            raise ValueError(f"polygon part {index} must be a non-empty list of [x, y] points, got {part!r}.")
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


# ------------------------------------------------------------------------------------------------------------------
# COCO run-length encoding (the format of RefCOCO detection masks, `segs.json`)
# ------------------------------------------------------------------------------------------------------------------


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


def decode_rle(rle: dict) -> np.ndarray:
    """Decode a COCO RLE `{"size": [height, width], "counts": str | list[int]}` to an (H, W) uint8 0/1 mask.
    Runs alternate 0s and 1s (starting with 0s) over the pixels in column-major order."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"an RLE mask must be a dict with 'size' [height, width] and 'counts', got {rle!r:.80}.")
    height, width = (int(v) for v in rle["size"])
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


# ------------------------------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------------------------------


def xywh_to_cpt_xyxy(boxes_xywh) -> np.ndarray:
    """RefCOCO candidates `[x, y, w, h]` -> `[x, y, x + w - 1, y + h - 1]` (`RefCoCoDataset.__getitem__`)."""
    boxes = np.array(boxes_xywh, dtype=np.float64).reshape(-1, 4)
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
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float32)
    normalized = boxes / scale
    return np.concatenate([normalized, normalized[:, 2:] - normalized[:, :2]], axis=1).astype(np.float32)


def overlapping_pairs(boxes_xyxy) -> list[tuple[int, int]]:
    """Ordered pairs `(i, j)`, `i < j`, whose boxes overlap with maskrcnn's `+1` pixel convention (IoU > 0), in
    row-major order — the pairs `VGDataset` paints (before its `random.seed(0)` shuffle)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
    inter_w = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0]) + 1
    inter_h = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1]) + 1
    overlap = (inter_w > 0) & (inter_h > 0)
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(overlap)) if i < j]


def shuffled_like_vg_dataset(pairs: list, seed: int = 0) -> list:
    """`VGDataset` shuffles its (whole) list of painted pairs with `random.seed(0); random.shuffle(...)`."""
    pairs = list(pairs)
    random.Random(seed).shuffle(pairs)
    return pairs


# ------------------------------------------------------------------------------------------------------------------
# Prompt texts
# ------------------------------------------------------------------------------------------------------------------

MASK = "[MASK]"


def clean_caption(caption: str) -> str:
    """RefCOCO: `caption.replace(".", "").strip()` (both CPT datasets)."""
    return caption.replace(".", "").strip()


def _template_with_span(caption, span, which):
    if span is None:
        raise ValueError(
            f"template {which} puts [MASK] at a character position of the caption: pass `span` = (start, end) of the "
            "referred phrase (RefCOCO `tokens_positive`)."
        )
    start, end = int(span[0]), int(span[1])
    if not 0 <= start <= end <= len(caption):
        raise ValueError(f"`span` {span} must satisfy 0 <= start <= end <= len(caption) = {len(caption)}.")
    if which == 4:
        return caption[:end] + " in [MASK]." if end == len(caption) else caption[:end] + " in [MASK]" + caption[end:] + "."
    if which == 5:
        if end == len(caption):
            return caption[:end] + " in [MASK] color."
        return caption[:end] + " in [MASK] color" + caption[end:] + "."
    return caption[:start] + "[MASK] " + caption[start:] + "."


# The RefCOCO zero-shot templates (`refcoco_zsl_cpt_dataset.py` template1..6); few-shot always uses 3.
REFEXP_TEMPLATES = {
    1: "{caption} is [MASK].",
    2: "{caption} is [MASK] color.",
    3: "{caption} is in [MASK] color.",
    4: "<caption up to the phrase end> in [MASK]<rest>.",
    5: "<caption up to the phrase end> in [MASK] color<rest>.",
    6: "<caption up to the phrase start>[MASK] <rest>.",
}


def refexp_prompt(caption: str, template=3, span=None, original_quirks: bool = False) -> str:
    """The text_a of a referring-expression prompt. `template`: 1-6 (the released templates) or a format string
    with `{caption}` and exactly one `[MASK]`. `caption` is used as given (see `clean_caption`)."""
    if isinstance(template, str):
        if template.count(MASK) != 1:
            raise ValueError(f"a CPT prompt template must contain exactly one {MASK}, got {template!r}.")
        if "{caption}" not in template:
            raise ValueError(f"a CPT prompt template must contain '{{caption}}', got {template!r}.")
        return template.replace("{caption}", caption)
    if template not in REFEXP_TEMPLATES:
        raise ValueError(f"`template` must be one of {sorted(REFEXP_TEMPLATES)} or a format string, got {template!r}.")
    if template <= 3:
        return REFEXP_TEMPLATES[template].format(caption=caption)
    if original_quirks:
        # the released datasets pass `posi_token = 0` (an int) and index it: templates 4-6 raise a TypeError
        raise ValueError(
            f"template {template} crashes in the released CPT code (it indexes the int `posi_token`); use "
            "original_quirks=False and pass `span` for the intended behaviour."
        )
    return _template_with_span(caption, span, template)


def tag_text(labels: Sequence[str], painted: dict[int, str]) -> str:
    """Object tags (text_b): the labels joined by spaces, with `"<colour> "` in front of each painted one
    (`painted` = {label index: colour name})."""
    return " ".join(f"{painted[i]} {label}" if i in painted else label for i, label in enumerate(labels))


def relation_prompts(subject: str, object: str, colors=("red", "blue"), max_masks: int = 3,
                     original_quirks: bool = False) -> list[str]:
    """VG relation prompts (`vg_test_dataset.py`): `"<s> in red color is [MASK]... a <o> in blue color"` with 1 to
    `max_masks` masks, then the reversed `"<o> in blue color is [MASK]... a <s> in red color"`. The released
    format string leaves a double space before the first mask (`original_quirks=True`)."""
    if max_masks < 1:
        raise ValueError(f"`max_masks` must be >= 1, got {max_masks}.")
    subject_phrase = f"{subject} in {colors[0]} color"
    object_phrase = f"{object} in {colors[1]} color"
    gap = " " if original_quirks else ""
    masks = [gap + " ".join([MASK] * n) for n in range(1, max_masks + 1)]
    forward = [f"{subject_phrase} is {m} a {object_phrase}" for m in masks]
    reverse = [f"{object_phrase} is {m} a {subject_phrase}" for m in masks]
    return forward + reverse


def relation_tag_text(labels: Sequence[str], pair: tuple[int, int], colors=("red", "blue"),
                      original_quirks: bool = False) -> str:
    """VG object tags with the subject's and object's colour words. The released code receives the tags as one
    space-joined string and enumerates its CHARACTERS (`original_quirks=True`), so the colours land in front of the
    characters whose index equals the box indices; the intended text colours the words."""
    if original_quirks:
        characters = " ".join(labels)
        out = []
        for i, character in enumerate(characters):
            if i == pair[0]:
                out.append(f"{colors[0]} {character}")
            elif i == pair[1]:
                out.append(f"{colors[1]} {character}")
            else:
                out.append(character)
        return " ".join(out)
    painted = {pair[1]: colors[1], pair[0]: colors[0]}
    return tag_text(labels, painted)


def insert_colors(question: str, spans_and_colors) -> str:
    """GQA (`gqa_cpt.py get_img_feature`): insert `"<colour> "` at the start offset of each painted phrase."""
    items = sorted(((int(span[0]), name) for span, name in spans_and_colors), key=lambda item: item[0])
    pieces, previous = [], 0
    for start, name in items:
        if not 0 <= start <= len(question):
            raise ValueError(f"span start {start} lies outside the question of length {len(question)}.")
        pieces += [question[previous:start], name + " "]
        previous = start
    pieces.append(question[previous:])
    return "".join(pieces)


def _reference_key(reference) -> str:
    return "_".join(str(y) for y in sorted(reference))


def _references(sentence, original_quirks):
    keys = [_reference_key(word) for word in sentence if isinstance(word, list)]
    if original_quirks:
        return list(set(keys))  # the released code: hash-randomised order when a sentence has several references
    return list(dict.fromkeys(keys))  # intended: order of first appearance


@dataclass
class VcrColoring:
    """What `VCRColorDataset.construct_to_mark_and_color` decides: painted object ids and their colours (paint
    order), and per reference key ("0", "0_1") the colour word and the name used in the text."""

    painted_objects: list[int]
    painted_colors: list[CptColor]
    text_colors: dict[str, str]
    text_names: dict[str, str]


def vcr_coloring(question, answers, rationales, names, boxes=None, n_color: int = 3, colors="gqa_vcr",
                 original_quirks: bool = False) -> VcrColoring:
    """Assign colours to the objects referenced in a VCR question and its answers (not the rationales): at most
    `n_color` reference groups, in order of first appearance; every not-yet-painted object of a group gets the
    group's colour. Text names: `person`/`people`, `<cls>`/`<cls>s`, `objects` for mixed classes."""
    palette = _as_palette(colors)
    if n_color > len(palette):
        raise ValueError(f"`n_color` = {n_color} but the palette has only {len(palette)} colours.")
    if original_quirks and boxes is None:
        raise ValueError("original_quirks=True tells objects apart by their box: pass `boxes`.")
    sentences_shown = [question] + list(answers)
    all_keys = [k for s in sentences_shown + list(rationales) for k in _references(s, original_quirks)]
    shown_keys = list(dict.fromkeys(k for s in sentences_shown for k in _references(s, original_quirks)))
    painted, painted_colors, painted_boxes, object_color = [], [], [], {}
    color_count = 0
    for key in shown_keys:
        if color_count >= n_color:
            break
        new_paint = False
        for obj in (int(y) for y in key.split("_")):
            if not 0 <= obj < len(names):
                raise ValueError(f"reference {obj} in the text but only {len(names)} objects in `names`.")
            # the released code compares boxes ("d not in ret_to_mark_dets"); intended: object ids
            already = (list(boxes[obj][:4]) in painted_boxes) if original_quirks else (obj in object_color)
            if not already:
                painted.append(obj)
                painted_colors.append(palette[color_count])
                if boxes is not None:
                    painted_boxes.append(list(boxes[obj][:4]))
                object_color[obj] = palette[color_count]
                new_paint = True
        if new_paint:
            color_count += 1
    text_colors, text_names = {}, {}
    for key in dict.fromkeys(all_keys):
        objects = [int(y) for y in key.split("_")]
        classes = [names[i] for i in objects]
        if len(set(classes)) == 1:
            if classes[0] == "person":
                text_names[key] = "person" if len(classes) == 1 else "people"
            else:
                text_names[key] = classes[0] if len(classes) == 1 else classes[0] + "s"
        else:
            text_names[key] = "objects"
        object_colors = {object_color[i].name if i in object_color else "none" for i in objects}
        if len(object_colors) == 1 and "none" not in object_colors:
            text_colors[key] = object_colors.pop()
    return VcrColoring(painted, painted_colors, text_colors, text_names)


def vcr_textize(sentence, coloring: VcrColoring, colorful: bool = True) -> str:
    """A VCR token list with object references -> text: `<name>` or `<name> in <colour>` (`_vcr_textize`)."""
    words = []
    for word in sentence:
        if isinstance(word, list):
            key = _reference_key(word)
            name = coloring.text_names[key]
            words.append(f"{name} in {coloring.text_colors[key]}" if colorful and key in coloring.text_colors else name)
        else:
            words.append(word)
    return " ".join(words)


# ------------------------------------------------------------------------------------------------------------------
# Tokens (Oscar's layout)
# ------------------------------------------------------------------------------------------------------------------


def _truncate_seq_pair(tokens_a: list, tokens_b: list, max_length: int) -> None:
    """Drop the last token of the longer sequence until both fit (BERT's / Oscar's `_truncate_seq_pair`)."""
    while len(tokens_a) + len(tokens_b) > max_length:
        (tokens_a if len(tokens_a) > len(tokens_b) else tokens_b).pop()


@dataclass
class TokenRow:
    tokens: list[str]
    input_ids: list[int]
    token_type_ids: list[int]
    attention_mask: list[int]
    mask_positions: list[int]


def encode_pair(tokenizer, text_a: str, text_b: str | None, max_length: int = 70) -> TokenRow:
    """`[CLS] text_a [SEP] text_b [SEP]`, segment 0 / 1, zero-padded to `max_length` (Oscar/CPT `tokenize`)."""
    tokens_a = tokenizer.tokenize(text_a)
    tokens_b = tokenizer.tokenize(text_b) if text_b else []
    if tokens_b:
        _truncate_seq_pair(tokens_a, tokens_b, max_length - 3)
    else:
        tokens_a = tokens_a[: max_length - 2]
    tokens = [tokenizer.cls_token, *tokens_a, tokenizer.sep_token]
    segments = [0] * len(tokens)
    if tokens_b:
        tokens += [*tokens_b, tokenizer.sep_token]
        segments += [1] * (len(tokens_b) + 1)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    padding = max_length - len(ids)
    mask_id = tokenizer.mask_token_id
    return TokenRow(
        tokens=tokens,
        input_ids=ids + [tokenizer.pad_token_id or 0] * padding,
        token_type_ids=segments + [0] * padding,
        attention_mask=[1] * len(ids) + [0] * padding,
        mask_positions=[i for i, t in enumerate(ids) if t == mask_id],
    )


def color_token_id(tokenizer, name: str) -> int:
    """The vocabulary id of a colour word; CPT only uses words that are a single word piece."""
    pieces = tokenizer.tokenize(name)
    if len(pieces) != 1 or pieces[0] == tokenizer.unk_token:
        raise ValueError(f"colour word {name!r} must be one word piece of the vocabulary, it tokenizes to {pieces}.")
    return tokenizer.convert_tokens_to_ids(pieces[0])


# ------------------------------------------------------------------------------------------------------------------
# The processor
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class PaintedCopy:
    """One painted copy of the image: the painted candidates (indices) and their colours."""

    image: Image.Image
    candidates: list[int]
    colors: list[CptColor]
    rects: list[list[float]]  # painted rects as the original reports them (RefCOCO: x1, y1, x + w - 1, y + h - 1)


class CptProcessor:
    """Paints CPT's coloured blocks and builds the prompts and token rows for every task of the paper.

    Args:
        tokenizer: a BERT word-piece tokenizer (the model's).
        colors: the grounding palette (a name in `PALETTES` or a list of `CptColor` / (name, rgba)); each painted
            copy colours `len(colors)` candidates, one per colour. CPT's scripts use one colour (red).
        template: RefCOCO prompt template (1-6 or a format string with `{caption}` and one `[MASK]`).
        max_text_length: text positions per row (Oscar/CPT: 70; VCR: 165).
        original_quirks: reproduce the released code's bugs byte for byte (see the module docstring).
        none_word: the negative answer word of few-shot grounding.
    """

    def __init__(self, tokenizer, colors="refcoco", template=3, max_text_length: int = 70,
                 original_quirks: bool = False, none_word: str = "none"):
        self.tokenizer = tokenizer
        self.colors = _as_palette(colors)
        names = [c.name for c in self.colors]
        if len(set(names)) != len(names):
            raise ValueError(f"grounding colours in one copy must have distinct names, got {names}.")
        if isinstance(template, str):
            refexp_prompt("x", template)  # validates the template now
        elif template not in REFEXP_TEMPLATES:
            raise ValueError(f"`template` must be one of {sorted(REFEXP_TEMPLATES)} or a format string, got {template!r}.")
        self.template = template
        self.max_text_length = int(max_text_length)
        self.original_quirks = bool(original_quirks)
        self.none_word = none_word
        for color in self.colors:
            color_token_id(tokenizer, color.name)
        color_token_id(tokenizer, none_word)

    CONFIG_NAME = "cpt_processor.json"

    def to_dict(self) -> dict:
        return {
            "colors": [[c.name, list(c.rgba)] for c in self.colors],
            "template": self.template,
            "max_text_length": self.max_text_length,
            "original_quirks": self.original_quirks,
            "none_word": self.none_word,
        }

    def save_pretrained(self, save_directory) -> None:
        """Write the tokenizer and `cpt_processor.json` (colours, template, lengths, quirks switch)."""
        import json
        import os

        os.makedirs(save_directory, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        with open(os.path.join(save_directory, self.CONFIG_NAME), "w") as handle:
            json.dump(self.to_dict(), handle, indent=2)

    @classmethod
    def from_pretrained(cls, directory, **overrides) -> CptProcessor:
        import json
        import os

        from transformers import AutoTokenizer

        settings = {}
        path = os.path.join(directory, cls.CONFIG_NAME)
        if os.path.exists(path):
            with open(path) as handle:
                settings = json.load(handle)
        settings.update(overrides)
        return cls(AutoTokenizer.from_pretrained(directory), **settings)

    # -------------------------------------------------------------------------------------------- grounding
    def paint_candidates(self, image, boxes=None, masks=None, box_format: str = "xywh",
                         max_copies: int | None = None) -> list[PaintedCopy]:
        """RefCOCO painting (`RefCoCoDataset.__getitem__`): copy c colours candidates `c*k ... c*k+k-1` with colours
        `0 ... k-1` (k = number of colours). Boxes are `[x, y, w, h]` (COCO, default) or `[x1, y1, x2, y2]`; with
        `masks` (one (H, W) array or COCO RLE per candidate) the masks are painted instead of the boxes.
        `max_copies` bounds the number of painted copies: more candidates than colours allow is an error."""
        pixels = to_rgb_array(image)
        height, width = pixels.shape[:2]
        if boxes is None and masks is None:
            raise ValueError("pass candidate `boxes` (and optionally their `masks`).")
        if boxes is None:
            boxes = [_mask_box(decode_rle(m) if isinstance(m, dict) else np.asarray(m)) for m in masks]
            box_format = "xywh"
        boxes = check_boxes(boxes, width, height, box_format)
        rects = xywh_to_cpt_xyxy(boxes) if box_format == "xywh" else boxes.copy()
        if masks is not None and len(masks) != len(boxes):
            raise ValueError(f"got {len(masks)} `masks` for {len(boxes)} candidate `boxes`.")
        k = len(self.colors)
        num_copies = math.ceil(len(boxes) / k)
        if num_copies == 0:
            raise ValueError("`boxes` is empty: CPT needs at least one candidate region.")
        if max_copies is not None and num_copies > max_copies:
            raise ValueError(
                f"{len(boxes)} candidates need {num_copies} painted copies with {k} colour(s), more than "
                f"max_copies={max_copies}; pass more colours or fewer candidates."
            )
        copies = []
        for c in range(num_copies):
            candidates = list(range(c * k, min((c + 1) * k, len(boxes))))
            colors = list(self.colors[: len(candidates)])
            if masks is not None:
                # the released code paints masks[c] (the copy's index) once per colour
                chosen = [masks[c]] * len(candidates) if self.original_quirks else [masks[i] for i in candidates]
                painted = paint_masks(pixels, chosen, colors)
            else:
                painted = paint_boxes(pixels, rects[candidates], colors, inclusive=False)
            copies.append(PaintedCopy(painted, candidates, colors, rects[candidates].tolist()))
        return copies

    def grounding_texts(self, caption: str, labels: Sequence[str] | None, copies: Sequence[PaintedCopy], span=None,
                        template=None) -> list[tuple[str, str | None]]:
        """(text_a, text_b) per painted copy: the template prompt and the tags with each painted candidate's colour
        word in front of its tag (text_b is None without `labels`, e.g. for models pretrained without tags)."""
        text_a = refexp_prompt(clean_caption(caption), self.template if template is None else template, span,
                               self.original_quirks)
        if labels is None:
            return [(text_a, None) for _ in copies]
        if len(labels) < max(i for copy in copies for i in copy.candidates) + 1:
            raise ValueError(f"got {len(labels)} `labels` (object tags) for more candidates; pass one per candidate.")
        texts = []
        for c, copy in enumerate(copies):
            if self.original_quirks:
                # released: the copy's first colour word in front of tag number c (the copy index)
                painted = {c: copy.colors[0].name}
            else:
                painted = {i: color.name for i, color in zip(copy.candidates, copy.colors)}
            texts.append((text_a, tag_text(labels, painted)))
        return texts

    def grounding_targets(self, copies: Sequence[PaintedCopy], target_box, box_format: str = "xywh") -> list[str]:
        """Few-shot training target per copy: the colour of the painted candidate with the highest CPT IoU with the
        annotated box if that IoU > 0.5, else `none` (`ZSLColorFinetuneDataset`). The target box is in the
        candidates' `box_format` and goes through the same conversion as they do."""
        target = [float(v) for v in target_box]
        if len(target) != 4:
            raise ValueError(f"`target_box` must have 4 coordinates, got {target_box!r}.")
        target_rect = xywh_to_cpt_xyxy([target])[0].tolist() if box_format == "xywh" else target
        targets = []
        for copy in copies:
            ious = [cpt_iou_xywh(rect_to_xywh(target_rect), rect_to_xywh(rect)) for rect in copy.rects]
            best = int(np.argmax(ious))
            targets.append(copy.colors[best].name if ious[best] > 0.5 else self.none_word)
        return targets

    def encode(self, texts: Sequence[tuple[str, str | None]], max_length: int | None = None,
               expected_masks: int | None = 1) -> dict:
        """Token rows for (text_a, text_b) pairs: `input_ids`, `token_type_ids`, `attention_mask` (N, T) tensors,
        `mask_positions` (N, M) and `tokens` (lists). A row must keep `expected_masks` [MASK] tokens after
        truncation."""
        rows = [encode_pair(self.tokenizer, a, b, max_length or self.max_text_length) for a, b in texts]
        for i, row in enumerate(rows):
            if expected_masks is not None and len(row.mask_positions) != expected_masks:
                raise ValueError(
                    f"prompt {i} ({texts[i][0]!r}) has {len(row.mask_positions)} [MASK] tokens after tokenization "
                    f"and truncation to {max_length or self.max_text_length}; expected {expected_masks}."
                )
        counts = {len(r.mask_positions) for r in rows}
        out = {
            "input_ids": torch.tensor([r.input_ids for r in rows], dtype=torch.long),
            "token_type_ids": torch.tensor([r.token_type_ids for r in rows], dtype=torch.long),
            "attention_mask": torch.tensor([r.attention_mask for r in rows], dtype=torch.long),
            "tokens": [r.tokens for r in rows],
        }
        if len(counts) == 1:
            out["mask_positions"] = torch.tensor([r.mask_positions for r in rows], dtype=torch.long)
        else:
            out["mask_positions"] = [r.mask_positions for r in rows]
        return out

    def color_token_ids(self, names: Sequence[str]) -> list[int]:
        return [color_token_id(self.tokenizer, n) for n in names]

    # -------------------------------------------------------------------------------------------- relations
    def paint_relation(self, image, boxes_xyxy, pair: tuple[int, int], colors="vg") -> Image.Image:
        """VG: subject box red, then object box blue, exclusive blocks (`VGDataset.draw_rectangles`)."""
        palette = _as_palette(colors)
        if len(palette) < 2:
            raise ValueError("relation painting needs two colours (subject, object).")
        boxes = np.asarray(boxes_xyxy, dtype=np.float64)
        if not all(0 <= p < len(boxes) for p in pair) or pair[0] == pair[1]:
            raise ValueError(f"`pair` {pair} must be two different box indices below {len(boxes)}.")
        return paint_boxes(image, boxes[list(pair)], palette[:2], inclusive=False)

    def relation_texts(self, subject: str, object: str, labels: Sequence[str], pair: tuple[int, int],
                       colors="vg", max_masks: int = 3) -> list[tuple[str, str]]:
        """The six (text_a, text_b) rows of a painted pair: 1..max_masks masks forward, then reversed."""
        names = tuple(c.name for c in _as_palette(colors)[:2])
        prompts = relation_prompts(subject, object, names, max_masks, self.original_quirks)
        tags = relation_tag_text(labels, pair, names, self.original_quirks)
        return [(p, tags) for p in prompts]

    # -------------------------------------------------------------------------------------------- GQA / VCR
    def paint_gqa(self, image, boxes_xyxy, colors="gqa_vcr_original") -> Image.Image:
        """GQA: blocks INCLUSIVE of x2/y2 (`GQAColorDataset.draw_rectangles`), colours in palette order."""
        palette = _as_palette(colors)
        if len(boxes_xyxy) > len(palette):
            raise ValueError(f"{len(boxes_xyxy)} boxes to paint but only {len(palette)} colours.")
        return paint_boxes(image, boxes_xyxy, palette[: len(boxes_xyxy)], inclusive=True)

    def gqa_texts(self, question: str, spans, colors="gqa_vcr_original") -> tuple[str, str]:
        """GQA: the colour words inserted into the question; text_b is the literal `[MASK]`."""
        palette = _as_palette(colors)
        if len(spans) > len(palette):
            raise ValueError(f"{len(spans)} spans but only {len(palette)} colours.")
        return insert_colors(question, [(span, c.name) for span, c in zip(spans, palette)]), MASK

    def paint_vcr(self, image, polygons, coloring: VcrColoring) -> Image.Image:
        """VCR: the painted objects' polygons (`segms`), one overlay per object (`draw_segmasks`)."""
        return paint_polygons(image, [polygons[i] for i in coloring.painted_objects], coloring.painted_colors)

    def vcr_texts(self, question, answers, coloring: VcrColoring) -> list[tuple[str, str]]:
        """One (question, answer) row per answer, with `<name> in <colour>` for the painted references."""
        text_a = vcr_textize(question, coloring)
        return [(text_a, vcr_textize(answer, coloring)) for answer in answers]


def _mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("an empty mask has no box; pass `boxes` with the masks.")
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


__all__ = [
    "BLUE",
    "GREEN",
    "MASK",
    "PALETTES",
    "PURPLE",
    "RED",
    "REFEXP_TEMPLATES",
    "YELLOW",
    "CptColor",
    "CptProcessor",
    "PaintedCopy",
    "TokenRow",
    "VcrColoring",
    "blend_mask",
    "box_block",
    "check_boxes",
    "clean_caption",
    "color_token_id",
    "cpt_iou_xywh",
    "decode_rle",
    "encode_pair",
    "insert_colors",
    "overlapping_pairs",
    "paint_boxes",
    "paint_masks",
    "paint_polygons",
    "polygon_mask",
    "rect_to_xywh",
    "refexp_prompt",
    "region_geometry",
    "relation_prompts",
    "relation_tag_text",
    "shuffled_like_vg_dataset",
    "tag_text",
    "vcr_coloring",
    "vcr_textize",
    "xywh_to_cpt_xyxy",
]
