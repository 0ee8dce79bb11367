"""CPT — Colorful Prompt Tuning (Yao et al. 2021, "CPT: Colorful Prompt Tuning for Pre-trained Vision-Language
Models"): paint image regions with semi-transparent colours and ask a masked-LM vision-language model which colour a
phrase refers to ("<caption> is in [MASK] color.").

This package is the processing half; `hf_vlp.cpt` scores its rows with a model. Everything follows the authors'
released code (GitHub thunlp/CPT, commit c0347e8), as documented in `../shared/fixtures/cpt/README.md`:

* `painting`: the colour tables, Pillow's integer blend, boxes, masks and polygons;
* `rle`: COCO run-length decoding (RefCOCO detection masks);
* `geometry`: RefCOCO's box conventions and IoU, the 6-d region geometry, VG's overlapping pairs;
* `prompts`: the RefCOCO / VG / GQA / VCR prompt texts, with `original_quirks` for the released code's bugs;
* `tokens`: Oscar's `[CLS] a [SEP] b [SEP]` token rows;
* `processor`: `CptProcessor`, a `transformers.ProcessorMixin` tying them together.
"""

from .geometry import (
    cpt_iou_xywh,
    finite_boxes,
    overlapping_pairs,
    rect_to_xywh,
    region_geometry,
    shuffled_like_vg_dataset,
    xywh_to_cpt_xyxy,
)
from .painting import (
    BLUE,
    GREEN,
    PALETTES,
    PURPLE,
    RED,
    YELLOW,
    CptColor,
    blend_mask,
    box_block,
    check_boxes,
    paint_boxes,
    paint_masks,
    paint_polygons,
    polygon_mask,
    to_rgb_array,
)
from .processor import CptProcessor, PaintedCopy
from .prompts import (
    MASK,
    REFEXP_TEMPLATES,
    VcrColoring,
    clean_caption,
    insert_colors,
    refexp_prompt,
    relation_prompts,
    relation_tag_text,
    tag_text,
    vcr_coloring,
    vcr_textize,
)
from .rle import MAX_RLE_PIXELS, decode_rle, rle_size
from .tokens import TokenRow, color_token_id, encode_pair

__all__ = [
    "BLUE",
    "GREEN",
    "MASK",
    "MAX_RLE_PIXELS",
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
    "finite_boxes",
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
    "rle_size",
    "shuffled_like_vg_dataset",
    "tag_text",
    "to_rgb_array",
    "vcr_coloring",
    "vcr_textize",
    "xywh_to_cpt_xyxy",
]
