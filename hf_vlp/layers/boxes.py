"""Boxes: validation of `visual_pos` and the location features each architecture derives from it.

`visual_pos` is always (B, R, 4) `x1, y1, x2, y2` normalized to [0, 1] by image width/height (docs/design.md,
"Input vocabulary"); each model
derives the location vector its original was trained with, inside the model, so one processor serves all.
"""

import torch


def check_visual_inputs(visual_feats, visual_pos, visual_attention_mask=None, batch_size=None, feature_dim=None):
    """Raise a `ValueError` naming the argument when region inputs do not fit together or hold values no model can use.

    Shapes: against each other, the text `batch_size` and the model's `feature_dim`. Values: non-finite features or
    boxes (anywhere, padding included), boxes of real regions outside [0, 1] (pixel boxes: normalize them by the
    image size, as `RegionFeatureProcessor` does) or with x2 < x1 / y2 < y1, and an attention mask holding anything
    but 0 and 1. The value checks read the data, so
    they are skipped while tracing or compiling (one device sync per call otherwise).
    """
    if visual_feats is None:
        raise ValueError("`visual_feats` is required: region features of shape (batch, regions, feature_dim).")
    if visual_feats.dim() != 3:
        raise ValueError(
            f"`visual_feats` must be (batch, regions, feature_dim), got shape {tuple(visual_feats.shape)}."
        )
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
    if feature_dim is not None and visual_feats.shape[-1] != feature_dim:
        raise ValueError(
            f"`visual_feats` must have {feature_dim} features per region (the config's visual feature size), got "
            f"{visual_feats.shape[-1]}."
        )
    check_region_values(visual_feats, visual_pos, visual_attention_mask)


def check_region_values(visual_feats, visual_pos=None, visual_attention_mask=None, feats_name="visual_feats"):
    """The value checks of `check_visual_inputs` (shapes already checked): non-finite features or boxes, boxes of
    real regions outside [0, 1] or with x2 < x1 / y2 < y1, an attention mask holding anything but 0 and 1. Without
    `visual_pos` (a model that takes no boxes, VisualBERT) the box checks are skipped; `feats_name` is the argument
    name in the message. One device sync for every check; skipped while tracing or compiling."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or visual_feats.device.type == "meta":
        return
    problems = {  # name -> (batch, regions) bool map of offending regions, checked in this order
        "visual_feats non-finite": ~torch.isfinite(visual_feats.detach()).all(-1),
    }
    if visual_pos is not None:
        # normalized detector boxes may exceed [0, 1] by rounding; pixel boxes are far outside
        tolerance = 1e-2
        boxes = visual_pos.detach()
        x1, y1, x2, y2 = boxes.unbind(-1)
        # padded regions may hold any box, but no nan / inf: attention gives them weight 0, and 0 * nan is nan
        real = torch.ones_like(x1, dtype=torch.bool)
        if visual_attention_mask is not None:
            real = visual_attention_mask.detach() != 0
        problems.update(
            {
                "visual_pos non-finite": ~torch.isfinite(boxes).all(-1),
                "visual_pos range": ((boxes < -tolerance) | (boxes > 1 + tolerance)).any(-1) & real,
                "visual_pos order": ((x2 < x1 - tolerance) | (y2 < y1 - tolerance)) & real,
            }
        )
    if visual_attention_mask is not None and visual_attention_mask.dtype != torch.bool:
        mask = visual_attention_mask.detach()
        problems["visual_attention_mask"] = (mask != 0) & (mask != 1)
    found = torch.stack([bad.any() for bad in problems.values()]).tolist()  # one sync for every check
    if not any(found):
        return
    name, bad = next((name, bad) for (name, bad), hit in zip(problems.items(), found) if hit)
    example, region = (int(i) for i in bad.nonzero()[0])
    where = f"example {example}, region {region}"
    if name == "visual_feats non-finite":
        raise ValueError(f"`{feats_name}` holds NaN or infinite values at {where} ({int(bad.sum())} region(s) in all).")
    if name == "visual_attention_mask":
        value = visual_attention_mask[example, region].item()
        raise ValueError(
            f"`visual_attention_mask` must hold 0 (padding) or 1 (region), got {value} at {where}; soft masks are "
            "not supported."
        )
    box = [round(float(v), 4) for v in visual_pos[example, region]]
    if name == "visual_pos non-finite":
        raise ValueError(f"`visual_pos` holds NaN or infinite values at {where}: {box}.")
    if name == "visual_pos range":
        raise ValueError(
            f"`visual_pos` must be x1,y1,x2,y2 normalized to [0, 1] by the image width and height; {where} is {box}. "
            "Pixel boxes? Divide by (width, height, width, height), as RegionFeatureProcessor does."
        )
    raise ValueError(
        f"`visual_pos` must be x1,y1,x2,y2 with x2 >= x1 and y2 >= y1; {where} is {box}. "
        "x,y,w,h boxes must be converted to corners first."
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
