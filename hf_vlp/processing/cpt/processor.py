"""`CptProcessor`: paints CPT's coloured regions and builds the prompts and token rows of every task of the paper,
as a `transformers.ProcessorMixin` whose options (colours with their alpha, prompt template, text length, quirks
switch, negative word) are saved in `processor_config.json` next to the tokenizer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from .geometry import cpt_iou_xywh, finite_boxes, rect_to_xywh, xywh_to_cpt_xyxy
from .painting import (
    CptColor,
    _as_palette,
    check_boxes,
    paint_boxes,
    paint_masks,
    paint_polygons,
    to_rgb_array,
)
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
    vcr_textize,
)
from .rle import decode_rle
from .tokens import color_token_id, encode_pair


@dataclass
class PaintedCopy:
    """One painted copy of the image: the painted candidates (indices) and their colours."""

    image: Image.Image
    candidates: list[int]
    colors: list[CptColor]
    rects: list[list[float]]  # painted rects as the original reports them (RefCOCO: x1, y1, x + w - 1, y + h - 1)


class CptProcessor(ProcessorMixin):
    """Paints CPT's coloured blocks and builds the prompts and token rows for every task of the paper.

    Calling the processor prepares one referring expression for grounding (painted copies, prompts, token rows);
    the methods below expose each step and the other tasks (relations, GQA, VCR). `save_pretrained` writes the
    tokenizer and `processor_config.json` with every option below; `from_pretrained` restores them.

    Args:
        tokenizer: a BERT word-piece tokenizer (the model's).
        colors: the grounding palette (a name in `PALETTES` or a list of `CptColor` / (name, (R, G, B[, A]))); each
            painted copy colours `len(colors)` candidates, one per colour. CPT's scripts use one colour (red). A
            colour's alpha is its transparency (127 in the released code).
        template: RefCOCO prompt template (1-6 or a format string with `{caption}` and one `[MASK]`).
        max_text_length: text positions per row (Oscar/CPT: 70; VCR: 165).
        original_quirks: reproduce the released code's bugs byte for byte (see `hf_vlp.processing.cpt.prompts`).
        none_word: the negative answer word of few-shot grounding.
    """

    def __init__(
        self,
        tokenizer,
        colors="refcoco",
        template=3,
        max_text_length: int = 70,
        original_quirks: bool = False,
        none_word: str = "none",
    ):
        super().__init__(tokenizer)
        self.colors = _as_palette(colors)
        names = [c.name for c in self.colors]
        if len(set(names)) != len(names):
            raise ValueError(f"grounding colours in one copy must have distinct names, got {names}.")
        if isinstance(template, str):
            refexp_prompt("x", template)  # validates the template now
        elif template not in REFEXP_TEMPLATES:
            raise ValueError(
                f"`template` must be one of {sorted(REFEXP_TEMPLATES)} or a format string, got {template!r}."
            )
        self.template = template
        self.max_text_length = int(max_text_length)
        self.original_quirks = bool(original_quirks)
        self.none_word = none_word
        for color in self.colors:
            color_token_id(tokenizer, color.name)
        color_token_id(tokenizer, none_word)

    def to_dict(self) -> dict:
        """The options saved in `processor_config.json`; colours as `[name, [R, G, B, A]]`, which `colors=` takes."""
        output = super().to_dict()
        output["colors"] = [[c.name, list(c.rgba)] for c in self.colors]
        return output

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> CptProcessor:
        """Load the tokenizer and the saved options; keyword arguments naming an option (`colors`, `template`,
        `max_text_length`, `original_quirks`, `none_word`) override the saved value, the others go to
        `ProcessorMixin.from_pretrained` (Hub download, tokenizer)."""
        options = {name: kwargs.pop(name) for name in _OPTIONS if name in kwargs}
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if not options:
            return processor
        # the tokenizer must not receive the options as its own init kwargs (it would save them), hence two steps
        settings = {name: value for name, value in processor.to_dict().items() if name in _OPTIONS}
        return cls(processor.tokenizer, **{**settings, **options})

    def __call__(
        self,
        images=None,
        text: str | None = None,
        boxes=None,
        labels: Sequence[str] | None = None,
        masks=None,
        box_format: str = "xywh",
        span=None,
    ) -> BatchFeature:
        """Grounding rows of one referring expression `text` among the candidate `boxes` of one image: one painted
        copy per candidate group (`paint_candidates`; with `masks` the masks are painted), the template prompt and,
        if `labels` (one object tag per candidate) are given, the tags with each painted candidate's colour word.

        Returns a `BatchFeature` with `input_ids`, `token_type_ids`, `attention_mask` (copies, max_text_length) and
        `mask_positions` (copies,) tensors, and `painted_copies` (a `PaintedCopy` per row: the image to run the
        detector on and the candidates it paints) and `texts` ((text_a, text_b) per row). Region features of the
        painted copies come from the caller's detector (`hf_vlp.cpt.grounding_inputs` adds them)."""
        if images is None or text is None:
            raise ValueError("CptProcessor needs `images` (one image) and `text` (its referring expression).")
        if isinstance(images, (list, tuple)):
            raise ValueError(
                f"`images` must be one image (PIL or (H, W, 3) uint8), got a {type(images).__name__}; "
                "CPT grounds one expression in one image per call."
            )
        copies = self.paint_candidates(images, boxes=boxes, masks=masks, box_format=box_format)
        num_candidates = sum(len(c.candidates) for c in copies)
        if labels is not None and len(labels) != num_candidates:
            raise ValueError(f"got {len(labels)} `labels` (object tags) for {num_candidates} candidate boxes.")
        texts = self.grounding_texts(text, labels, copies, span=span)
        encoded = self.encode(texts)
        data = {k: encoded[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        data.update(mask_positions=encoded["mask_positions"][:, 0], painted_copies=copies, texts=texts)
        return BatchFeature(data)

    # -------------------------------------------------------------------------------------------- grounding
    def paint_candidates(
        self, image, boxes=None, masks=None, box_format: str = "xywh", max_copies: int | None = None
    ) -> list[PaintedCopy]:
        """RefCOCO painting (`RefCoCoDataset.__getitem__`): copy c colours candidates `c*k ... c*k+k-1` with colours
        `0 ... k-1` (k = number of colours). Boxes are `[x, y, w, h]` (COCO, default) or `[x1, y1, x2, y2]`; with
        `masks` (one (H, W) array or COCO RLE per candidate) the masks are painted instead of the boxes.
        `max_copies` bounds the number of painted copies: more candidates than colours allow is an error."""
        pixels = to_rgb_array(image)
        height, width = pixels.shape[:2]
        if boxes is None and masks is None:
            raise ValueError("pass candidate `boxes` (and optionally their `masks`).")
        if boxes is None:
            boxes = [
                _mask_box(decode_rle(m, (height, width), name=f"masks[{i}]") if isinstance(m, dict) else np.asarray(m))
                for i, m in enumerate(masks)
            ]
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

    def grounding_texts(
        self, caption: str, labels: Sequence[str] | None, copies: Sequence[PaintedCopy], span=None, template=None
    ) -> list[tuple[str, str | None]]:
        """(text_a, text_b) per painted copy: the template prompt and the tags with each painted candidate's colour
        word in front of its tag (text_b is None without `labels`, e.g. for models pretrained without tags)."""
        text_a = refexp_prompt(
            clean_caption(caption), self.template if template is None else template, span, self.original_quirks
        )
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
        finite_boxes([target], name="target_box")
        target_rect = xywh_to_cpt_xyxy([target])[0].tolist() if box_format == "xywh" else target
        targets = []
        for copy in copies:
            ious = [cpt_iou_xywh(rect_to_xywh(target_rect), rect_to_xywh(rect)) for rect in copy.rects]
            best = int(np.argmax(ious))
            targets.append(copy.colors[best].name if ious[best] > 0.5 else self.none_word)
        return targets

    def encode(
        self, texts: Sequence[tuple[str, str | None]], max_length: int | None = None, expected_masks: int | None = 1
    ) -> dict:
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
        boxes = finite_boxes(boxes_xyxy, name="boxes_xyxy")
        if not all(0 <= p < len(boxes) for p in pair) or pair[0] == pair[1]:
            raise ValueError(f"`pair` {pair} must be two different box indices below {len(boxes)}.")
        return paint_boxes(image, boxes[list(pair)], palette[:2], inclusive=False)

    def relation_texts(
        self, subject: str, object: str, labels: Sequence[str], pair: tuple[int, int], colors="vg", max_masks: int = 3
    ) -> list[tuple[str, str]]:
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


_OPTIONS = ("colors", "template", "max_text_length", "original_quirks", "none_word")


def _mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("an empty mask has no box; pass `boxes` with the masks.")
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
