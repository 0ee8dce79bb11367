"""Boxes: validation of `visual_pos` and the location features each architecture derives from it.

`visual_pos` is always (B, R, 4) `x1, y1, x2, y2` normalized to [0, 1] by image width/height (docs/design.md,
"Input vocabulary"); each model
derives the location vector its original was trained with, inside the model, so one processor serves all.
"""

import torch


def check_visual_inputs(visual_feats, visual_pos, visual_attention_mask=None, batch_size=None):
    """Raise a `ValueError` naming the argument when region inputs do not fit together."""
    if visual_feats is None:
        raise ValueError("`visual_feats` is required: region features of shape (batch, regions, feature_dim).")
    if visual_feats.dim() != 3:
        raise ValueError(f"`visual_feats` must be (batch, regions, feature_dim), got shape {tuple(visual_feats.shape)}.")
    if visual_pos is None:
        raise ValueError("`visual_pos` is required: boxes of shape (batch, regions, 4), x1,y1,x2,y2 in [0, 1].")
    if visual_pos.dim() != 3 or visual_pos.shape[-1] != 4:
        raise ValueError(
            f"`visual_pos` must be (batch, regions, 4) normalized x1,y1,x2,y2 boxes, got shape {tuple(visual_pos.shape)}."
        )
    if visual_pos.shape[:2] != visual_feats.shape[:2]:
        raise ValueError(
            f"`visual_pos` {tuple(visual_pos.shape)} and `visual_feats` {tuple(visual_feats.shape)} must agree on "
            "(batch, regions)."
        )
    if visual_attention_mask is not None and visual_attention_mask.shape != visual_feats.shape[:2]:
        raise ValueError(
            f"`visual_attention_mask` must be (batch, regions) = {tuple(visual_feats.shape[:2])}, "
            f"got {tuple(visual_attention_mask.shape)}."
        )
    if batch_size is not None and visual_feats.shape[0] != batch_size:
        raise ValueError(
            f"text batch size {batch_size} and image batch size {visual_feats.shape[0]} (`visual_feats`) differ."
        )


def box_location_features(visual_pos: torch.Tensor, kind: str) -> torch.Tensor:
    """Location features from normalized `x1, y1, x2, y2` boxes.

    kind:
      * "xyxy" (4-d): the boxes as they are (LXMERT, VisualBERT-style inputs).
      * "xyxy_area" (5-d): x1, y1, x2, y2, w*h (ViLBERT).
      * "xyxy_wh" (6-d): x1, y1, x2, y2, w, h (Oscar / VinVL).
      * "xyxy_wh_area" (7-d): x1, y1, x2, y2, w, h, w*h (UNITER).
    """
    x1, y1, x2, y2 = visual_pos.unbind(-1)
    width, height = x2 - x1, y2 - y1
    if kind == "xyxy":
        return visual_pos
    if kind == "xyxy_area":
        return torch.stack([x1, y1, x2, y2, width * height], dim=-1)
    if kind == "xyxy_wh":
        return torch.stack([x1, y1, x2, y2, width, height], dim=-1)
    if kind == "xyxy_wh_area":
        return torch.stack([x1, y1, x2, y2, width, height, width * height], dim=-1)
    raise ValueError(f"unknown box feature kind {kind!r}; expected xyxy, xyxy_area, xyxy_wh or xyxy_wh_area")


BOX_FEATURE_SIZES = {"xyxy": 4, "xyxy_area": 5, "xyxy_wh": 6, "xyxy_wh_area": 7}
