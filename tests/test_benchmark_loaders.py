"""The official benchmark loaders on small files written in the released layouts."""

import json
import os
import pickle

import pytest

from hf_vlp.data import benchmarks


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_nlvr2_rows_name_both_images_and_attach_their_regions(tmp_path):
    rows = [
        {"identifier": "dev-850-0-0", "sentence": "One image has two dogs.", "label": "True", "writer": "w1"},
        {"identifier": "dev-850-1-0", "sentence": "One image has two dogs.", "label": "False", "writer": "w1"},
    ]
    features = {
        f"dev-850-{pair}-img{side}": {
            "image_id": f"dev-850-{pair}-img{side}",
            "boxes": [[0.0, 0.0, 1.0, 1.0]],
            "features": [[float(pair), float(side)]],
            "image_width": 10,
            "image_height": 8,
        }
        for pair in (0, 1)
        for side in (0, 1)
    }
    data = benchmarks.load_nlvr2(_jsonl(tmp_path / "dev.json", rows), region_features=features)
    assert data["image_id"] == ["dev-850-0-img0", "dev-850-1-img0"]
    assert data["image_id_2"] == ["dev-850-0-img1", "dev-850-1-img1"]
    assert data["label"] == [1, 0] and data.features["label"].names == ["False", "True"]
    assert data[1]["region_features"] == [[1.0, 0.0]] and data[1]["region_features_2"] == [[1.0, 1.0]]
    with pytest.raises(ValueError, match="line 1.*'True' or 'False'"):
        benchmarks.load_nlvr2(_jsonl(tmp_path / "bad.json", [dict(rows[0], label="yes")]))


def test_snli_ve_labels_and_missing_fields(tmp_path):
    rows = [
        {
            "Flickr30K_ID": "1000092795",
            "sentence1": "Two men.",
            "sentence2": "People outside.",
            "gold_label": "neutral",
            "pairID": "p1",
        },
    ]
    data = benchmarks.load_snli_ve(_jsonl(tmp_path / "snli_ve_dev.jsonl", rows))
    assert data[0] == {
        "pair_id": "p1",
        "image_id": "1000092795",
        "text": "People outside.",
        "label": 1,
        "premise": "Two men.",
    }
    with pytest.raises(ValueError, match=r"line 1 is missing \['gold_label'\]"):
        benchmarks.load_snli_ve(_jsonl(tmp_path / "bad.jsonl", [{"Flickr30K_ID": "1", "sentence2": "x"}]))


def test_vcr_tokens_with_object_references_become_text(tmp_path):
    row = {
        "annot_id": "val-0",
        "img_fn": "lsmdc_x/img.jpg",
        "metadata_fn": "lsmdc_x/img.json",
        "objects": ["person", "person", "car"],
        "question": ["Why", "is", [0], "looking", "at", [1, 2], "?"],
        "answer_choices": [[[0], "is", "angry", "."], ["He", "is", "tired", "."], ["No", "."], ["Yes", "."]],
        "rationale_choices": [["a"], ["b"], ["c"], [[2], "is", "red", "."]],
        "answer_label": 0,
        "rationale_label": 3,
    }
    data = benchmarks.load_vcr(_jsonl(tmp_path / "val.jsonl", [row]))
    assert data[0]["question"] == "Why is person looking at person and car?"
    assert data[0]["question_refs"] == [0, 1, 2]
    assert data[0]["answer_choices"][0] == "person is angry."
    assert data[0]["rationale_choices"][3] == "car is red."
    assert (data[0]["answer_label"], data[0]["rationale_label"]) == (0, 3)
    test_row = {key: value for key, value in row.items() if not key.endswith("_label")}
    assert benchmarks.load_vcr(_jsonl(tmp_path / "test.jsonl", [test_row]))[0]["answer_label"] == -1
    with pytest.raises(ValueError, match=r"reference \[5\] does not index the 3 objects"):
        benchmarks.load_vcr(_jsonl(tmp_path / "bad.jsonl", [dict(row, question=["Why", [5]])]))
    with pytest.raises(ValueError, match="must hold 4 choices"):
        benchmarks.load_vcr(_jsonl(tmp_path / "bad2.jsonl", [dict(row, answer_choices=[["a"]])]))


def _refcoco_files(tmp_path, refs):
    instances = {
        "images": [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "width": 640, "height": 480}],
        "annotations": [
            {"id": 11, "image_id": 7, "bbox": [10, 20, 30, 40], "category_id": 1},
            {"id": 12, "image_id": 7, "bbox": [100, 100, 50, 50], "category_id": 3},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    with open(tmp_path / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)  # the released files are Python 2 pickles
    return tmp_path / "refs(unc).p", tmp_path / "instances.json"


def test_refcoco_expressions_with_gold_and_candidate_boxes(tmp_path):
    refs = [
        {
            "ref_id": 0,
            "ann_id": 12,
            "image_id": 7,
            "split": "testA",
            "category_id": 3,
            "sentences": [{"sent": "right car", "sent_id": 5}, {"sent": "the car", "sent_id": 6}],
        },
        {
            "ref_id": 1,
            "ann_id": 11,
            "image_id": 7,
            "split": "train",
            "category_id": 1,
            "sentences": [{"sent": "left man", "sent_id": 7}],
        },
    ]
    data = benchmarks.load_refcoco(*_refcoco_files(tmp_path, refs), split="testA")
    assert data["text"] == ["right car", "the car"]
    assert data[0]["box"] == [100.0, 100.0, 150.0, 150.0]
    assert data[0]["candidate_boxes"] == [[10.0, 20.0, 40.0, 60.0], [100.0, 100.0, 150.0, 150.0]]
    assert data[0]["target"] == 1 and data[0]["image_width"] == 640
    with pytest.raises(ValueError, match="no expressions of split 'val'.*'testA', 'train'"):
        benchmarks.load_refcoco(tmp_path / "refs(unc).p", tmp_path / "instances.json", split="val")


def test_a_refs_pickle_that_names_a_callable_is_refused_without_running_it(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    refs_file, instances_file = _refcoco_files(tmp_path, [])
    with open(refs_file, "wb") as handle:
        pickle.dump([Payload()], handle, protocol=2)
    with pytest.raises(ValueError, match="refused rather than executed"):
        benchmarks.load_refcoco(refs_file, instances_file)
    assert not (tmp_path / "ran").exists()


def test_karpathy_split_with_restval_for_training(tmp_path):
    images = [
        {"filepath": "val2014", "filename": "a.jpg", "cocoid": 1, "split": "test", "sentences": [{"raw": "A cat. "}]},
        {"filepath": "val2014", "filename": "b.jpg", "cocoid": 2, "split": "restval", "sentences": [{"raw": "x"}]},
        {
            "filepath": "train2014",
            "filename": "c.jpg",
            "cocoid": 3,
            "split": "train",
            "sentences": [{"raw": "y"}, {"raw": "z"}],
        },
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    test = benchmarks.load_karpathy_split(path, "test")
    assert test[0] == {"image_id": 1, "file_name": "val2014/a.jpg", "text": "A cat.", "caption_index": 0}
    assert benchmarks.load_karpathy_split(path, "train")["image_id"] == [2, 3, 3]
    assert benchmarks.load_karpathy_split(path, "train", include_restval=False)["image_id"] == [3, 3]
    with pytest.raises(ValueError, match="no images of split 'val'"):
        benchmarks.load_karpathy_split(path, "val")
