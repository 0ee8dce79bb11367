"""Controls that say whether a trained model's answers come from the image.

An accuracy alone proves little on the shapes world: a question's wording often gives its answer away ("is there
...?" is a yes/no question, "how many ...?" a small number). So the demo and every example print, per question type
and measured the same way:

    accuracy   the trained model on the held-out questions with their own images;
    prior      the most frequent training answer of each question type (what the question alone is worth);
    shuffled   the same trained model, each question given another image's regions or pixels.

A model that looks at the image scores well above both controls; a model that ignores the image scores exactly its
shuffled control, which is then near the prior. For ranking tasks (retrieval) the controls are chance and the same
model scored against a shuffled gallery; for grounding (referring expressions) a random box and the most frequent
target position.

The helpers take a `predict(rows) -> labels` function, so they serve region models, pixel models and generative
models alike; `classifier_predict` builds one from a model and a task collator.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

# Columns that describe an image rather than the text about it (the shapes world and the COCO / VQA loaders).
IMAGE_COLUMN_PREFIXES = ("image", "boxes", "region_", "pixel_values", "visual_")
OVERALL = "overall"


def image_columns(column_names: Sequence[str]) -> list[str]:
    """The columns that move with an image when images are shuffled (both images of an NLVR2 row included)."""
    return [name for name in column_names if name.startswith(IMAGE_COLUMN_PREFIXES)]


def as_rows(data) -> list[dict]:
    """A list of row dicts from a list (returned as is) or a `datasets.Dataset`."""
    if isinstance(data, list):
        return data
    return [data[i] for i in range(len(data))]


def shuffle_images(data, seed: int = 0, id_column: str = "image_id") -> list[dict]:
    """Rows whose text is kept and whose image columns come from another image.

    The distinct images are put on one random cycle and every row of image A receives the columns of the next image
    on the cycle, so no row keeps its own image, rows that shared an image still share one, and every image is
    used as often as before. Needs at least two distinct images.
    """
    rows = as_rows(data)
    if not rows:
        raise ValueError("`data` is empty: nothing to shuffle.")
    if id_column not in rows[0]:
        raise ValueError(f"rows need an {id_column!r} column to tell images apart; got columns {sorted(rows[0])}.")
    columns = image_columns(rows[0].keys())
    first_row_of = {}
    for index, row in enumerate(rows):
        first_row_of.setdefault(row[id_column], index)
    images = list(first_row_of)
    if len(images) < 2:
        raise ValueError("shuffling images needs at least two distinct images.")
    order = np.random.default_rng(seed).permutation(len(images))
    successor = {images[order[k]]: images[order[(k + 1) % len(order)]] for k in range(len(order))}
    shuffled = []
    for row in rows:
        donor = rows[first_row_of[successor[row[id_column]]]]
        shuffled.append({**row, **{name: donor[name] for name in columns}})
    return shuffled


def majority_by_group(train, label_key: str = "answer", group_key: str | None = "question_type") -> dict:
    """The most frequent training label of each group (ties broken by the label's sort order), and overall."""
    rows = as_rows(train)
    if not rows:
        raise ValueError("`train` is empty: the prior needs training labels.")
    counts: dict = collections.defaultdict(collections.Counter)
    for row in rows:
        label = row[label_key]
        counts[OVERALL][label] += 1
        if group_key is not None:
            counts[row[group_key]][label] += 1
    return {
        group: min(counter.items(), key=lambda item: (-item[1], str(item[0])))[0] for group, counter in counts.items()
    }


def _accuracy_by_group(predictions, labels, groups) -> dict[str, float]:
    predictions, labels = np.asarray(predictions, dtype=object), np.asarray(labels, dtype=object)
    correct = predictions == labels
    scores = {OVERALL: float(correct.mean())}
    if groups is not None:
        groups = np.asarray(groups, dtype=object)
        for group in sorted(set(groups.tolist()), key=str):
            scores[str(group)] = float(correct[groups == group].mean())
    return scores


@dataclass
class ControlReport:
    """Accuracy next to its controls, per group (question type) and overall. `counts` is the number of examples."""

    task: str
    accuracy: dict[str, float]
    controls: dict[str, dict[str, float]]  # control name -> group -> score
    counts: dict[str, int] = field(default_factory=dict)

    def margin(self, control: str = "shuffled", group: str = OVERALL) -> float:
        return self.accuracy[group] - self.controls[control][group]

    def to_dict(self) -> dict:
        return {"task": self.task, "accuracy": self.accuracy, "controls": self.controls, "counts": self.counts}

    def format(self) -> str:
        """A fixed-width table: one row per group (or per recall@K of a ranking report), accuracy then each
        control; every column at least as wide as its name."""
        names = list(self.controls)
        widths = [max(10, len(name) + 2) for name in names]
        header = f"{'':<12}{'n':>6}{'accuracy':>10}" + "".join(f"{name:>{w}}" for name, w in zip(names, widths))
        lines = [header]
        groups = [g for g in self.accuracy if g != OVERALL] + ([OVERALL] if OVERALL in self.accuracy else [])
        for group in groups:
            line = f"{group:<12}{self.counts.get(group, 0):>6}{self.accuracy[group]:>10.3f}"
            line += "".join(f"{self.controls[name].get(group, float('nan')):>{w}.3f}" for name, w in zip(names, widths))
            lines.append(line)
        return "\n".join(lines)


def classification_controls(
    predict: Callable[[list[dict]], Sequence],
    train,
    evaluation,
    label_key: str = "answer",
    group_key: str | None = "question_type",
    task: str = "vqa",
    seed: int = 0,
) -> ControlReport:
    """Accuracy of `predict` on `evaluation`, the per-group training prior, and `predict` on shuffled images.

    `predict(rows)` returns one label per row, comparable with `row[label_key]` (an answer string for VQA, a class
    id for entailment / NLVR2). Groups come from `group_key` (None: overall only).
    """
    rows = as_rows(evaluation)
    if not rows:
        raise ValueError("`evaluation` is empty.")
    labels = [row[label_key] for row in rows]
    groups = [row[group_key] for row in rows] if group_key is not None else None
    predictions = list(predict(rows))
    if len(predictions) != len(rows):
        raise ValueError(f"`predict` returned {len(predictions)} labels for {len(rows)} rows.")
    shuffled_predictions = list(predict(shuffle_images(rows, seed=seed)))
    majority = majority_by_group(train, label_key, group_key)
    prior_predictions = [
        majority.get(g, majority[OVERALL]) if groups is not None else majority[OVERALL]
        for g in (groups or [None] * len(rows))
    ]
    counts = collections.Counter(str(g) for g in groups) if groups is not None else {}
    return ControlReport(
        task=task,
        accuracy=_accuracy_by_group(predictions, labels, groups),
        controls={
            "prior": _accuracy_by_group(prior_predictions, labels, groups),
            "shuffled": _accuracy_by_group(shuffled_predictions, labels, groups),
        },
        counts={**counts, OVERALL: len(rows)},
    )


def classifier_predict(model, collator, labels: Sequence | None = None, batch_size: int = 64):
    """`predict(rows)` for a classification head: the collator's batch through `model`, arg-max of `logits`.

    `labels` maps class ids to the values the rows hold (e.g. `SHAPES_VQA_ANSWERS` for VQA answers); without it the
    class ids are returned.
    """

    def predict(rows):
        was_training = model.training
        model.eval()
        predicted = []
        try:
            with torch.no_grad():
                for start in range(0, len(rows), batch_size):
                    batch = collator(rows[start : start + batch_size])
                    batch.pop("labels", None)
                    predicted += model(**batch).logits.argmax(-1).tolist()
        finally:
            model.train(was_training)
        return [labels[i] for i in predicted] if labels is not None else predicted

    return predict


def region_predict(model, collator, offset: int = 0, batch_size: int = 64):
    """`predict(rows)` for a referring-expression head (`logits` (B, R) over the regions): the arg-max region,
    less `offset` (1 where the processor prepends a whole-image region, as ViLBERT's does), so it compares with
    the rows' `target_index`."""
    classify = classifier_predict(model, collator, batch_size=batch_size)
    return lambda rows: [index - offset for index in classify(rows)]


def ranking_controls(
    score: Callable[[list[dict]], torch.Tensor],
    rows,
    ks: Sequence[int] = (1, 5),
    seed: int = 0,
    task: str = "retrieval",
) -> ControlReport:
    """Text-to-image recall@K over a gallery of `rows` (row i's text matches row i's image), against chance (K/N)
    and the same scores with the gallery's images shuffled (the true match is then another image).

    `score(rows)` returns an (N texts, N images) similarity matrix for the texts and images of `rows`.
    """
    rows = as_rows(rows)
    if len(rows) < 2:
        raise ValueError("ranking needs a gallery of at least two rows.")

    def recall(similarity):
        similarity = torch.as_tensor(similarity, dtype=torch.float32)
        if similarity.shape != (len(rows), len(rows)):
            raise ValueError(f"`score` must return a ({len(rows)}, {len(rows)}) matrix, got {tuple(similarity.shape)}.")
        target = similarity.diagonal()[:, None]
        rank = (similarity > target).sum(1)  # images scored above the true one: ties favour nobody
        return {f"R@{k}": float((rank < k).float().mean()) for k in ks}

    real = recall(score(rows))
    shuffled = recall(score(shuffle_images(rows, seed=seed)))
    chance = {f"R@{k}": min(k, len(rows)) / len(rows) for k in ks}
    return ControlReport(
        task=task,
        accuracy=real,
        controls={"chance": chance, "shuffled": shuffled},
        counts={name: len(rows) for name in real},
    )


def grounding_controls(
    predict: Callable[[list[dict]], Sequence[int]],
    train,
    evaluation,
    target_key: str = "target_index",
    boxes_key: str = "boxes",
    task: str = "refexp",
) -> ControlReport:
    """Referring-expression accuracy (predicted region index == target) against a random box (the expected
    accuracy of picking one of the image's regions uniformly) and the most frequent training target index."""
    rows = as_rows(evaluation)
    if not rows:
        raise ValueError("`evaluation` is empty.")
    targets = np.array([row[target_key] for row in rows])
    predictions = np.asarray(list(predict(rows)))
    if len(predictions) != len(rows):
        raise ValueError(f"`predict` returned {len(predictions)} indices for {len(rows)} rows.")
    random_box = float(np.mean([1.0 / max(len(row[boxes_key]), 1) for row in rows]))
    position = majority_by_group(train, target_key, None)[OVERALL]
    overall = {OVERALL: float((predictions == targets).mean())}
    return ControlReport(
        task=task,
        accuracy=overall,
        controls={"random box": {OVERALL: random_box}, "prior": {OVERALL: float((targets == position).mean())}},
        counts={OVERALL: len(rows)},
    )
