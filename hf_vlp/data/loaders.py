"""Loaders from the annotation formats people have to `datasets.Dataset`s: COCO captions and VQA v2.

Region features come from a feature store (`hf_vlp.data.store.FeatureStore`, written by `hf-vlp extract`) or from
files read by `hf_vlp.processing.readers` (bottom-up-attention TSV, per-image NPZ); pass them as `region_features=`
and every row gains `boxes`, `region_features`, `image_width`, `image_height`, the columns `RegionFeatureProcessor`
and the collators read (the same as the shapes world's). With a store (or its path) the rows hold image ids only and
the features are read from the memory-mapped store when a row is accessed: one copy per image, however many
questions; reader dicts are copied into every row (fine for small sets, ~130 GB for VQA v2 train).

VQA soft scores follow the official evaluation (Antol et al. 2015; Goyal et al. 2017): the accuracy of answer `a`
is min(1, #humans who said `a` / 3), averaged over the 10 leave-one-annotator-out subsets of the 10 answers. For
an answer given by c of n annotators this is (c * min(1, (c - 1) / 3) + (n - c) * min(1, c / 3)) / n, which for
n = 10 gives 0.3, 0.6, 0.9, 1.0 for c = 1, 2, 3, >= 4: the same numbers as the common min(1, 0.3 c) shortcut.
Answers are normalised as the official evaluation does before counting (`normalize_answer`).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import datasets

# Official VQA evaluation normalisation, compactly: punctuation, periods, number words, articles, contractions.
PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
ARTICLES = {"a", "an", "the"}
NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    )
} | {"none": "0"}
# Apostrophe-less spellings annotators typed, mapped back ("dont" -> "don't").
CONTRACTIONS = {
    word.replace("'", ""): word
    for word in (
        "ain't",
        "aren't",
        "can't",
        "couldn't",
        "didn't",
        "doesn't",
        "don't",
        "hadn't",
        "hasn't",
        "haven't",
        "isn't",
        "mightn't",
        "mustn't",
        "shouldn't",
        "wasn't",
        "weren't",
        "won't",
        "wouldn't",
        "i'm",
        "i've",
        "you're",
        "you've",
        "they're",
        "they've",
        "we've",
        "what's",
        "that's",
        "there's",
        "where's",
        "who's",
        "how's",
    )
}


def strip_answer_punctuation(answer: str) -> str:
    """The official evaluation's punctuation step: 'yes!' -> 'yes', '1,000' -> '1000', 'black/white' -> 'black white'.
    It is all the official script applies to the human answers (and only when they differ)."""
    text = answer
    digit_comma = re.search(r"\d,\d", text) is not None
    for mark in PUNCTUATION:
        if mark in text:
            # Punctuation next to a space (or inside "1,000") disappears; between two words it separates them.
            glued = f"{mark} " in text or f" {mark}" in text or digit_comma
            text = text.replace(mark, "" if glued else " ")
    return re.sub(r"\.(?!\d)", "", text)  # periods, but not decimal points


def normalize_answer(answer: str) -> str:
    """'Two dogs.' -> '2 dogs', 'the Red' -> 'red', 'dont know' -> "don't know", '1,000' -> '1000'."""
    text = strip_answer_punctuation(" ".join(answer.lower().split()))
    words = [NUMBER_WORDS.get(word, word) for word in text.split() if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def vqa_answer_scores(answers: list[str]) -> dict[str, float]:
    """Official VQA accuracy of every distinct (already normalised) answer against the human answers."""
    counts, total = Counter(answers), len(answers)
    return {answer: (c * min(1.0, (c - 1) / 3) + (total - c) * min(1.0, c / 3)) / total for answer, c in counts.items()}


def build_answer_vocabulary(answers: Iterable, top_k: int = 3129, min_count: int = 1) -> list[str]:
    """The `top_k` most frequent normalised answers (ties alphabetical), each seen at least `min_count` times.

    `answers` has one item per question: a string (e.g. the `answer` column: the majority answer, as the
    bottom-up-attention VQA preprocessing counts) or a list of strings (e.g. `answers`: each distinct answer
    counts once per question). 3129 is the vocabulary size of the bottom-up-attention / LXMERT / UNITER VQA heads.
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    counts = Counter()
    for item in answers:
        counts.update({normalize_answer(item)} if isinstance(item, str) else {normalize_answer(a) for a in item})
    ranked = sorted(
        (answer for answer, count in counts.items() if count >= min_count and answer),
        key=lambda answer: (-counts[answer], answer),
    )
    return ranked[:top_k]


def _id_feature(values: list) -> datasets.Value:
    """COCO / VQA image ids are integers; other datasets use strings."""
    return datasets.Value("int64" if all(isinstance(v, int) for v in values) else "string")


def _read_json(path: str | os.PathLike, keys: tuple[str, ...], argument: str) -> list | tuple[list, ...]:
    """The lists under `keys` of a JSON object file (one list, or a tuple of lists for several keys)."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{argument}={str(path)!r} is not valid JSON: {error}") from None
    for key in keys:
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{argument}={str(path)!r} must be a JSON object with a {key!r} list, found {found}")
    return data[keys[0]] if len(keys) == 1 else tuple(data[key] for key in keys)


def _require(entry: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in entry]
    if missing:
        raise ValueError(f"{where} is missing {missing}: {json.dumps(entry)[:200]}")


def _as_store(region_features):
    """A `FeatureStore` for a store or a store's path; None for reader dicts."""
    from .store import FeatureStore

    if isinstance(region_features, FeatureStore):
        return region_features
    if isinstance(region_features, (str, os.PathLike)):
        return FeatureStore(region_features)
    return None


def _dataset(columns: dict, features: dict, region_features) -> datasets.Dataset:
    """The loader's dataset: region columns copied in from reader dicts, or read by id from a feature store."""
    store = _as_store(region_features) if region_features is not None else None
    if region_features is not None and store is None:
        _attach_regions(columns, features, region_features)
    dataset = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    if store is not None:
        from .store import with_region_features

        dataset = with_region_features(dataset, store)
    return dataset


def _attach_regions(columns: dict, features: dict, region_features) -> None:
    """Add `boxes`, `region_features` (and sizes when missing) for each row's image, from reader dicts."""
    by_id = {
        str(record["image_id"]): record
        for record in (region_features.values() if isinstance(region_features, Mapping) else region_features)
    }
    records = [by_id.get(str(image_id)) for image_id in columns["image_id"]]
    missing = sorted({str(i) for i, record in zip(columns["image_id"], records) if record is None})
    if missing:
        raise ValueError(
            f"region_features has no entry for {len(missing)} image(s), e.g. {missing[:5]}; "
            "filter the rows or the annotations to the images you have features for"
        )
    columns["boxes"] = [record["boxes"] for record in records]
    columns["region_features"] = [record["features"] for record in records]
    float_matrix = datasets.List(datasets.List(datasets.Value("float32")))
    features.update(boxes=float_matrix, region_features=float_matrix)
    for name in ("image_width", "image_height"):
        if name not in columns or any(value is None for value in columns[name]):
            columns[name] = [record[name] for record in records]
            features[name] = datasets.Value("int32")


def load_coco_captions(
    annotations_file: str | os.PathLike, image_dir: str | os.PathLike | None = None, region_features=None
) -> datasets.Dataset:
    """COCO captions JSON (`images` + `annotations` with `image_id`, `caption`) -> one row per caption.

    Columns: `image_id`, `caption_id`, `text`, `file_name`, `image_width`, `image_height`; `image` (decoded
    lazily from `image_dir`/file_name) when `image_dir` is given; `boxes` + `region_features` when
    `region_features` (a `FeatureStore` or its path, or reader dicts, a list or a mapping by image id) is given.
    """
    image_entries, caption_entries = _read_json(annotations_file, ("images", "annotations"), "annotations_file")
    images = {}
    for entry in image_entries:
        _require(entry, ("id",), "annotations_file images entry")
        images[entry["id"]] = entry
    columns = {name: [] for name in ("image_id", "caption_id", "text", "file_name", "image_width", "image_height")}
    for entry in caption_entries:
        _require(entry, ("image_id", "caption"), "annotations_file annotations entry")
        image = images.get(entry["image_id"])
        if image is None:
            raise ValueError(
                f"annotations_file: caption {entry.get('id')} refers to image_id {entry['image_id']}, "
                "which is not in 'images'"
            )
        columns["image_id"].append(entry["image_id"])
        columns["caption_id"].append(entry.get("id", len(columns["caption_id"])))
        columns["text"].append(entry["caption"].strip())
        columns["file_name"].append(image.get("file_name", ""))
        columns["image_width"].append(image.get("width"))
        columns["image_height"].append(image.get("height"))
    features = {
        "image_id": _id_feature(columns["image_id"]),
        "caption_id": datasets.Value("int64"),
        "text": datasets.Value("string"),
        "file_name": datasets.Value("string"),
        "image_width": datasets.Value("int32"),
        "image_height": datasets.Value("int32"),
    }
    if image_dir is not None:
        if not Path(image_dir).is_dir():
            raise ValueError(f"image_dir={str(image_dir)!r} is not a directory")
        columns["image"] = [str(Path(image_dir) / name) for name in columns["file_name"]]
        features["image"] = datasets.Image()
    return _dataset(columns, features, region_features)


def load_vqa_v2(
    questions_file: str | os.PathLike,
    annotations_file: str | os.PathLike | None = None,
    answer_vocabulary: list[str] | None = None,
    top_k: int = 3129,
    region_features=None,
) -> datasets.Dataset:
    """VQA v2 questions (+ annotations) JSON -> one row per question.

    Columns: `question_id`, `image_id`, `question`; with `annotations_file` also `question_type`, `answer_type`,
    `answers` (the normalised human answers), `answer` (normalised `multiple_choice_answer`), `answer_ids` and
    `answer_scores` (soft scores, module docstring) over the answer vocabulary. The vocabulary is
    `answer_vocabulary`, or the `top_k` most frequent `answer`s of this file (pass the training vocabulary when
    loading validation); it travels with the dataset as the `answer_ids` ClassLabel names. Answers outside it
    get no id, as in the bottom-up-attention preprocessing. `region_features`: a `FeatureStore` or its path (rows
    keep ids; features read on access), or reader dicts (copied into each row).
    """
    columns = {"question_id": [], "image_id": [], "question": []}
    for entry in _read_json(questions_file, ("questions",), "questions_file"):
        _require(entry, ("question_id", "image_id", "question"), "questions_file questions entry")
        for name, values in columns.items():
            values.append(entry[name])
    features = {
        "question_id": datasets.Value("int64"),
        "image_id": _id_feature(columns["image_id"]),
        "question": datasets.Value("string"),
    }
    if annotations_file is not None:
        annotations = {}
        for entry in _read_json(annotations_file, ("annotations",), "annotations_file"):
            _require(entry, ("question_id", "answers"), "annotations_file annotations entry")
            annotations[entry["question_id"]] = entry
        missing = [q for q in columns["question_id"] if q not in annotations]
        if missing:
            raise ValueError(f"annotations_file has no annotation for {len(missing)} question(s), e.g. {missing[:5]}")
        rows = [annotations[q] for q in columns["question_id"]]
        answers = [[normalize_answer(a["answer"]) for a in row["answers"]] for row in rows]
        majority = [
            normalize_answer(row["multiple_choice_answer"])
            if "multiple_choice_answer" in row
            else Counter(human).most_common(1)[0][0]
            if human
            else ""
            for row, human in zip(rows, answers)
        ]
        vocabulary = (
            list(answer_vocabulary) if answer_vocabulary is not None else build_answer_vocabulary(majority, top_k)
        )
        if not vocabulary:
            raise ValueError("answer_vocabulary is empty")
        index = {answer: i for i, answer in enumerate(vocabulary)}
        scored = [sorted((index[a], s) for a, s in vqa_answer_scores(human).items() if a in index) for human in answers]
        columns.update(
            question_type=[row.get("question_type", "") for row in rows],
            answer_type=[row.get("answer_type", "") for row in rows],
            answers=answers,
            answer=majority,
            answer_ids=[[i for i, _ in pairs] for pairs in scored],
            answer_scores=[[s for _, s in pairs] for pairs in scored],
        )
        features.update(
            question_type=datasets.Value("string"),
            answer_type=datasets.Value("string"),
            answers=datasets.List(datasets.Value("string")),
            answer=datasets.Value("string"),
            answer_ids=datasets.List(datasets.ClassLabel(names=vocabulary)),
            answer_scores=datasets.List(datasets.Value("float32")),
        )
    return _dataset(columns, features, region_features)
