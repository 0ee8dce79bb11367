"""`hf-vlp eval TASK --model DIR --data ...`: a saved model on the official files of a downstream benchmark, scored
with the task's standard metric (`hf_vlp.metrics`).

| task | files (`hf_vlp.data.benchmarks`, `hf_vlp.data.loaders`) | metric |
| --- | --- | --- |
| `vqa` | VQA v2 questions + annotations JSON | official VQA accuracy, per answer type |
| `nlvr2` | NLVR2 JSON lines | accuracy, consistency |
| `entailment` | SNLI-VE JSON lines | accuracy |
| `refexp` | RefCOCO refs pickle + instances JSON (+ split) | accuracy at IoU >= 0.5 of the chosen detection |
| `retrieval` | Karpathy split JSON (+ split) | R@1/5/10 both ways over a gallery |

Region features come from `features`: a bottom-up-attention TSV file, a folder (or list) of per-image NPZ files, or
a mapping image id -> reader dict (`hf_vlp.processing.readers`). The collators and processors are the ones training
uses (`hf_vlp.training.task_collator`), so a model is evaluated on exactly the inputs it was trained on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .data import benchmarks
from .evaluation import as_rows, classifier_predict

BENCHMARK_TASKS = ("vqa", "nlvr2", "entailment", "refexp", "retrieval")


def load_region_features(features) -> dict:
    """Reader dicts by image id (as a string) from a TSV file, an NPZ folder / file / list, or a mapping."""
    from .processing.readers import read_bua_tsv, read_npz_features

    if isinstance(features, Mapping):
        records = features.values()
    elif isinstance(features, (str, os.PathLike)) and str(features).endswith(".tsv"):
        records = read_bua_tsv(features)
    elif isinstance(features, (str, os.PathLike, list, tuple)):
        records = read_npz_features(features)
    else:
        raise ValueError(
            f"`features` must be a .tsv file, .npz files / a folder of them, or a mapping, got {features!r}"
        )
    by_id = {str(record["image_id"]): record for record in records}
    if not by_id:
        raise ValueError(f"`features` {features!r} holds no images")
    return by_id


def _answer_vocabulary(model) -> list[str]:
    id2label = model.config.id2label or {}
    count = len(id2label)
    vocabulary = [id2label.get(i, id2label.get(str(i))) for i in range(count)]
    if not count or any(answer is None for answer in vocabulary) or all(a.startswith("LABEL_") for a in vocabulary):
        raise ValueError(
            "the model's config has no answer table (`id2label` with the answers): convert or train it with one"
        )
    return vocabulary


def _raw_vqa_answers(annotations_file) -> tuple[dict, dict]:
    """question id -> the annotators' answers as written (the official metric normalises them itself), and -> type."""
    with open(annotations_file) as handle:
        annotations = json.load(handle)["annotations"]
    answers = {a["question_id"]: [entry["answer"] for entry in a["answers"]] for a in annotations}
    types = {a["question_id"]: a.get("answer_type", "") for a in annotations}
    return answers, types


def evaluate_vqa(model, processor, questions, annotations, features, batch_size=64) -> dict:
    from .data.loaders import load_vqa_v2
    from .training import task_collator

    vocabulary = _answer_vocabulary(model)
    data = load_vqa_v2(questions, annotations, answer_vocabulary=vocabulary, region_features=features)
    rows = as_rows(data)
    predicted = classifier_predict(model, task_collator(model, processor, "vqa"), vocabulary, batch_size)(rows)
    human, types = _raw_vqa_answers(annotations)
    predictions = {row["question_id"]: answer for row, answer in zip(rows, predicted)}
    return metrics.vqa_accuracy(predictions, {q: human[q] for q in predictions}, types if any(types.values()) else None)


def evaluate_nlvr2(model, processor, data_file, features, batch_size=64) -> dict:
    from .training import task_collator

    rows = as_rows(benchmarks.load_nlvr2(data_file, region_features=features))
    predicted = classifier_predict(model, task_collator(model, processor, "nlvr2"), batch_size=batch_size)(rows)
    return metrics.nlvr2_accuracy([r["identifier"] for r in rows], predicted, [r["label"] for r in rows])


def evaluate_entailment(model, processor, data_file, features, batch_size=64) -> dict:
    from .training import task_collator

    rows = as_rows(benchmarks.load_snli_ve(data_file, region_features=features))
    names = [str(model.config.id2label[i]).lower() for i in range(len(model.config.id2label))]
    if sorted(names) == sorted(benchmarks.SNLI_VE_LABELS):  # the model's own label order
        to_dataset = [benchmarks.SNLI_VE_LABELS.index(name) for name in names]
    else:  # the spec's head and the shapes world use the dataset's order
        to_dataset = list(range(len(benchmarks.SNLI_VE_LABELS)))
    predicted = classifier_predict(model, task_collator(model, processor, "entailment"), batch_size=batch_size)(rows)
    return metrics.accuracy([to_dataset[p] for p in predicted], [r["label"] for r in rows])


def evaluate_refexp(model, processor, refs_file, instances_file, features, split=None, batch_size=64) -> dict:
    """The detector setting: the regions are the image's detections; the chosen one counts when its box has
    IoU >= 0.5 with the referred object's box."""
    from .training import task_collator

    rows = as_rows(benchmarks.load_refcoco(refs_file, instances_file, split=split, region_features=features))
    for row in rows:
        boxes = np.asarray(row["boxes"], dtype=np.float64)
        gold = np.broadcast_to(np.asarray(row["box"], dtype=np.float64), boxes.shape)
        row["target_index"] = int(metrics.box_iou(boxes, gold).argmax())  # the collator's label; unused here
    collator = task_collator(model, processor, "refexp")
    offset = int(getattr(collator.processor.image_processor, "add_global_region", False))
    chosen = [i - offset for i in classifier_predict(model, collator, batch_size=batch_size)(rows)]
    if min(chosen) < 0:
        raise ValueError("the model chose the whole-image region, which has no detection box")
    predicted_boxes = [row["boxes"][i] for row, i in zip(rows, chosen)]
    return metrics.refexp_accuracy(predicted_boxes, [row["box"] for row in rows])


def evaluate_retrieval(model, processor, karpathy_file, features, split="test", gallery=None, batch_size=64) -> dict:
    """Every caption of the split's first `gallery` images (all without a limit: 1k images x 5k captions is 5M pair
    scores for a single-stream model) against every one of those images."""
    from .training import task_collator

    data = as_rows(benchmarks.load_karpathy_split(karpathy_file, split, region_features=features))
    images = list(dict.fromkeys(row["image_id"] for row in data))[: gallery or None]
    index = {image: i for i, image in enumerate(images)}
    captions = [row for row in data if row["image_id"] in index]
    first_row = {}
    for row in data:  # any caption row of an image carries its regions
        first_row.setdefault(row["image_id"], row)
    image_rows = [first_row[image] for image in images]
    collator = task_collator(model, processor, "retrieval")
    scores = torch.empty(len(images), len(captions))
    model.eval()
    with torch.no_grad():
        for t, caption in enumerate(captions):
            for start in range(0, len(images), batch_size):
                order = list(range(start, min(start + batch_size, len(images))))
                batch = collator._encode(image_rows, [caption["text"]] * len(order), order=order)
                # a 1-score head gives (n, 1), an ITM head (n, 2) whose last column is "match"
                scores[start : start + len(order), t] = model(**batch).logits.float().reshape(len(order), -1)[:, -1]
    return metrics.retrieval_recall(scores.numpy(), [index[row["image_id"]] for row in captions])


def evaluate_benchmark(task, model_dir, data, features, split=None, gallery=None, batch_size=64) -> dict:
    """Load the saved model + processor in `model_dir` and score it on `task` (module docstring). `data`: the
    task's file(s) — VQA: (questions, annotations); RefCOCO: (refs, instances); the others: one file."""
    from transformers import AutoConfig, AutoProcessor

    from .registry import spec_for_model_type

    if task not in BENCHMARK_TASKS:
        raise ValueError(f"`task` must be one of {BENCHMARK_TASKS}, got {task!r}")
    files = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    for path in files:
        if not Path(path).is_file():
            raise ValueError(f"data file {str(path)!r} does not exist")
    needs_two = {"vqa": "questions and annotations", "refexp": "refs and instances"}
    if task in needs_two and len(files) != 2:
        raise ValueError(f"`{task}` needs two data files ({needs_two[task]}), got {len(files)}")
    config = AutoConfig.from_pretrained(model_dir)
    spec = spec_for_model_type(config.model_type)
    head = spec.model_class(task)  # a ValueError naming the heads when the architecture has none for `task`
    saved = (config.architectures or [None])[0]
    if saved is not None and saved != head.__name__:
        raise ValueError(f"{model_dir} holds a {saved}, not the {task} head {head.__name__}")
    model = head.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    features = load_region_features(features)
    if task == "vqa":
        return evaluate_vqa(model, processor, files[0], files[1], features, batch_size)
    if task == "refexp":
        return evaluate_refexp(model, processor, files[0], files[1], features, split, batch_size)
    if task == "nlvr2":
        return evaluate_nlvr2(model, processor, files[0], features, batch_size)
    if task == "entailment":
        return evaluate_entailment(model, processor, files[0], features, batch_size)
    return evaluate_retrieval(model, processor, files[0], features, split or "test", gallery, batch_size)
