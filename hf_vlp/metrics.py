"""The downstream tasks' standard metrics, written once: `hf-vlp eval`, the examples and `compute_metrics` use these.

| task | metric | function |
| --- | --- | --- |
| VQA v2 / GQA | official VQA soft accuracy (answer normalisation, leave-one-annotator-out) | `vqa_accuracy` |
| VCR | Q->A, QA->R and Q->AR accuracy | `vcr_accuracy` |
| NLVR2 | accuracy and consistency (every pair of a sentence right) | `nlvr2_accuracy` |
| SNLI-VE, classification | accuracy | `accuracy` |
| RefCOCO/+/g | accuracy at IoU >= 0.5 | `refexp_accuracy` |
| Flickr30k / COCO retrieval | R@1/5/10, image->text and text->image | `retrieval_recall` |
| captioning | BLEU-4 and CIDEr(-D) of pycocoevalcap | `caption_scores` |
| zero-shot classification | top-1 / top-5 | `topk_accuracy` |

Every function takes plain Python / numpy / torch values and returns a dict of floats in [0, 1] (CIDEr: its own
scale, 1.0 = 100 in papers' tables), so the same numbers come out of a script, a Trainer and the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from .data.loaders import normalize_answer, strip_answer_punctuation


def _as_array(values, name: str, dtype=None) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy() if values.is_floating_point() else values.cpu().numpy()
    array = np.asarray(values, dtype=dtype)
    if array.size == 0:
        raise ValueError(f"`{name}` is empty: nothing to score")
    return array


def _same_length(**named) -> int:
    lengths = {name: len(values) for name, values in named.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"these must have one entry per example, got lengths {lengths}")
    (length,) = set(lengths.values())
    if length == 0:
        raise ValueError(f"{', '.join(f'`{name}`' for name in named)} are empty: nothing to score")
    return length


# ------------------------------------------------------------------------------------------------------------------
# VQA
# ------------------------------------------------------------------------------------------------------------------


def vqa_score(prediction: str, human_answers: Sequence[str]) -> float:
    """Official VQA accuracy of one predicted answer: the mean over the leave-one-out subsets of the human answers
    of min(1, #matching answers / 3). The prediction is fully normalised (punctuation, number words, articles,
    contractions); the human answers get the punctuation step only, and only when they are not all identical —
    as the official evaluation script does."""
    if not human_answers:
        raise ValueError("`human_answers` is empty: a VQA question needs its annotators' answers")
    predicted = normalize_answer(prediction.replace("\n", " ").replace("\t", " ").strip())
    answers = list(human_answers)
    if len(set(answers)) > 1:
        answers = [strip_answer_punctuation(answer) for answer in answers]
    matches = sum(answer == predicted for answer in answers)
    # leaving out a matching answer leaves matches - 1 matches, leaving out another one leaves matches
    total = matches * min(1.0, (matches - 1) / 3) + (len(answers) - matches) * min(1.0, matches / 3)
    return total / len(answers)


def vqa_accuracy(predictions: Mapping, human_answers: Mapping, answer_types: Mapping | None = None) -> dict[str, float]:
    """`predictions`: question id -> answer string; `human_answers`: question id -> the annotators' answers (10 in
    VQA v2). Returns `accuracy` and, with `answer_types` (question id -> 'yes/no' / 'number' / 'other'), the
    accuracy per type. Every question of `human_answers` needs a prediction (a missing one is an error, as in the
    official evaluation)."""
    missing = [qid for qid in human_answers if qid not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} question(s), e.g. question id {missing[0]!r}")
    if not human_answers:
        raise ValueError("`human_answers` is empty: nothing to score")
    scores = {qid: vqa_score(str(predictions[qid]), answers) for qid, answers in human_answers.items()}
    result = {"accuracy": float(np.mean(list(scores.values())))}
    if answer_types is not None:
        by_type: dict[str, list[float]] = {}
        for qid, score in scores.items():
            by_type.setdefault(str(answer_types[qid]), []).append(score)
        result.update({f"accuracy/{kind}": float(np.mean(values)) for kind, values in sorted(by_type.items())})
    return result


# ------------------------------------------------------------------------------------------------------------------
# classification-like tasks
# ------------------------------------------------------------------------------------------------------------------


def accuracy(predictions, labels) -> dict[str, float]:
    """Fraction of equal entries (SNLI-VE, GQA with exact answers, any classification)."""
    _same_length(predictions=predictions, labels=labels)
    predictions, labels = _as_array(predictions, "predictions"), _as_array(labels, "labels")
    return {"accuracy": float((predictions == labels).mean())}


def vcr_accuracy(answer_predictions, answer_labels, rationale_predictions, rationale_labels) -> dict[str, float]:
    """VCR: Q->A (the answer chosen among four), QA->R (the rationale chosen given the right answer) and Q->AR
    (both right for the same question: the leaderboard's main number)."""
    _same_length(
        answer_predictions=answer_predictions,
        answer_labels=answer_labels,
        rationale_predictions=rationale_predictions,
        rationale_labels=rationale_labels,
    )
    answer_right = _as_array(answer_predictions, "answer_predictions") == _as_array(answer_labels, "answer_labels")
    rationale_right = _as_array(rationale_predictions, "rationale_predictions") == _as_array(
        rationale_labels, "rationale_labels"
    )
    return {
        "q2a": float(answer_right.mean()),
        "qa2r": float(rationale_right.mean()),
        "q2ar": float((answer_right & rationale_right).mean()),
    }


def nlvr2_sentence_key(identifier: str) -> str:
    """NLVR2 identifiers are 'split-set-pair-sentence' (e.g. 'dev-850-0-0'); the examples of one sentence differ in
    the pair field only, which the official consistency blanks out."""
    parts = str(identifier).split("-")
    if len(parts) != 4:
        raise ValueError(f"NLVR2 identifier {identifier!r} is not 'split-set-pair-sentence' (e.g. 'dev-850-0-0')")
    parts[2] = ""
    return "-".join(parts)


def nlvr2_accuracy(identifiers: Sequence[str], predictions, labels) -> dict[str, float]:
    """NLVR2 accuracy and consistency: the fraction of unique sentences whose every image pair is predicted right.
    Labels and predictions may be booleans, 0/1 or the strings 'True' / 'False' (any case)."""
    _same_length(identifiers=identifiers, predictions=predictions, labels=labels)

    def as_bool(value, name):
        if isinstance(value, str):
            if value.lower() not in ("true", "false"):
                raise ValueError(f"`{name}` must hold True/False, got {value!r}")
            return value.lower() == "true"
        return bool(value)

    right_by_sentence: dict[str, bool] = {}
    right = []
    for identifier, prediction, label in zip(identifiers, predictions, labels):
        correct = as_bool(prediction, "predictions") == as_bool(label, "labels")
        right.append(correct)
        key = nlvr2_sentence_key(identifier)
        right_by_sentence[key] = right_by_sentence.get(key, True) and correct
    return {
        "accuracy": float(np.mean(right)),
        "consistency": float(np.mean(list(right_by_sentence.values()))),
    }


def topk_accuracy(logits, labels, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Zero-shot / image classification: the label among the k highest logits (k > number of classes counts as
    every class)."""
    scores, labels = _as_array(logits, "logits", dtype=np.float64), _as_array(labels, "labels")
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(
            f"`logits` must be (examples, classes) and `labels` (examples,), got {scores.shape} and {labels.shape}"
        )
    order = np.argsort(-scores, axis=1, kind="stable")
    rank = (order == labels[:, None]).argmax(axis=1)  # position of the true class
    return {f"top{k}": float((rank < k).mean()) for k in ks}


# ------------------------------------------------------------------------------------------------------------------
# grounding
# ------------------------------------------------------------------------------------------------------------------


def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """IoU of paired x1,y1,x2,y2 boxes (the i-th with the i-th), continuous coordinates (no +1)."""
    a, b = _as_array(boxes_a, "boxes_a", dtype=np.float64), _as_array(boxes_b, "boxes_b", dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"boxes must both be (N, 4) x1,y1,x2,y2, got {a.shape} and {b.shape}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("boxes hold NaN")
    width = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    height = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    intersection = width * height
    area = lambda box: np.clip(box[:, 2] - box[:, 0], 0, None) * np.clip(box[:, 3] - box[:, 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


def refexp_accuracy(predicted_boxes, gold_boxes, threshold: float = 0.5) -> dict[str, float]:
    """RefCOCO / RefCOCO+ / RefCOCOg: a referring expression is grounded when the chosen box has IoU >= 0.5 with the
    gold box (both x1,y1,x2,y2 in the same units)."""
    iou = box_iou(predicted_boxes, gold_boxes)
    return {"accuracy": float((iou >= threshold).mean()), "mean_iou": float(iou.mean())}


# ------------------------------------------------------------------------------------------------------------------
# retrieval
# ------------------------------------------------------------------------------------------------------------------


def retrieval_recall(scores, text_image_index, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways from a (images, texts) score matrix. `text_image_index[t]` is the image text t describes
    (Flickr30k / COCO have five captions per image). Image->text: an image is found when any of its captions is in
    its top k; text->image: when its image is in the text's top k. Ties rank in index order."""
    scores = _as_array(scores, "scores", dtype=np.float64)
    owner = _as_array(text_image_index, "text_image_index").astype(np.int64)
    if scores.ndim != 2 or owner.shape != (scores.shape[1],):
        raise ValueError(
            f"`scores` must be (images, texts) and `text_image_index` (texts,), got {scores.shape} and {owner.shape}"
        )
    if owner.min() < 0 or owner.max() >= scores.shape[0]:
        raise ValueError(
            f"`text_image_index` must index the {scores.shape[0]} images, got values {owner.min()}..{owner.max()}"
        )
    if np.isnan(scores).any():
        raise ValueError("`scores` hold NaN")
    images = np.arange(scores.shape[0])
    text_order = np.argsort(-scores, axis=1, kind="stable")  # (images, texts): texts ranked per image
    own_text = owner[text_order] == images[:, None]
    first_own_rank = np.where(own_text.any(axis=1), own_text.argmax(axis=1), scores.shape[1])
    image_order = np.argsort(-scores.T, axis=1, kind="stable")  # (texts, images)
    own_image_rank = (image_order == owner[:, None]).argmax(axis=1)
    result = {}
    for k in ks:
        result[f"image_to_text_R@{k}"] = float((first_own_rank < k).mean())
        result[f"text_to_image_R@{k}"] = float((own_image_rank < k).mean())
    return result


# ------------------------------------------------------------------------------------------------------------------
# captioning
# ------------------------------------------------------------------------------------------------------------------

_CAPTION_PUNCTUATION = re.compile(r"[^\w\s]")


def caption_tokens(text: str) -> str:
    """Lower-cased words without punctuation, space-joined. The COCO caption evaluation tokenises with the Stanford
    PTB tokenizer (Java) and then drops punctuation tokens; on plain captions this gives the same words."""
    return " ".join(_CAPTION_PUNCTUATION.sub(" ", text.lower()).split())


def caption_scores(predictions: Mapping, references: Mapping) -> dict[str, float]:
    """BLEU-1..4 and CIDEr(-D) of pycocoevalcap (the COCO caption evaluation's own scorers), corpus level.
    `predictions`: image id -> caption; `references`: image id -> list of reference captions. Install with
    `pip install pycocoevalcap` (the `captioning` extra)."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as error:
        raise ImportError(
            "caption metrics use pycocoevalcap's BLEU and CIDEr scorers: pip install pycocoevalcap "
            "(or hf_vlp[captioning])"
        ) from error
    missing = [key for key in references if key not in predictions]
    if missing:
        raise ValueError(f"no caption predicted for {len(missing)} image(s), e.g. {missing[0]!r}")
    if not references:
        raise ValueError("`references` is empty: nothing to score")
    empty = [key for key, captions in references.items() if not captions]
    if empty:
        raise ValueError(f"image {empty[0]!r} has no reference captions")
    gts = {key: [caption_tokens(c) for c in references[key]] for key in references}
    res = {key: [caption_tokens(str(predictions[key]))] for key in references}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {**{f"bleu{n}": float(score) for n, score in enumerate(bleu, start=1)}, "cider": float(cider)}
