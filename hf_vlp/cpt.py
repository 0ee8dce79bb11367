"""CPT — Colorful Prompt Tuning (Yao et al. 2021): zero-shot and few-shot visual grounding, relation prediction and
answer scoring with any masked-LM vision-language model of hf_vlp.

    from hf_vlp import cpt
    from hf_vlp.processing.cpt import CptProcessor

    processor = CptProcessor(tokenizer)                      # red blocks, "<caption> is in [MASK] color."
    result = cpt.ground(model, processor, image, boxes, "woman in orange suit", labels=tags,
                        region_features=RegionFeatureExtractor.default())
    result.best_index, result.scores

How CPT scores (the authors' code, thunlp/CPT `Oscar/oscar/{zeroshot,fewshot}/*_cpt.py`; see
`../shared/fixtures/cpt/README.md` §4):

* grounding, zero-shot: one painted copy of the image per candidate; the candidate's score is the RAW logit of its
  colour word at the [MASK] position (`zeroshot/refcoco_cpt.py val`); the highest wins.
* grounding, few-shot: score = logit(colour) / logit("none") (`fewshot/refcoco_cpt.py val`, a ratio of raw logits)
  after fine-tuning with the masked-LM cross-entropy on the colour word (positives) or "none" (negatives).
* relations (`fewshot/vg_cpt.py val`): the subject painted red, the object blue; predicate k with L word pieces is
  scored with the L-mask prompt by the mean log-softmax probability of its pieces at the L masks.
* VCR (`fewshot/vcr_nsp_cpt.py`): the image-text matching head; an answer's score is the probability that text_b
  belongs to the question and image (Oscar+: `1 - softmax(seq_relationship)[1]`).
* GQA (`fewshot/gqa_cpt.py`): MLM logits at the [MASK] of text_b over the first word piece of every answer.

A model family plugs in through a small `CptAdapter` (text hidden states, MLM head, matching head); adapters for
Oscar/VinVL and UNITER are registered here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .processing.cpt import CptProcessor, PaintedCopy, color_token_id, to_rgb_array

# The VG predicates CPT renames before tokenizing (`fewshot/vg_cpt.py val`: rel2rel).
PREDICATE_REWRITES = {"has": "having", "wears": "wearing", "says": "saying"}
GROUNDING_METHODS = ("zero_shot", "ratio")

# ------------------------------------------------------------------------------------------------------------------
# Model adapters
# ------------------------------------------------------------------------------------------------------------------

ADAPTERS: dict[str, type] = {}


def register_adapter(*model_types: str):
    """Class decorator: use this `CptAdapter` for models whose `config.model_type` is one of `model_types`."""

    def wrap(cls):
        for model_type in model_types:
            ADAPTERS[model_type] = cls
        return cls

    return wrap


class CptAdapter:
    """What CPT needs from a masked-LM VL model. Inputs use hf_vlp's vocabulary (docs/design.md): `input_ids`,
    `attention_mask`, `token_type_ids` (B, T), `visual_feats` (B, R, D), `visual_pos` (B, R, 4) normalized boxes,
    `visual_attention_mask` (B, R)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def text_hidden_states(self, inputs: dict) -> torch.Tensor:
        """(B, T, H) final hidden states of the text positions."""
        raise NotImplementedError

    def mlm_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (..., V) from hidden states (..., H)."""
        raise NotImplementedError

    def match_probability(self, inputs: dict) -> torch.Tensor:
        """(B,) probability that the text belongs to the image (the pretraining matching head)."""
        raise NotImplementedError(f"{type(self).__name__} has no image-text matching head")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _model_inputs(inputs: dict, device) -> dict:
    names = ("input_ids", "attention_mask", "token_type_ids", "visual_feats", "visual_pos", "visual_attention_mask")
    missing = [n for n in ("input_ids", "visual_feats", "visual_pos") if inputs.get(n) is None]
    if missing:
        raise ValueError(f"CPT model inputs lack {missing}; expected the keys {names}.")
    return {n: inputs[n].to(device) for n in names if inputs.get(n) is not None}


def _submodule(model, names: Sequence[str], what: str):
    for name in names:
        module = getattr(model, name, None)
        if module is not None:
            return module
    raise ValueError(
        f"{type(model).__name__} has no {what} (looked for attributes {list(names)}); CPT needs the pretraining model "
        "with its masked-LM head (e.g. AutoModelForPreTraining)."
    )


@register_adapter("uniter")
class UniterAdapter(CptAdapter):
    """`UniterForPreTraining`: encoder `uniter`, MLM head `mlm_head`, ITM head `itm_head` (class 1 = matched)."""

    def text_hidden_states(self, inputs):
        encoder = _submodule(self.model, ("uniter",), "UNITER encoder `uniter`")
        return encoder(**_model_inputs(inputs, self.device)).text_hidden_state

    def mlm_logits(self, hidden_states):
        return _submodule(self.model, ("mlm_head",), "masked-LM head `mlm_head`")(hidden_states)

    def match_probability(self, inputs):
        encoder = _submodule(self.model, ("uniter",), "UNITER encoder `uniter`")
        pooled = encoder(**_model_inputs(inputs, self.device)).pooler_output
        return _submodule(self.model, ("itm_head",), "ITM head `itm_head`")(pooled).float().softmax(-1)[:, 1]


@register_adapter("oscar")
class OscarAdapter(CptAdapter):
    """`OscarForPreTraining` (Oscar / VinVL): encoder `oscar`, MLM head `mlm_head` and `contrastive_head` on the
    pooled output, whose class 1 means "polluted" (text_b does not belong to text_a and the image) in Oscar and
    Oscar+; CPT's VCR score is `1 - softmax(logits)[1]` (`vcr_nsp_cpt.py`)."""

    def _encoder(self):
        return _submodule(self.model, ("oscar",), "Oscar encoder `oscar`")

    def text_hidden_states(self, inputs):
        return self._encoder()(**_model_inputs(inputs, self.device)).text_hidden_state

    def mlm_logits(self, hidden_states):
        return _submodule(self.model, ("mlm_head",), "masked-LM head `mlm_head`")(hidden_states)

    def match_probability(self, inputs):
        pooled = self._encoder()(**_model_inputs(inputs, self.device)).pooler_output
        logits = _submodule(self.model, ("contrastive_head",), "contrastive head `contrastive_head`")(pooled)
        return 1.0 - logits.float().softmax(-1)[:, 1]


def adapter_for(model) -> CptAdapter:
    """The registered `CptAdapter` of a model (by `config.model_type`), or the model itself if it is one."""
    if isinstance(model, CptAdapter):
        return model
    from .registry import ARCHITECTURES
    from .spec import resolve

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    # an adapter registered by hand wins; else the architecture spec's `cpt_adapter`
    by_spec = {spec.model_type: spec.cpt_adapter for spec in ARCHITECTURES.values() if spec.cpt_adapter}
    if model_type not in ADAPTERS and model_type not in by_spec:
        raise ValueError(
            f"no CPT adapter for model_type {model_type!r} ({type(model).__name__}); "
            f"registered: {sorted(set(ADAPTERS) | set(by_spec))}. Write a `CptAdapter` subclass and name it in the "
            "architecture's spec (`cpt_adapter`) or decorate it with `@register_adapter('<model_type>')`."
        )
    return (ADAPTERS.get(model_type) or resolve(by_spec[model_type]))(model)


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


def grounding_scores(logits: torch.Tensor, color_ids: torch.Tensor, none_id: int | None = None,
                     method: str = "zero_shot") -> torch.Tensor:
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
        scores[k] = table[torch.arange(len(pieces), device=table.device), torch.as_tensor(pieces, device=table.device)].mean()
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


def region_inputs(features: Sequence[np.ndarray], boxes_xyxy: Sequence[np.ndarray], width: float, height: float,
                  max_regions: int | None = None) -> dict:
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


def grounding_inputs(processor: CptProcessor, image, boxes, text: str, region_features, labels=None, masks=None,
                     box_format: str = "xywh", target_box=None, span=None) -> GroundingInputs:
    """Paint one copy per candidate (per colour group), extract every candidate's features from every copy, and
    tokenize the processor's template (default `<text> is in [MASK] color.`) with, if `labels` are given, the
    object tags carrying the painted candidate's colour word."""
    pixels = to_rgb_array(image)
    height, width = pixels.shape[:2]
    copies = processor.paint_candidates(pixels, boxes=boxes, masks=masks, box_format=box_format)
    rects = np.concatenate([np.asarray(c.rects, dtype=np.float64) for c in copies])
    if labels is not None and len(labels) != len(rects):
        raise ValueError(f"got {len(labels)} `labels` (object tags) for {len(rects)} candidate boxes.")
    # every candidate's feature from every painted copy (the detector runs with FORCE_BOXES on all candidates)
    detector_boxes = np.clip(rects, 0, [width, height, width, height])
    features = _extract(region_features, [c.image for c in copies], [detector_boxes] * len(copies))
    texts = processor.grounding_texts(text, labels, copies, span=span)
    encoded = processor.encode(texts)
    inputs = {k: encoded[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    inputs.update(region_inputs(features, [detector_boxes] * len(copies), width, height))
    k = len(processor.colors)
    color_ids = torch.full((len(copies), k), -1, dtype=torch.long)
    for c, copy in enumerate(copies):
        color_ids[c, : len(copy.colors)] = torch.tensor(processor.color_token_ids([col.name for col in copy.colors]))
    targets = None
    if target_box is not None:
        targets = processor.grounding_targets(copies, target_box, box_format)
    return GroundingInputs(inputs, encoded["mask_positions"][:, 0], color_ids, [c.candidates for c in copies],
                           copies, texts, targets)


@dataclass
class GroundingResult:
    """`scores` (num_candidates,) in candidate order, `best_index`, and what was painted / asked."""

    scores: torch.Tensor
    best_index: int
    method: str
    texts: list = field(default_factory=list)
    copies: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"scores": self.scores.tolist(), "best_index": self.best_index, "method": self.method,
                "prompts": [list(t) for t in self.texts]}


def candidate_scores(logits: torch.Tensor, prepared: GroundingInputs, none_id: int | None = None,
                     method: str = "zero_shot") -> torch.Tensor:
    """Scores in candidate order from the (copies, V) mask logits (the `val()` loops of CPT, vectorised)."""
    color_ids = prepared.color_ids.clamp_min(0)
    per_copy = grounding_scores(logits, color_ids, none_id, method)
    num_candidates = sum(len(c) for c in prepared.candidates)
    scores = torch.empty(num_candidates, dtype=per_copy.dtype, device=per_copy.device)
    for c, candidates in enumerate(prepared.candidates):
        scores[candidates] = per_copy[c, : len(candidates)]
    return scores


@torch.no_grad()
def ground(model, processor: CptProcessor, image, boxes, text: str, region_features, labels=None, masks=None,
           box_format: str = "xywh", method: str = "zero_shot", span=None) -> GroundingResult:
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
def predicate_scores(model, inputs: dict, mask_positions: Sequence[Sequence[int]], predicate_ids,
                     max_masks: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
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
    return (relation_scores(log_probs[:max_masks], predicate_ids),
            relation_scores(log_probs[max_masks:], predicate_ids))


def relation_inputs(processor: CptProcessor, image, boxes_xyxy, pair: tuple[int, int], labels: Sequence[str],
                    region_features, colors="vg", max_masks: int = 3) -> tuple[dict, list[list[int]], object]:
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
            raise ValueError(f"prompt {row} ({texts[row][0]!r}) lost its [MASK] tokens to truncation; "
                             "raise the processor's `max_text_length`.")
    inputs = {k: encoded[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    regions = region_inputs(features, [boxes], width, height)
    inputs.update({k: v.expand(len(texts), *v.shape[1:]) for k, v in regions.items()})
    return inputs, positions, painted


@torch.no_grad()
def predict_relation(model, processor: CptProcessor, image, boxes_xyxy, pair: tuple[int, int], labels,
                     predicates: Sequence[str], region_features, max_masks: int = 3):
    """Scores of every predicate for `subject pair[0] -> object pair[1]` and the reverse direction (mean
    log-probability of the predicate's word pieces; `fewshot/vg_cpt.py val`). Returns (forward, reverse)."""
    inputs, positions, _ = relation_inputs(processor, image, boxes_xyxy, pair, labels, region_features,
                                           max_masks=max_masks)
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
    return adapter_for(model).match_probability(inputs)


# ------------------------------------------------------------------------------------------------------------------
# Few-shot tuning
# ------------------------------------------------------------------------------------------------------------------


def grounding_training_rows(processor: CptProcessor, examples: Sequence[dict], region_features, seed: int = 0,
                            balance: bool = True) -> list[dict]:
    """Training rows for few-shot CPT grounding (`RefcocoCPTDataset`, is_train=True).

    Each example: `image`, `boxes` (candidates), `text`, and `target_index` (the referred candidate) or
    `target_box`; optional `labels` (tags), `masks`, `box_format` ("xywh" default). Each painted copy becomes a row
    whose label is its colour word if it holds the target (CPT IoU > 0.5), else "none". With `balance` (as CPT):
    one positive copy per example and as many negatives, drawn with `random.Random(seed)`."""
    rng = random.Random(seed)
    none_id = color_token_id(processor.tokenizer, processor.none_word)
    rows = []
    for n, example in enumerate(examples):
        box_format = example.get("box_format", "xywh")
        target = example.get("target_box")
        if target is None:
            if "target_index" not in example:
                raise ValueError(f"example {n} needs `target_index` or `target_box`.")
            target = example["boxes"][int(example["target_index"])]
        prepared = grounding_inputs(processor, example["image"], example["boxes"], example["text"], region_features,
                                    example.get("labels"), example.get("masks"), box_format, target_box=target)
        words = prepared.target_words
        label_ids = processor.color_token_ids(words)
        positives = [c for c, w in enumerate(words) if w != processor.none_word]
        negatives = [c for c, w in enumerate(words) if w == processor.none_word]
        chosen = list(range(len(words)))
        if balance:
            if positives:
                rng.shuffle(positives)
                positives = positives[:1]
            rng.shuffle(negatives)
            chosen = positives + negatives[: max(len(positives), 1)]
        for c in chosen:
            row = {k: v[c] for k, v in prepared.inputs.items()}
            labels = torch.full_like(row["input_ids"], -100)
            labels[prepared.mask_positions[c]] = label_ids[c]
            row["labels"] = labels
            rows.append(row)
    if not any(int(r["labels"].max()) != none_id for r in rows):
        raise ValueError("no painted copy covers its target (CPT IoU > 0.5): check `target_index` / `target_box`.")
    return rows


class CptDataCollator:
    """Stacks CPT rows; pads `visual_feats`, `visual_pos`, `visual_attention_mask` to the longest row."""

    def __call__(self, rows: Sequence[dict]) -> dict:
        batch = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            if key in ("visual_feats", "visual_pos", "visual_attention_mask"):
                longest = max(v.shape[0] for v in values)
                values = [F.pad(v, (0, 0) * (v.dim() - 1) + (0, longest - v.shape[0])) for v in values]
            batch[key] = torch.stack(values)
        return batch


@dataclass
class CptMaskedLMOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class CptForMaskedLM(nn.Module):
    """Trains a model's prompt answers with the masked-LM loss: cross-entropy (fp32) of the vocabulary logits at
    the labelled positions (`labels` (B, T), -100 elsewhere), i.e. `REC_MLM_CPT`'s loss on the colour word.
    Trainer-ready; the wrapped model is trained in place (`cpt_model.model`)."""

    accepts_loss_kwargs = False

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.adapter = adapter_for(model)
        self.config = getattr(model, "config", None)

    def forward(self, input_ids, visual_feats, visual_pos, labels=None, attention_mask=None, token_type_ids=None,
                visual_attention_mask=None, **kwargs):
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      visual_feats=visual_feats, visual_pos=visual_pos, visual_attention_mask=visual_attention_mask)
        hidden = self.adapter.text_hidden_states(inputs)
        if labels is None:
            return CptMaskedLMOutput(logits=self.adapter.mlm_logits(hidden))
        if labels.shape != input_ids.shape:
            raise ValueError(f"`labels` must have the shape of `input_ids` {tuple(input_ids.shape)}, got {tuple(labels.shape)}.")
        selected = labels != -100
        logits = self.adapter.mlm_logits(hidden[selected]).float()
        loss = F.cross_entropy(logits, labels[selected]) if selected.any() else hidden.sum() * 0.0
        return CptMaskedLMOutput(loss=loss, logits=logits)


def few_shot_training_arguments(output_dir: str = "cpt-few-shot", **overrides):
    """`TrainingArguments` of `fewshot/refcoco_cpt.py`: AdamW, lr 3e-5, weight decay 0.01, betas (0.9, 0.98), 10%
    linear warm-up, 40 epochs; no checkpoints, no reporting."""
    from transformers import TrainingArguments

    defaults = dict(
        output_dir=output_dir, learning_rate=3e-5, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.98,
        warmup_steps=0.1, num_train_epochs=40, per_device_train_batch_size=32, save_strategy="no", report_to=[],
        use_cpu=not torch.cuda.is_available(), logging_steps=10, remove_unused_columns=False,
    )
    return TrainingArguments(**{**defaults, **overrides})


def tune(model, processor: CptProcessor, examples: Sequence[dict], region_features, training_args=None,
         seed: int = 0, **trainer_kwargs):
    """Few-shot CPT: fine-tune `model` in place with the MLM loss on the colour word / "none" through
    `transformers.Trainer` (`few_shot_training_arguments()` unless `training_args` is given); returns the Trainer."""
    from transformers import Trainer

    rows = grounding_training_rows(processor, examples, region_features, seed=seed)
    if training_args is None:
        training_args = few_shot_training_arguments(seed=seed)
    trainer = Trainer(model=CptForMaskedLM(model), args=training_args, train_dataset=_RowDataset(rows),
                      data_collator=CptDataCollator(), **trainer_kwargs)
    trainer.train()
    model.eval()
    return trainer


class _RowDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


# ------------------------------------------------------------------------------------------------------------------
# Command line: hf-vlp cpt ground --model DIR --image IMG --boxes BOXES --text TEXT
# ------------------------------------------------------------------------------------------------------------------


def add_cli(subparsers) -> None:
    """Add `cpt` (with the `ground` subcommand) to the `hf-vlp` argument parser."""
    parser = subparsers.add_parser("cpt", help="Colorful Prompt Tuning: zero-/few-shot grounding with painted regions")
    commands = parser.add_subparsers(dest="cpt_command", required=True)
    ground_parser = commands.add_parser("ground", help="pick the box a referring expression refers to")
    ground_parser.add_argument("--model", required=True, help="model folder or Hub id (masked-LM VL pretraining model)")
    ground_parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --model)")
    ground_parser.add_argument("--image", required=True, help="image file")
    ground_parser.add_argument("--boxes", required=True,
                               help="candidate boxes: a JSON file or string [[x, y, w, h], ...] (see --box-format)")
    ground_parser.add_argument("--box-format", choices=("xywh", "xyxy"), default="xywh")
    ground_parser.add_argument("--text", required=True, help="the referring expression")
    ground_parser.add_argument("--labels", default=None, help="object tags, one per box, comma separated or JSON list")
    ground_parser.add_argument("--masks", default=None, help="JSON file with one COCO RLE per box (paint masks)")
    ground_parser.add_argument("--method", choices=GROUNDING_METHODS, default="zero_shot",
                               help="zero_shot: colour logit; ratio: colour / none logit (after few-shot tuning)")
    ground_parser.add_argument("--template", default="3", help="1-6 or a string with {caption} and [MASK]")
    ground_parser.add_argument("--color", default="red", help="paint colour name (red, blue, ...)")
    ground_parser.add_argument("--region-features", default=None,
                               help=".npy of (candidates, candidates, D) features of the painted copies (default: "
                                    "EfficientNet-lite0 RoI features, hf_vlp.data.RegionFeatureExtractor)")
    ground_parser.add_argument("--save-painted", default=None, help="folder to write the painted copies to")
    ground_parser.set_defaults(run=run_cli)  # hf_vlp.cli dispatches to `args.run(args)`


def _json_or_file(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        with open(value) as handle:
            return json.load(handle)


def run_cli(args) -> int:
    import os

    from PIL import Image
    from transformers import AutoModelForPreTraining, AutoTokenizer

    import hf_vlp  # noqa: F401  (registers the architectures with the Auto classes)

    from .processing.cpt import PALETTES

    boxes = _json_or_file(args.boxes)
    labels = None
    if args.labels:
        labels = json.loads(args.labels) if args.labels.strip().startswith("[") else [s.strip() for s in args.labels.split(",")]
    masks = _json_or_file(args.masks) if args.masks else None
    known = {c.name: c for palette in PALETTES.values() for c in palette if palette is not PALETTES["demo"]}
    if args.color not in known:
        raise SystemExit(f"--color must be one of {sorted(known)}, got {args.color!r}")
    template = int(args.template) if args.template.isdigit() else args.template
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    processor = CptProcessor(tokenizer, colors=[known[args.color]], template=template)
    model = AutoModelForPreTraining.from_pretrained(args.model)
    image = Image.open(args.image).convert("RGB")
    if args.region_features:
        stored = np.load(args.region_features)

        def region_features(images, boxes_):
            if len(stored) != len(images):
                raise SystemExit(f"--region-features holds {len(stored)} copies, {len(images)} were painted")
            return list(stored)
    else:
        from .data import RegionFeatureExtractor

        region_features = RegionFeatureExtractor.default()
        expected = getattr(model.config, "visual_feat_dim", None)
        if expected is not None and expected != region_features.feature_dim:
            raise SystemExit(
                f"the model takes {expected}-d region features but the default extractor gives "
                f"{region_features.feature_dim}; pass --region-features with the model's own features"
            )
    result = ground(model, processor, image, boxes, args.text, region_features, labels=labels, masks=masks,
                    box_format=args.box_format, method=args.method)
    if args.save_painted:
        os.makedirs(args.save_painted, exist_ok=True)
        for c, copy in enumerate(result.copies):
            copy.image.save(os.path.join(args.save_painted, f"painted_{c}.png"))
    out = result.to_dict()
    out["best_box"] = boxes[result.best_index]
    print(json.dumps(out, indent=2))
    return 0


__all__ = [
    "ADAPTERS",
    "PREDICATE_REWRITES",
    "CptAdapter",
    "CptDataCollator",
    "CptForMaskedLM",
    "GroundingInputs",
    "GroundingResult",
    "OscarAdapter",
    "UniterAdapter",
    "adapter_for",
    "add_cli",
    "answer_first_piece_scores",
    "answer_scores",
    "candidate_scores",
    "few_shot_training_arguments",
    "grounding_inputs",
    "grounding_scores",
    "grounding_training_rows",
    "mask_logits",
    "predicate_scores",
    "predicate_token_ids",
    "predict_relation",
    "region_inputs",
    "register_adapter",
    "relation_inputs",
    "relation_scores",
    "run_cli",
    "tune",
]
