"""LXMERT pre-training batches, built on the shared `DataCollatorForVLPretraining` pieces (negatives, word masking,
region masking) with the original recipe (`src/pretrain/lxmert_pretrain.py`, `lxmert_data.py`):

* every example masks 15 % of its words (80 % [MASK], 10 % random, 10 % kept) AND 15 % of its regions, matched or
  not (no conditional masking); masked region features are zeroed (80 %), replaced by another region's feature
  (10 %; the original draws it from the whole dataset, here from the batch) or kept (10 %);
* matching: with probability 1/2 an example gets another example's image (the original swaps the sentence; the
  pair is mismatched either way) -> `matched_label` 0;
* object and attribute prediction at EVERY region, each weighted by the detector's confidence (from the class
  distribution column: argmax over non-background classes and its probability; gold labels count with weight 1);
  feature regression at the masked regions only;
* QA: the answer of the example's text (sampled by answer score when there are several), -100 when the text has no
  answer or the pair is mismatched.

Output names are transformers' (`labels`, `obj_labels={"obj"|"attr"|"feat": (targets, weights)}`,
`matched_label`, `ans`). Train with `remove_unused_columns=False`.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from hf_vlp.pretraining.collators import DataCollatorForVLPretraining

LXMERT_OBJECTIVES = ("mlm", "itm", "obj", "attr", "feat", "qa")

LXMERT_FIELDS = {
    "region_attributes": "region_colors",  # per-region attribute ids (the shapes world's colours)
    "answer_ids": "answer_ids",  # list of answer ids of the text (VQA-style rows)
    "answer_scores": "answer_scores",  # their soft scores (optional)
}


@dataclass
class LxmertPretrainingCollator(DataCollatorForVLPretraining):
    """Rows -> `LxmertForPreTraining` keyword arguments (see the module docstring). `processor`: `LxmertProcessor`.

    `objectives` is a subset of ("mlm", "itm", "obj", "attr", "feat", "qa"); targets of an objective whose columns a
    row set lacks are left out (e.g. no answers -> no `ans`). Only joint sampling (every objective every batch, as
    the original) is supported.
    """

    objectives: tuple = LXMERT_OBJECTIVES
    fields: dict = field(default_factory=dict)

    def __post_init__(self):
        unknown = set(self.objectives) - set(LXMERT_OBJECTIVES)
        if unknown:
            raise ValueError(f"unknown LXMERT objectives {sorted(unknown)}; expected a subset of {LXMERT_OBJECTIVES}")
        if self.objective_sampling != "joint":
            raise ValueError(
                "LXMERT pre-training trains every objective in every batch: objective_sampling must be 'joint'"
            )
        requested = tuple(self.objectives)
        self.objectives = tuple(name for name in requested if name in ("mlm", "itm"))  # the shared names
        self.fields = {**LXMERT_FIELDS, **self.fields}
        super().__post_init__()
        self.objectives = requested

    def __call__(self, rows):
        self._record_call()
        active = set(self.objectives)
        get = lambda name: [row[self.fields[name]] for row in rows]  # noqa: E731
        for name in ("text", "visual_feats", "boxes"):
            if self.fields[name] not in rows[0]:
                raise ValueError(f"rows need a {self.fields[name]!r} column (collator field {name!r}).")
        if "itm" in active:
            order, matched = self._sample_negatives(len(rows))
        else:
            order, matched = torch.arange(len(rows)), torch.ones(len(rows), dtype=torch.bool)
        pick = lambda values: [values[i] for i in order.tolist()]  # noqa: E731

        region_fields = self._object_targets(rows, pick) if active & {"obj", "attr"} else {}
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
        every_row = torch.ones(len(rows), dtype=torch.bool)
        if "mlm" in active:
            batch["input_ids"], batch["labels"] = self._mask_tokens(
                batch["input_ids"], batch.get("attention_mask"), every_row
            )

        obj_labels = {}
        for key in ("obj", "attr"):
            if key in active and f"{key}_ids" in batch:
                obj_labels[key] = (batch.pop(f"{key}_ids"), batch.pop(f"{key}_weights"))
        if active & {"obj", "attr", "feat"}:
            region_mask = self._mask_regions(batch["visual_attention_mask"], every_row)
            if "feat" in active:
                obj_labels["feat"] = (batch["visual_feats"].clone(), region_mask.float())
            batch["visual_feats"] = self._corrupt_features(
                batch["visual_feats"], batch["visual_attention_mask"], region_mask
            )
        if obj_labels:
            batch["obj_labels"] = obj_labels
        if "itm" in active:
            batch["matched_label"] = matched.long()
        if "qa" in active and self.fields["answer_ids"] in rows[0]:
            batch["ans"] = self._answers(rows).masked_fill(~matched, -100)
        return batch

    # -- pieces -------------------------------------------------------------------------------------------------

    def _object_targets(self, rows, pick):
        """Per-region (ids, weights) for objects (detector argmax over non-background + its confidence, or gold
        labels with weight 1) and attributes (gold ids, weight 1); padded regions get weight 0."""
        fields = {}
        probs_field, labels_field = self.fields["region_class_probs"], self.fields["region_labels"]
        if probs_field in rows[0]:
            probs = [np.asarray(p, dtype=np.float32) for p in pick([row[probs_field] for row in rows])]
            fields["obj_ids"] = [p[:, 1:].argmax(-1) + 1 for p in probs]  # index 0 is the background class
            fields["obj_weights"] = [p[np.arange(len(p)), ids] for p, ids in zip(probs, fields["obj_ids"])]
        elif labels_field in rows[0]:
            fields["obj_ids"] = [np.asarray(ids, dtype=np.int64) for ids in pick([row[labels_field] for row in rows])]
            fields["obj_weights"] = [np.ones(len(ids), dtype=np.float32) for ids in fields["obj_ids"]]
        attributes = self.fields["region_attributes"]
        if attributes in rows[0]:
            fields["attr_ids"] = [np.asarray(a, dtype=np.int64) for a in pick([row[attributes] for row in rows])]
            fields["attr_weights"] = [np.ones(len(a), dtype=np.float32) for a in fields["attr_ids"]]
        return fields

    def _corrupt_features(self, features, visual_attention_mask, region_mask):
        """80 % of the masked regions zeroed, 10 % given a random valid region's feature from the batch, 10 % kept."""
        draw = torch.rand(region_mask.shape, generator=self._mask_rng)
        features = features.clone()
        replace = region_mask & (draw >= 0.8) & (draw < 0.9)
        if replace.any():
            pool = features[visual_attention_mask.bool()]
            index = torch.randint(len(pool), (int(replace.sum()),), generator=self._mask_rng)
            features[replace] = pool[index]
        features[region_mask & (draw < 0.8)] = 0.0
        return features

    def _answers(self, rows):
        """One answer id per row (sampled by score when there are several, as `convert_example_to_features`)."""
        ids_field, scores_field = self.fields["answer_ids"], self.fields["answer_scores"]
        answers = []
        for row in rows:
            ids = list(row.get(ids_field) or [])
            if not ids:
                answers.append(-100)
                continue
            scores = np.asarray(row.get(scores_field) or [1.0] * len(ids), dtype=np.float64)
            if len(ids) == 1 or scores.sum() <= 0:
                answers.append(int(ids[0]))
                continue
            choice = torch.multinomial(torch.as_tensor(scores / scores.sum()), 1, generator=self._mask_rng).item()
            answers.append(int(ids[choice]))
        return torch.tensor(answers, dtype=torch.long)
