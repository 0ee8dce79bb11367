"""CPT scoring: the masked-LM logits at the [MASK] of painted-image prompts, turned into the scores of the authors'
evaluation code (thunlp/CPT `Oscar/oscar/{zeroshot,fewshot}/*_cpt.py`; `../shared/fixtures/cpt/README.md` §4).

* grounding, zero-shot: one painted copy of the image per candidate; the candidate's score is the RAW logit of its
  colour word at the [MASK] position (`zeroshot/refcoco_cpt.py val`); the highest wins.
* grounding, few-shot: score = logit(colour) / logit("none") (`fewshot/refcoco_cpt.py val`, a ratio of raw logits)
  after fine-tuning with the masked-LM cross-entropy on the colour word (`hf_vlp.cpt.tuning`).
* relations (`fewshot/vg_cpt.py val`): the subject painted red, the object blue; predicate k with L word pieces is
  scored with the L-mask prompt by the mean log-softmax probability of its pieces at the L masks.
* VCR (`fewshot/vcr_nsp_cpt.py`): the image-text matching head; an answer's score is the probability that text_b
  belongs to the question and image (Oscar+: `1 - softmax(seq_relationship)[1]`).
* GQA (`fewshot/gqa_cpt.py`): MLM logits at the [MASK] of text_b over the first word piece of every answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..processing.cpt import CptProcessor, PaintedCopy, color_token_id, to_rgb_array
from .adapters import adapter_for

# The VG predicates CPT renames before tokenizing (`fewshot/vg_cpt.py val`: rel2rel).
PREDICATE_REWRITES = {"has": "having", "wears": "wearing", "says": "saying"}
GROUNDING_METHODS = ("zero_shot", "ratio")

# ------------------------------------------------------------------------------------------------------------------
# Scoring primitives (tensors in, tensors out)
# ------------------------------------------------------------------------------------------------------------------


def mask_logits(model, inputs: dict, mask_positions: torch.Tensor) -> torch.Tensor:
    """MLM logits (B, M, V) in fp32 at `mask_positions` (B, M); the vocabulary projection runs only there."""
    adapter = adapter_for(model)
    hidden = adapter.text_hidden_states(inputs)
    positions = mask_positions.to(hidden.device)
    if positions.dim() == 1:
        positions = positions[:, None]
    if positions.shape[0] != hidden.shape[0]:
        raise ValueError(f"`mask_positions` has {positions.shape[0]} rows for {hidden.shape[0]} inputs.")
    gathered = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
    return adapter.mlm_logits(gathered).float()


def grounding_scores(
    logits: torch.Tensor, color_ids: torch.Tensor, none_id: int | None = None, method: str = "zero_shot"
) -> torch.Tensor:
    """Per painted copy and colour: the raw colour-word logit (`zero_shot`) or logit(colour) / logit(none)
    (`ratio`, the few-shot evaluation; unstable when the `none` logit is near 0, as in the original).

    logits: (N, V) at each copy's [MASK]; color_ids: (N, k) colour word ids of the copy's k colours."""
    if method not in GROUNDING_METHODS:
        raise ValueError(f"`method` must be one of {GROUNDING_METHODS}, got {method!r}.")
    color_ids = torch.as_tensor(color_ids, device=logits.device).reshape(logits.shape[0], -1)
    scores = logits.gather(1, color_ids)
    if method == "ratio":
        if none_id is None:
            raise ValueError("method='ratio' needs `none_id`, the id of the negative word ('none').")
        scores = scores / logits[:, none_id : none_id + 1]
    return scores


def predicate_token_ids(tokenizer, predicates: Sequence[str], rewrites=PREDICATE_REWRITES) -> list[list[int]]:
    """Word-piece ids of each predicate after CPT's renaming (`has` -> `having` ...)."""
    ids = []
    for predicate in predicates:
        pieces = tokenizer.tokenize(rewrites.get(predicate, predicate))
        if not pieces:
            raise ValueError(f"predicate {predicate!r} has no word pieces.")
        ids.append(tokenizer.convert_tokens_to_ids(pieces))
    return ids


def relation_scores(log_probs: Sequence[torch.Tensor], predicate_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Mean log-probability of each predicate's word pieces (`fewshot/vg_cpt.py val`).

    log_probs: entry n-1 is the (n, V) log-softmax at the n masks of the n-mask prompt; predicate_ids: pieces per
    predicate (length L scored with the L-mask prompt). Returns (num_predicates,)."""
    scores = torch.empty(len(predicate_ids), dtype=torch.float32, device=log_probs[0].device)
    for k, pieces in enumerate(predicate_ids):
        if not 1 <= len(pieces) <= len(log_probs):
            raise ValueError(
                f"predicate {k} has {len(pieces)} word pieces; prompts were built with 1..{len(log_probs)} masks "
                "(raise `max_masks`)."
            )
        table = log_probs[len(pieces) - 1]
        scores[k] = table[
            torch.arange(len(pieces), device=table.device), torch.as_tensor(pieces, device=table.device)
        ].mean()
    return scores


def answer_first_piece_scores(logits: torch.Tensor, tokenizer, answers: Sequence[str]) -> torch.Tensor:
    """GQA (`gqa_cpt.py`): logits (N, V) at the [MASK] restricted to the FIRST word piece of every answer."""
    first = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(a)[:1] or [tokenizer.unk_token])[0] for a in answers]
    return logits[:, torch.as_tensor(first, device=logits.device)]


# ------------------------------------------------------------------------------------------------------------------
# Region features of painted copies
# ------------------------------------------------------------------------------------------------------------------


def _extract(region_features, images, boxes) -> list[np.ndarray]:
    """`region_features`: an object with `.extract(images, boxes)` (e.g. `hf_vlp.data.RegionFeatureExtractor`) or a
    callable `(images, boxes) -> list of (N_i, D)`; boxes are pixel x1, y1, x2, y2 per image."""
    extract = getattr(region_features, "extract", region_features)
    if not callable(extract):
        raise ValueError("`region_features` must be a callable (images, boxes) -> features or have `.extract`.")
    features = extract(images, boxes)
    if len(features) != len(images):
        raise ValueError(f"`region_features` returned {len(features)} feature sets for {len(images)} images.")
    return [np.asarray(f, dtype=np.float32) for f in features]


def region_inputs(
    features: Sequence[np.ndarray],
    boxes_xyxy: Sequence[np.ndarray],
    width: float,
    height: float,
    max_regions: int | None = None,
) -> dict:
    """Padded `visual_feats`, `visual_pos` (boxes / image size: CPT's 6-d geometry is derived from it inside
    Oscar) and `visual_attention_mask`, one row per painted copy."""
    rows = len(features)
    longest = max(len(f) for f in features)
    if max_regions is not None:
        if longest > max_regions:
            raise ValueError(f"{longest} regions but `max_regions` = {max_regions}.")
        longest = max_regions
    dim = features[0].shape[1]
    visual_feats = torch.zeros(rows, longest, dim)
    visual_pos = torch.zeros(rows, longest, 4)
    visual_mask = torch.zeros(rows, longest, dtype=torch.long)
    scale = np.array([width, height, width, height], dtype=np.float32)
    for i, (feats, boxes) in enumerate(zip(features, boxes_xyxy)):
        n = len(feats)
        if len(boxes) != n:
            raise ValueError(f"copy {i}: {n} region features but {len(boxes)} boxes.")
        visual_feats[i, :n] = torch.from_numpy(np.asarray(feats, dtype=np.float32))
        visual_pos[i, :n] = torch.from_numpy(np.asarray(boxes, dtype=np.float32) / scale)
        visual_mask[i, :n] = 1
    return {"visual_feats": visual_feats, "visual_pos": visual_pos, "visual_attention_mask": visual_mask}


# ------------------------------------------------------------------------------------------------------------------
# Visual grounding
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class GroundingInputs:
    """Everything one referring expression becomes: model inputs (one row per painted copy), where the [MASK] is,
    which candidate each (copy, colour) stands for, and the few-shot target per copy."""

    inputs: dict
    mask_positions: torch.Tensor  # (copies,)
    color_ids: torch.Tensor  # (copies, k)
    candidates: list[list[int]]  # per copy, the painted candidate indices (aligned with color_ids)
    copies: list[PaintedCopy]
    texts: list[tuple[str, str | None]]
    target_words: list[str] | None = None


def grounding_inputs(
    processor: CptProcessor,
    image,
    boxes,
    text: str,
    region_features,
    labels=None,
    masks=None,
    box_format: str = "xywh",
    target_box=None,
    span=None,
) -> GroundingInputs:
    """Paint one copy per candidate (per colour group), extract every candidate's features from every copy, and
    tokenize the processor's template (default `<text> is in [MASK] color.`) with, if `labels` are given, the
    object tags carrying the painted candidate's colour word."""
    pixels = to_rgb_array(image)
    height, width = pixels.shape[:2]
    encoded = processor(pixels, text, boxes=boxes, labels=labels, masks=masks, box_format=box_format, span=span)
    copies, texts = encoded["painted_copies"], encoded["texts"]
    rects = np.concatenate([np.asarray(c.rects, dtype=np.float64) for c in copies])
    # every candidate's feature from every painted copy (the detector runs with FORCE_BOXES on all candidates)
    detector_boxes = np.clip(rects, 0, [width, height, width, height])
    features = _extract(region_features, [c.image for c in copies], [detector_boxes] * len(copies))
    inputs = {k: encoded[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    inputs.update(region_inputs(features, [detector_boxes] * len(copies), width, height))
    k = len(processor.colors)
    color_ids = torch.full((len(copies), k), -1, dtype=torch.long)
    for c, copy in enumerate(copies):
        color_ids[c, : len(copy.colors)] = torch.tensor(processor.color_token_ids([col.name for col in copy.colors]))
    targets = None
    if target_box is not None:
        targets = processor.grounding_targets(copies, target_box, box_format)
    return GroundingInputs(
        inputs, encoded["mask_positions"], color_ids, [c.candidates for c in copies], copies, texts, targets
    )


@dataclass
class GroundingResult:
    """`scores` (num_candidates,) in candidate order, `best_index`, and what was painted / asked."""

    scores: torch.Tensor
    best_index: int
    method: str
    texts: list = field(default_factory=list)
    copies: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "scores": self.scores.tolist(),
            "best_index": self.best_index,
            "method": self.method,
            "prompts": [list(t) for t in self.texts],
        }


def _check_finite(scores: torch.Tensor, what: str = "scores", hint: str = "") -> torch.Tensor:
    """`scores` unchanged if every value is finite; otherwise a ValueError naming the bad entries."""
    flat = scores.detach().flatten()
    finite = torch.isfinite(flat)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:10].tolist()
        raise ValueError(
            f"{what} contain NaN or infinite values at flat indices {bad} ({flat[bad].tolist()}): check the "
            f"model weights and the region features for NaN/inf{hint}."
        )
    return scores


def candidate_scores(
    logits: torch.Tensor, prepared: GroundingInputs, none_id: int | None = None, method: str = "zero_shot"
) -> torch.Tensor:
    """Scores in candidate order from the (copies, V) mask logits (the `val()` loops of CPT, vectorised). A NaN or
    infinite score is an error: the best candidate would be meaningless (argmax picks NaN)."""
    color_ids = prepared.color_ids.clamp_min(0)
    per_copy = grounding_scores(logits, color_ids, none_id, method)
    num_candidates = sum(len(c) for c in prepared.candidates)
    scores = torch.empty(num_candidates, dtype=per_copy.dtype, device=per_copy.device)
    for c, candidates in enumerate(prepared.candidates):
        scores[candidates] = per_copy[c, : len(candidates)]
    hint = "; method='ratio' divides by the `none` logit, which must not be 0" if method == "ratio" else ""
    _check_finite(scores, f"candidate scores ({method})", hint)
    return scores


@torch.no_grad()
def ground(
    model,
    processor: CptProcessor,
    image,
    boxes,
    text: str,
    region_features,
    labels=None,
    masks=None,
    box_format: str = "xywh",
    method: str = "zero_shot",
    span=None,
) -> GroundingResult:
    """Zero-shot (`method="zero_shot"`) or few-shot (`"ratio"`) CPT grounding of `text` among candidate `boxes`."""
    if method not in GROUNDING_METHODS:
        raise ValueError(f"`method` must be one of {GROUNDING_METHODS}, got {method!r}.")
    prepared = grounding_inputs(processor, image, boxes, text, region_features, labels, masks, box_format, span=span)
    was_training = model.training
    model.eval()
    try:
        logits = mask_logits(model, prepared.inputs, prepared.mask_positions)[:, 0]
    finally:
        model.train(was_training)
    none_id = color_token_id(processor.tokenizer, processor.none_word)
    scores = candidate_scores(logits, prepared, none_id, method).cpu()
    return GroundingResult(scores, int(scores.argmax()), method, prepared.texts, prepared.copies)


# ------------------------------------------------------------------------------------------------------------------
# Relations, VCR
# ------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def predicate_scores(
    model, inputs: dict, mask_positions: Sequence[Sequence[int]], predicate_ids, max_masks: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and reverse predicate scores of one painted pair from its `2 * max_masks` prompt rows
    (`CptProcessor.relation_texts` order: 1..max_masks masks forward, then reversed)."""
    if len(mask_positions) != 2 * max_masks:
        raise ValueError(f"expected {2 * max_masks} prompt rows (forward and reverse), got {len(mask_positions)}.")
    adapter = adapter_for(model)
    hidden = adapter.text_hidden_states(inputs)
    log_probs = [
        adapter.mlm_logits(hidden[row, torch.as_tensor(list(positions), device=hidden.device)]).float().log_softmax(-1)
        for row, positions in enumerate(mask_positions)
    ]
    forward = _check_finite(relation_scores(log_probs[:max_masks], predicate_ids), "forward predicate scores")
    reverse = _check_finite(relation_scores(log_probs[max_masks:], predicate_ids), "reverse predicate scores")
    return forward, reverse


def relation_inputs(
    processor: CptProcessor,
    image,
    boxes_xyxy,
    pair: tuple[int, int],
    labels: Sequence[str],
    region_features,
    colors="vg",
    max_masks: int = 3,
) -> tuple[dict, list[list[int]], object]:
    """VG-style relation prompts of one ordered pair: the subject painted red and the object blue on one copy,
    every box's feature from it, and the `2 * max_masks` prompt rows (`vg_test_dataset.py`). Returns the model
    inputs, the mask positions per row and the painted image."""
    pixels = to_rgb_array(image)
    height, width = pixels.shape[:2]
    if len(labels) != len(boxes_xyxy):
        raise ValueError(f"got {len(labels)} `labels` for {len(boxes_xyxy)} boxes; pass one object name per box.")
    painted = processor.paint_relation(pixels, boxes_xyxy, pair, colors)
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    features = _extract(region_features, [painted], [boxes])
    texts = processor.relation_texts(labels[pair[0]], labels[pair[1]], labels, pair, colors, max_masks)
    encoded = processor.encode(texts, expected_masks=None)
    positions = encoded["mask_positions"]
    for row, row_positions in enumerate(positions):
        if len(row_positions) != row % max_masks + 1:
            raise ValueError(
                f"prompt {row} ({texts[row][0]!r}) lost its [MASK] tokens to truncation; "
                "raise the processor's `max_text_length`."
            )
    inputs = {k: encoded[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    regions = region_inputs(features, [boxes], width, height)
    inputs.update({k: v.expand(len(texts), *v.shape[1:]) for k, v in regions.items()})
    return inputs, positions, painted


@torch.no_grad()
def predict_relation(
    model,
    processor: CptProcessor,
    image,
    boxes_xyxy,
    pair: tuple[int, int],
    labels,
    predicates: Sequence[str],
    region_features,
    max_masks: int = 3,
):
    """Scores of every predicate for `subject pair[0] -> object pair[1]` and the reverse direction (mean
    log-probability of the predicate's word pieces; `fewshot/vg_cpt.py val`). Returns (forward, reverse)."""
    inputs, positions, _ = relation_inputs(
        processor, image, boxes_xyxy, pair, labels, region_features, max_masks=max_masks
    )
    predicate_ids = predicate_token_ids(processor.tokenizer, predicates)
    was_training = model.training
    model.eval()
    try:
        return predicate_scores(model, inputs, positions, predicate_ids, max_masks)
    finally:
        model.train(was_training)


@torch.no_grad()
def answer_scores(model, inputs: dict) -> torch.Tensor:
    """VCR (`NSPCPT`): per (question, answer) row the matching head's probability that the answer belongs."""
    return _check_finite(adapter_for(model).match_probability(inputs), "answer scores")
