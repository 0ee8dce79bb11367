"""Data collators that make the inputs and targets of the VLP pretraining objectives, for any region model.

`DataCollatorForVLPretraining` turns dataset rows (text + region features + boxes [+ detector class labels or
distributions]) into one model batch with:
  * ITM: in-batch negatives — with probability `itm_negative_probability` an example's image is replaced by another
    example's image (never its own) and `itm_labels` is 0, else 1;
  * MLM: BERT masking of `mlm_probability` of the text tokens (80% [MASK], 10% random token, 10% unchanged);
  * MRM: `mrm_probability` of the regions masked (at least one per example, as UNITER's `_get_img_mask`); the
    model zeroes their features and adds a mask embedding. Targets: original features (MRFR), hard classes (MRC,
    from gold labels or the argmax of detector distributions without background) and distributions (MRC-KL).
Conditional masking (UNITER): only matching pairs get masked, and each matching example masks one modality — text
or regions — never both. With `objective_sampling="per_batch"` one objective is drawn per batch by `objective_ratios`
(UNITER's task sampling); the draw uses a generator seeded identically on every rank, so all DDP ranks train the same
objective at the same step.

Label names are a mapping so that models with other argument names (transformers' LXMERT / VisualBERT) reuse it.
"""

import random
from dataclasses import dataclass, field

import numpy as np
import torch

OBJECTIVES = ("mlm", "mrfr", "mrc", "mrc_kl", "itm")

DEFAULT_LABEL_NAMES = {
    "mlm": "labels",
    "region_mask": "region_mask",
    "mrfr": "region_feature_labels",
    "mrc": "region_class_labels",
    "mrc_kl": "region_soft_labels",
    "itm": "itm_labels",
}

DEFAULT_FIELDS = {
    "text": "text",
    "visual_feats": "region_features",
    "boxes": "boxes",
    "image_width": "image_width",
    "image_height": "image_height",
    "region_labels": "region_labels",
    "region_class_probs": "region_class_probs",
}


@dataclass
class DataCollatorForVLPretraining:
    """Rows -> a pretraining batch for `processor`'s model. See the module docstring for the objectives.

    Args:
        processor: a region processor (`RegionTextProcessor` subclass) — tokenizer + `RegionFeatureProcessor`.
        objectives: subset of ("mlm", "mrfr", "mrc", "mrc_kl", "itm").
        objective_sampling: "joint" (every objective in every batch, conditional masking per example) or
            "per_batch" (one objective per batch, drawn by `objective_ratios`).
        label_names / fields: rename the model arguments / dataset columns.
        seed: seeds the objective draw (same on all ranks) and the masking generator (offset by rank).
    """

    processor: object
    objectives: tuple = OBJECTIVES
    mlm_probability: float = 0.15
    mrm_probability: float = 0.15
    itm_negative_probability: float = 0.5
    objective_sampling: str = "joint"
    objective_ratios: dict | None = None
    max_length: int | None = None
    label_names: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.objectives) - set(OBJECTIVES)
        if unknown:
            raise ValueError(f"unknown objectives {sorted(unknown)}; expected a subset of {OBJECTIVES}")
        if self.objective_sampling not in ("joint", "per_batch"):
            raise ValueError(f"`objective_sampling` must be 'joint' or 'per_batch', got {self.objective_sampling!r}")
        self.label_names = {**DEFAULT_LABEL_NAMES, **self.label_names}
        self.fields = {**DEFAULT_FIELDS, **self.fields}
        ratios = self.objective_ratios or {name: 1.0 for name in self.objectives}
        self._objective_names = [name for name in self.objectives if ratios.get(name, 0) > 0]
        self._objective_weights = [ratios[name] for name in self._objective_names]
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self._objective_rng = random.Random(self.seed)  # identical on every rank
        self._mask_rng = torch.Generator().manual_seed(self.seed * 1000 + rank + 1)
        # generator states before each of the last few calls, so that a Trainer checkpoint can store the state its
        # next batch will be drawn with (the data loader collates a batch ahead of the step that uses it)
        self._calls = 0
        self._states_before_call = {}

    # -- public -------------------------------------------------------------------------------------------------

    def rng_state(self, before_call: int | None = None) -> dict:
        """The masking and objective generators' state: now, or as it was before call number `before_call`
        (one of the last few calls, or the next one)."""
        if before_call is None or before_call == self._calls:
            return {
                "calls": self._calls,
                "objective": self._objective_rng.getstate(),
                "mask": self._mask_rng.get_state(),
            }
        if before_call not in self._states_before_call:
            raise ValueError(
                f"no generator state is kept for call {before_call}: this collator has made {self._calls} calls and "
                f"keeps the state before calls {sorted(self._states_before_call)}"
            )
        return self._states_before_call[before_call]

    def set_rng_state(self, state: dict) -> None:
        """Restore a state from `rng_state` (a resumed run then masks its next batch as the interrupted one would)."""
        self._objective_rng.setstate(state["objective"])
        self._mask_rng.set_state(state["mask"])
        self._calls = state["calls"]
        self._states_before_call = {}

    def _record_call(self) -> None:
        """Keep the generators' state before this call (subclasses that replace `__call__` call it first)."""
        self._states_before_call[self._calls] = self.rng_state()
        self._states_before_call.pop(self._calls - 4, None)
        self._calls += 1

    def __call__(self, rows: list[dict]) -> dict:
        self._record_call()
        if self.objective_sampling == "per_batch":
            active = {self._objective_rng.choices(self._objective_names, self._objective_weights)[0]}
        else:
            active = set(self.objectives)
        get = lambda name: [row[self.fields[name]] for row in rows]  # noqa: E731
        for name in ("text", "visual_feats", "boxes"):
            if self.fields[name] not in rows[0]:
                raise ValueError(f"rows need a {self.fields[name]!r} column (collator field {name!r}).")

        image_order = torch.arange(len(rows))
        if "itm" in active:
            image_order, matched = self._sample_negatives(len(rows))
        else:
            matched = torch.ones(len(rows), dtype=torch.bool)
        pick = lambda values: [values[i] for i in image_order.tolist()]  # noqa: E731

        region_fields = {}
        mrm_active = active & {"mrfr", "mrc", "mrc_kl"}
        if "mrc" in mrm_active or "mrc_kl" in mrm_active:
            region_fields = self._region_targets(rows, pick)
        sizes = None
        if self.fields["image_width"] in rows[0]:
            sizes = list(zip(pick(get("image_width")), pick(get("image_height"))))
        batch = dict(
            self.processor(
                text=get("text"),
                visual_feats=pick(get("visual_feats")),
                boxes=pick(get("boxes")),
                image_sizes=sizes,
                max_length=self.max_length,
                **region_fields,
            )
        )

        # conditional masking: each matching example masks text or regions (or whichever is active)
        mask_text = matched.clone() if "mlm" in active else torch.zeros_like(matched)
        mask_regions = matched.clone() if mrm_active else torch.zeros_like(matched)
        both = mask_text & mask_regions
        coin = torch.rand(len(rows), generator=self._mask_rng) < 0.5
        mask_text &= ~both | coin
        mask_regions &= ~both | ~coin

        if "mlm" in active:
            batch["input_ids"], batch[self.label_names["mlm"]] = self._mask_tokens(
                batch["input_ids"], batch.get("attention_mask"), mask_text
            )
        if mrm_active:
            region_mask = self._mask_regions(batch["visual_attention_mask"], mask_regions)
            batch[self.label_names["region_mask"]] = region_mask
            if "mrfr" in mrm_active:
                batch[self.label_names["mrfr"]] = batch["visual_feats"].clone()
            hard = batch.pop("region_labels", None)
            soft = batch.pop("region_class_probs", None)
            if "mrc" in mrm_active:
                batch[self.label_names["mrc"]] = hard.masked_fill(~region_mask, -100)
            if "mrc_kl" in mrm_active:
                batch[self.label_names["mrc_kl"]] = soft
        else:
            batch.pop("region_labels", None)
            batch.pop("region_class_probs", None)
        if "itm" in active:
            batch[self.label_names["itm"]] = matched.long()
        return batch

    # -- pieces -------------------------------------------------------------------------------------------------

    def _sample_negatives(self, batch_size):
        """Each example keeps its image (label 1) or, with `itm_negative_probability`, takes another example's
        image (label 0). A batch of one cannot have in-batch negatives."""
        if batch_size < 2:
            return torch.arange(batch_size), torch.ones(batch_size, dtype=torch.bool)
        negative = torch.rand(batch_size, generator=self._mask_rng) < self.itm_negative_probability
        # shifting by 1..B-1 never maps an index to itself
        shift = torch.randint(1, batch_size, (batch_size,), generator=self._mask_rng)
        order = torch.arange(batch_size)
        order = torch.where(negative, (order + shift) % batch_size, order)
        return order, ~negative

    def _region_targets(self, rows, pick):
        """Per-region hard classes and distributions: gold labels where the data has them, else the argmax of the
        detector distribution over non-background classes (UNITER's MRC target)."""
        labels_field, probs_field = self.fields["region_labels"], self.fields["region_class_probs"]
        if labels_field not in rows[0] and probs_field not in rows[0]:
            raise ValueError(
                f"MRC / MRC-KL need region classes: rows have neither {labels_field!r} nor {probs_field!r}."
            )
        probs = pick([row[probs_field] for row in rows]) if probs_field in rows[0] else None
        if labels_field in rows[0]:
            labels = pick([np.asarray(row[labels_field], dtype=np.int64) for row in rows])
        else:
            labels = [np.asarray(p)[:, 1:].argmax(-1) + 1 for p in probs]
        fields = {"region_labels": labels}
        if "mrc_kl" in self.objectives:
            if probs is None:
                raise ValueError(f"MRC-KL needs detector class distributions in column {probs_field!r}.")
            fields["region_class_probs"] = [np.asarray(p, dtype=np.float32) for p in probs]
        return fields

    def _mask_tokens(self, input_ids, attention_mask, rows_to_mask):
        tokenizer = self.processor.tokenizer
        special = torch.tensor(
            [tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True) for ids in input_ids.tolist()],
            dtype=torch.bool,
        )
        if attention_mask is not None:
            special |= attention_mask == 0
        probability = torch.full(input_ids.shape, self.mlm_probability).masked_fill(special, 0.0)
        probability[~rows_to_mask] = 0.0
        masked = torch.bernoulli(probability, generator=self._mask_rng).bool()
        # at least one token per masked row, so every selected example contributes (UNITER's random_word does too)
        empty = rows_to_mask & ~masked.any(1) & (~special).any(1)
        if empty.any():
            scores = torch.rand(input_ids.shape, generator=self._mask_rng).masked_fill(special, -1)
            first = scores.argmax(1)
            masked[empty, first[empty]] = True
        labels = input_ids.masked_fill(~masked, -100)
        input_ids = input_ids.clone()
        draw = torch.rand(input_ids.shape, generator=self._mask_rng)
        input_ids[masked & (draw < 0.8)] = tokenizer.mask_token_id
        random_tokens = masked & (draw >= 0.8) & (draw < 0.9)
        input_ids[random_tokens] = torch.randint(len(tokenizer), (int(random_tokens.sum()),), generator=self._mask_rng)
        return input_ids, labels

    def _mask_regions(self, visual_attention_mask, rows_to_mask):
        valid = visual_attention_mask.bool() & rows_to_mask[:, None]
        masked = (torch.rand(valid.shape, generator=self._mask_rng) < self.mrm_probability) & valid
        empty = rows_to_mask & ~masked.any(1) & valid.any(1)
        if empty.any():
            first = torch.rand(valid.shape, generator=self._mask_rng).masked_fill(~valid, -1).argmax(1)
            masked[empty, first[empty]] = True
        return masked


TASK_LABELS = ("vqa", "entailment", "nlvr2", "refexp", "retrieval")


@dataclass
class DataCollatorForVLTask:
    """Rows of a downstream task -> model inputs + `labels`, for any region model's processor.

    task:
      * "vqa": text from `question`; `labels` (B, num_labels) soft scores from `answer_ids` / `answer_scores`.
      * "entailment": `labels` = `label` (class id).
      * "nlvr2": two images per row (columns with a `_2` suffix); region inputs stacked to (B, 2, R, ...).
      * "refexp": `labels` = `target_index`, the referred region.
      * "retrieval": every text with its own image and `retrieval_negatives` other images of the batch, in groups
        (positive first) and `group_size` for the model's ranking loss.
    """

    processor: object
    task: str
    num_labels: int | None = None
    retrieval_negatives: int = 1
    max_length: int | None = None
    fields: dict = field(default_factory=dict)
    processor_kwargs: dict = field(default_factory=dict)  # e.g. {"question_answering": True} for VisualBERT

    def __post_init__(self):
        if self.task not in TASK_LABELS:
            raise ValueError(f"`task` must be one of {TASK_LABELS}, got {self.task!r}")
        if self.task == "vqa" and not self.num_labels:
            raise ValueError("task 'vqa' needs `num_labels` (the size of the answer vocabulary).")
        self.fields = {**DEFAULT_FIELDS, **self.fields}

    def _encode(self, rows, texts=None, suffix="", order=None):
        """The model's own processor on (texts and) the rows' region data, so model-specific names and extras
        (e.g. VisualBERT's `visual_embeds` and region token types) come out as the model takes them."""
        f = self.fields
        order = range(len(rows)) if order is None else order
        sizes = None
        if f["image_width"] + suffix in rows[0]:
            sizes = [(rows[i][f["image_width"] + suffix], rows[i][f["image_height"] + suffix]) for i in order]
        return dict(
            self.processor(
                text=texts,
                visual_feats=[rows[i][f["visual_feats"] + suffix] for i in order],
                boxes=[rows[i][f["boxes"] + suffix] for i in order],
                image_sizes=sizes,
                max_length=self.max_length,
                **self.processor_kwargs,
            )
        )

    def __call__(self, rows):
        text_field = "question" if self.task == "vqa" else self.fields["text"]
        texts = [row[text_field] for row in rows]
        if self.task == "retrieval":
            return self._retrieval(rows, texts)
        batch = self._encode(rows, texts)
        if self.task == "nlvr2":
            second = self._encode(rows, suffix="_2")
            regions = max(batch["visual_attention_mask"].shape[1], second["visual_attention_mask"].shape[1])
            pad = lambda t: torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, regions - t.shape[1]))  # noqa: E731
            for name in second:
                batch[name] = torch.stack([pad(batch[name]), pad(second[name])], dim=1)
            batch["labels"] = torch.tensor([row["label"] for row in rows])
            return batch
        if self.task == "vqa":
            labels = torch.zeros(len(rows), self.num_labels)
            for i, row in enumerate(rows):
                for answer, score in zip(row["answer_ids"], row["answer_scores"]):
                    labels[i, answer] = max(labels[i, answer].item(), score)
            batch["labels"] = labels
        elif self.task == "refexp":
            # a prepended whole-image region (ViLBERT) shifts every region index by one
            offset = int(getattr(self.processor.image_processor, "add_global_region", False))
            batch["labels"] = torch.tensor([row["target_index"] + offset for row in rows])
        else:
            batch["labels"] = torch.tensor([row["label"] for row in rows])
        return batch

    def _retrieval(self, rows, texts):
        size = len(rows)
        negatives = min(self.retrieval_negatives, size - 1)
        if negatives < 1:
            raise ValueError("retrieval batches need at least 2 rows to draw in-batch negative images.")
        group = negatives + 1
        # text i with image i (positive), then images i+1, ..., i+negatives (negatives)
        order = [(i + k) % size for i in range(size) for k in range(group)]
        batch = self._encode(rows, [texts[i] for i in range(size) for _ in range(group)], order=order)
        batch["group_size"] = group
        return batch
