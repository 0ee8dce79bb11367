"""Loaders for the official annotation files of the downstream benchmarks -> `datasets.Dataset`s.

| loader | files | one row per |
| --- | --- | --- |
| `load_nlvr2` | NLVR2 `train.json` / `dev.json` / `test1.json` (JSON lines) | sentence and image pair |
| `load_snli_ve` | SNLI-VE `snli_ve_{train,dev,test}.jsonl` | hypothesis |
| `load_vcr` | VCR `{train,val,test}.jsonl` | question (4 answers, 4 rationales) |
| `load_refcoco` | `refs(unc).p` / `refs(umd).p` / `refs(google).p` + `instances.json` (RefCOCO, RefCOCO+, RefCOCOg) | expression |
| `load_karpathy_split` | Karpathy's `dataset_coco.json` / `dataset_flickr30k.json` | caption |

Rows keep the image ids, so region features come from `region_features=` (reader dicts, as `load_vqa_v2`) or from
a feature store looked up by id. The field names and layouts are those of the released files; a file that does
not have them is a `ValueError` naming the file, the line and what is missing.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import datasets

from .loaders import _attach_regions, _id_feature, _read_json, _require

NLVR2_LABELS = ("False", "True")
SNLI_VE_LABELS = ("entailment", "neutral", "contradiction")


def _read_jsonl(path: str | os.PathLike, argument: str) -> list[dict]:
    rows = []
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{argument}={str(path)!r} line {number} is not JSON: {error}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{argument}={str(path)!r} line {number} must be a JSON object")
            rows.append(row)
    if not rows:
        raise ValueError(f"{argument}={str(path)!r} holds no examples")
    return rows


def _dataset(columns: dict, features: dict, region_features) -> datasets.Dataset:
    if region_features is not None:
        _attach_regions(columns, features, region_features)
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


# ------------------------------------------------------------------------------------------------------------------


def load_nlvr2(path: str | os.PathLike, region_features=None) -> datasets.Dataset:
    """NLVR2 JSON lines (`identifier` 'split-set-pair-sentence', `sentence`, `label` 'True'/'False'). Each example has
    two images, named as in the released image folders: `<split-set-pair>-img0.png` and `-img1.png`.

    Columns: `identifier`, `text`, `label` (ClassLabel False/True), `image_id` (left) and `image_id_2` (right).
    With `region_features`, `boxes` / `region_features` are the left image's and `boxes_2` / `region_features_2`
    the right's (the shapes world's NLVR2 columns)."""
    columns = {"identifier": [], "text": [], "label": [], "image_id": [], "image_id_2": []}
    for number, row in enumerate(_read_jsonl(path, "path"), start=1):
        _require(row, ("identifier", "sentence", "label"), f"path line {number}")
        parts = str(row["identifier"]).split("-")
        if len(parts) != 4:
            raise ValueError(f"path line {number}: identifier {row['identifier']!r} is not 'split-set-pair-sentence'")
        if str(row["label"]) not in NLVR2_LABELS:
            raise ValueError(f"path line {number}: label must be 'True' or 'False', got {row['label']!r}")
        pair = "-".join(parts[:3])
        columns["identifier"].append(row["identifier"])
        columns["text"].append(row["sentence"])
        columns["label"].append(NLVR2_LABELS.index(str(row["label"])))
        columns["image_id"].append(f"{pair}-img0")
        columns["image_id_2"].append(f"{pair}-img1")
    features = {
        "identifier": datasets.Value("string"),
        "text": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(NLVR2_LABELS)),
        "image_id": datasets.Value("string"),
        "image_id_2": datasets.Value("string"),
    }
    if region_features is not None:
        right = {"image_id": columns["image_id_2"]}
        right_features: dict = {}
        _attach_regions(right, right_features, region_features)
        for name in ("boxes", "region_features", "image_width", "image_height"):
            columns[f"{name}_2"], features[f"{name}_2"] = right[name], right_features[name]
    return _dataset(columns, features, region_features)


def load_snli_ve(path: str | os.PathLike, region_features=None) -> datasets.Dataset:
    """SNLI-VE JSON lines (`Flickr30K_ID`, `sentence2` the hypothesis, `gold_label`, `pairID`; `sentence1` is the
    caption the image replaces). Columns: `pair_id`, `image_id` (Flickr30k id, string), `text`, `label`
    (ClassLabel entailment / neutral / contradiction) and `premise`."""
    columns = {"pair_id": [], "image_id": [], "text": [], "label": [], "premise": []}
    for number, row in enumerate(_read_jsonl(path, "path"), start=1):
        _require(row, ("Flickr30K_ID", "sentence2", "gold_label"), f"path line {number}")
        if row["gold_label"] not in SNLI_VE_LABELS:
            raise ValueError(
                f"path line {number}: gold_label must be one of {SNLI_VE_LABELS}, got {row['gold_label']!r}"
            )
        columns["pair_id"].append(str(row.get("pairID", number)))
        columns["image_id"].append(str(row["Flickr30K_ID"]))
        columns["text"].append(row["sentence2"])
        columns["label"].append(SNLI_VE_LABELS.index(row["gold_label"]))
        columns["premise"].append(row.get("sentence1", ""))
    features = {
        "pair_id": datasets.Value("string"),
        "image_id": datasets.Value("string"),
        "text": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(SNLI_VE_LABELS)),
        "premise": datasets.Value("string"),
    }
    return _dataset(columns, features, region_features)


def vcr_text(tokens: list, objects: list[str], where: str) -> tuple[str, list[int]]:
    """A VCR token list as text: words stay, a reference (a list of detection indices) becomes the objects' class
    names joined with 'and' ('person and person'). Returns the text and the referenced detection indices in order
    (for models that tag the referenced regions)."""
    words, references = [], []
    for token in tokens:
        if isinstance(token, list):
            if not token or not all(isinstance(i, int) and 0 <= i < len(objects) for i in token):
                raise ValueError(f"{where}: reference {token} does not index the {len(objects)} objects")
            words.append(" and ".join(objects[i] for i in token))
            references.extend(token)
        elif isinstance(token, str):
            words.append(token)
        else:
            raise ValueError(f"{where}: a token must be a word or a list of object indices, got {token!r}")
    text = " ".join(words)
    for mark in (" ?", " .", " ,", " !", " '", " n't"):  # the files are tokenised: 'what is he doing ?'
        text = text.replace(mark, mark[1:])
    return text, references


def load_vcr(path: str | os.PathLike, region_features=None) -> datasets.Dataset:
    """VCR JSON lines (`question`, `answer_choices` (4), `rationale_choices` (4) as token lists mixing words and
    detection references, `objects`, `img_fn`, `metadata_fn`, `annot_id`; `answer_label` / `rationale_label`
    outside the test split). Columns: `annot_id`, `image_id` (`img_fn`), `metadata_fn`, `objects`, `question`,
    `answer_choices`, `rationale_choices` (texts), `question_refs` (referenced detections), `answer_label`,
    `rationale_label` (-1 when the file has none). Q->A pairs the question with each answer; QA->R pairs
    question + right answer with each rationale."""
    columns = {
        name: []
        for name in (
            "annot_id",
            "image_id",
            "metadata_fn",
            "objects",
            "question",
            "answer_choices",
            "rationale_choices",
            "question_refs",
            "answer_label",
            "rationale_label",
        )
    }
    for number, row in enumerate(_read_jsonl(path, "path"), start=1):
        where = f"path line {number}"
        _require(row, ("question", "answer_choices", "rationale_choices", "objects", "img_fn"), where)
        objects = row["objects"]
        for name in ("answer_choices", "rationale_choices"):
            if not isinstance(row[name], list) or len(row[name]) != 4:
                raise ValueError(f"{where}: `{name}` must hold 4 choices, got {row[name]!r:.80}")
        question, refs = vcr_text(row["question"], objects, where)
        columns["annot_id"].append(str(row.get("annot_id", number)))
        columns["image_id"].append(row["img_fn"])
        columns["metadata_fn"].append(row.get("metadata_fn", ""))
        columns["objects"].append(list(objects))
        columns["question"].append(question)
        columns["question_refs"].append(refs)
        for name in ("answer_choices", "rationale_choices"):
            columns[name].append([vcr_text(choice, objects, f"{where} {name}")[0] for choice in row[name]])
        for name in ("answer_label", "rationale_label"):
            label = row.get(name, -1)
            if label not in (-1, 0, 1, 2, 3):
                raise ValueError(f"{where}: `{name}` must be 0-3, got {label!r}")
            columns[name].append(label)
    strings = datasets.List(datasets.Value("string"))
    features = {
        "annot_id": datasets.Value("string"),
        "image_id": datasets.Value("string"),
        "metadata_fn": datasets.Value("string"),
        "objects": strings,
        "question": datasets.Value("string"),
        "answer_choices": strings,
        "rationale_choices": strings,
        "question_refs": datasets.List(datasets.Value("int32")),
        "answer_label": datasets.Value("int8"),
        "rationale_label": datasets.Value("int8"),
    }
    return _dataset(columns, features, region_features)


class _PlainDataUnpickler(pickle.Unpickler):
    """Reads a pickle of plain containers (dicts, lists, strings, numbers) and refuses any class or function: the
    refs files are Python 2 pickles of exactly that, and unpickling anything else could run code."""

    def find_class(self, module, name):
        raise ValueError(
            f"refs_file holds a pickled {module}.{name}; a RefCOCO refs file holds only dicts, lists, strings and "
            "numbers, so it is refused rather than executed"
        )


def _read_refs(path) -> list[dict]:
    try:
        with open(path, "rb") as handle:
            refs = _PlainDataUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError) as error:
        raise ValueError(f"refs_file={str(path)!r} is not a pickle: {error}") from None
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise ValueError(f"refs_file={str(path)!r} must hold a list of ref dicts, got {type(refs).__name__}")
    return refs


def load_refcoco(
    refs_file: str | os.PathLike, instances_file: str | os.PathLike, split: str | None = None, region_features=None
) -> datasets.Dataset:
    """RefCOCO / RefCOCO+ / RefCOCOg (`refs(unc).p`, `refs(umd).p`, `refs(google).p` with the dataset's
    `instances.json`) -> one row per expression, optionally of one `split` ('train', 'val', 'testA', 'testB',
    'test').

    Columns: `ref_id`, `sent_id`, `image_id`, `file_name`, `text` (`sent`), `split`, `box` (the referred object's
    x1,y1,x2,y2 in pixels), `candidate_boxes` (every annotated object of the image: the ground-truth-box setting),
    `target` (index of the referred object among them), `category_id`, `image_width`, `image_height`. Accuracy:
    `hf_vlp.metrics.refexp_accuracy` (IoU >= 0.5)."""
    refs = _read_refs(refs_file)
    image_entries, annotation_entries = _read_json(instances_file, ("images", "annotations"), "instances_file")
    images = {entry["id"]: entry for entry in image_entries if "id" in entry}
    annotations, by_image = {}, {}
    for entry in annotation_entries:
        _require(entry, ("id", "image_id", "bbox"), "instances_file annotations entry")
        annotations[entry["id"]] = entry
        by_image.setdefault(entry["image_id"], []).append(entry["id"])
    names = ("ref_id", "sent_id", "image_id", "file_name", "text", "split", "box", "candidate_boxes", "target")
    columns = {name: [] for name in names + ("category_id", "image_width", "image_height")}

    def xyxy(entry):
        x, y, w, h = (float(v) for v in entry["bbox"])
        return [x, y, x + w, y + h]

    for ref in refs:
        _require(ref, ("ref_id", "ann_id", "image_id", "split", "sentences"), "refs_file ref")
        if split is not None and ref["split"] != split:
            continue
        if ref["ann_id"] not in annotations:
            raise ValueError(f"refs_file ref {ref['ref_id']} names annotation {ref['ann_id']}, not in instances_file")
        image = images.get(ref["image_id"], {})
        candidates = by_image[ref["image_id"]]
        for sentence in ref["sentences"]:
            _require(sentence, ("sent",), f"refs_file ref {ref['ref_id']} sentence")
            columns["ref_id"].append(int(ref["ref_id"]))
            columns["sent_id"].append(int(sentence.get("sent_id", -1)))
            columns["image_id"].append(ref["image_id"])
            columns["file_name"].append(image.get("file_name", ref.get("file_name", "")))
            columns["text"].append(sentence["sent"])
            columns["split"].append(ref["split"])
            columns["box"].append(xyxy(annotations[ref["ann_id"]]))
            columns["candidate_boxes"].append([xyxy(annotations[i]) for i in candidates])
            columns["target"].append(candidates.index(ref["ann_id"]))
            columns["category_id"].append(
                int(ref.get("category_id", annotations[ref["ann_id"]].get("category_id", -1)))
            )
            columns["image_width"].append(image.get("width"))
            columns["image_height"].append(image.get("height"))
    if not columns["ref_id"]:
        splits = sorted({ref.get("split") for ref in refs})
        raise ValueError(f"refs_file has no expressions of split {split!r}; its splits are {splits}")
    boxes = datasets.List(datasets.Value("float32"))
    features = {
        "ref_id": datasets.Value("int64"),
        "sent_id": datasets.Value("int64"),
        "image_id": _id_feature(columns["image_id"]),
        "file_name": datasets.Value("string"),
        "text": datasets.Value("string"),
        "split": datasets.Value("string"),
        "box": boxes,
        "candidate_boxes": datasets.List(boxes),
        "target": datasets.Value("int32"),
        "category_id": datasets.Value("int32"),
        "image_width": datasets.Value("int32"),
        "image_height": datasets.Value("int32"),
    }
    return _dataset(columns, features, region_features)


def load_karpathy_split(
    path: str | os.PathLike, split: str = "test", include_restval: bool = True, region_features=None
) -> datasets.Dataset:
    """Karpathy's split files (`dataset_coco.json`, `dataset_flickr30k.json`: `images` with `split`, `filename`,
    `sentences` [{`raw`}], `cocoid` for COCO / `imgid`) -> one row per caption of `split` ('train', 'val', 'test';
    with `include_restval`, COCO's 'restval' images count as 'train', as every VLP paper trains). Columns:
    `image_id` (`cocoid` when present, else `imgid`), `file_name` (`filepath/filename` for COCO), `text`,
    `caption_index` (0-4)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    wanted = {split} | ({"restval"} if split == "train" and include_restval else set())
    columns = {"image_id": [], "file_name": [], "text": [], "caption_index": []}
    for entry in _read_json(path, ("images",), "path"):
        _require(entry, ("split", "filename", "sentences"), "path images entry")
        if entry["split"] not in wanted:
            continue
        image_id = entry.get("cocoid", entry.get("imgid"))
        if image_id is None:
            raise ValueError(f"path images entry {entry['filename']!r} has neither 'cocoid' nor 'imgid'")
        name = str(Path(entry.get("filepath", "")) / entry["filename"]) if entry.get("filepath") else entry["filename"]
        for index, sentence in enumerate(entry["sentences"]):
            _require(sentence, ("raw",), f"path images entry {entry['filename']!r} sentence")
            columns["image_id"].append(image_id)
            columns["file_name"].append(name)
            columns["text"].append(sentence["raw"].strip())
            columns["caption_index"].append(index)
    if not columns["image_id"]:
        raise ValueError(f"path={str(path)!r} has no images of split {split!r}")
    features = {
        "image_id": _id_feature(columns["image_id"]),
        "file_name": datasets.Value("string"),
        "text": datasets.Value("string"),
        "caption_index": datasets.Value("int32"),
    }
    return _dataset(columns, features, region_features)
