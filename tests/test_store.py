"""The feature store: `hf-vlp extract` writes what the detector gives, exactly; runs resume; task datasets hold ids
and the features are fetched by id (never copied per question)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_processors_images import TinyConvDetector, photo

from hf_vlp.cli import main
from hf_vlp.data.loaders import load_vqa_v2
from hf_vlp.data.store import FeatureStore, StoreFeaturesCollator, extract_to_store, with_region_features
from hf_vlp.processing.images import load_image
from hf_vlp.processing.region import RegionFeatureProcessor


class CountingDetector(TinyConvDetector):
    """Counts the images it sees; raises on the image numbered `fail_at` (to interrupt a run)."""

    def __init__(self, *args, fail_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen, self.fail_at = 0, fail_at

    def extract_regions(self, images):
        if self.fail_at is not None and self.seen + len(images) > self.fail_at:
            raise RuntimeError("interrupted")
        self.seen += len(images)
        return super().extract_regions(images)


def write_photos(folder, names, size=(24, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        photo(seed, size=(size[0] + seed, size[1])).save(folder / name)
    return [folder / name for name in names]


def saved_detector(tmp_path, bert_tokenizer):
    """A processor folder with the tiny detector saved in it: what `--detector DIR` reads."""
    from hf_vlp.modeling.uniter import UniterProcessor

    processor = UniterProcessor(RegionFeatureProcessor(), bert_tokenizer, detector=TinyConvDetector(seed=2))
    processor.save_pretrained(tmp_path / "processor")
    return tmp_path / "processor", processor.detector


def test_extract_command_round_trips_the_detector_output_exactly(tmp_path, bert_tokenizer, capsys):
    folder, detector = saved_detector(tmp_path, bert_tokenizer)
    paths = write_photos(tmp_path / "images", ["b.png", "a.png", "sub/c.png"])
    code = main(
        ["extract", "--detector", str(folder), "--images", str(tmp_path / "images"), "--output", str(tmp_path / "s")]
        + ["--batch_size", "2", "--keep", "class_probs,object_ids", "--no_progress"]
    )
    assert code == 0 and "3 images (12-d features of tiny-conv-12d)" in capsys.readouterr().out
    store = FeatureStore(tmp_path / "s")
    assert sorted(store.ids) == ["a", "b", "c"] and store.feature_dim == 12
    for path in paths:
        expected = detector.extract_regions([load_image(path)])[0]
        row = store[path.stem]
        assert row["features"].dtype == np.float32
        assert np.array_equal(row["features"], expected["features"].numpy())  # exact, not close
        assert np.array_equal(row["boxes"], expected["boxes"].numpy())
        assert np.array_equal(row["class_probs"], expected["class_probs"].numpy())
        assert row["object_ids"].tolist() == expected["object_ids"].tolist()
        assert (int(row["image_height"]), int(row["image_width"])) == expected["image_size"]
    # the shards are a plain `datasets` Arrow dataset too
    import datasets

    loaded = datasets.load_dataset("arrow", data_files=str(tmp_path / "s" / "*.arrow"), split="train")
    assert sorted(loaded["image_id"]) == ["a", "b", "c"]


def test_extraction_resumes_and_never_leaves_a_half_shard(tmp_path):
    images = tmp_path / "images"
    write_photos(images, [f"{i}.png" for i in range(5)])
    with pytest.raises(RuntimeError, match="interrupted"):
        extract_to_store(
            CountingDetector(fail_at=3), images, tmp_path / "s", batch_size=1, shard_size=2, progress=False
        )
    assert sorted(p.name for p in (tmp_path / "s").glob("*.arrow*")) == ["part-00000.arrow"]  # 2 images
    detector = CountingDetector()
    store = extract_to_store(detector, images, tmp_path / "s", batch_size=2, shard_size=2, progress=False)
    assert detector.seen == 3 and sorted(store.ids) == ["0", "1", "2", "3", "4"]
    again = CountingDetector()
    extract_to_store(again, images, tmp_path / "s", progress=False)
    assert again.seen == 0
    with pytest.raises(ValueError, match="12-d features of 'tiny-conv-12d'.*8-d"):
        extract_to_store(TinyConvDetector(feature_dim=8), images, tmp_path / "s", progress=False)


def test_coco_file_names_are_found_by_integer_image_id(tmp_path):
    images = tmp_path / "images"
    write_photos(images, ["COCO_train2014_000000000042.jpg", "COCO_train2014_000000123456.jpg"])
    store = extract_to_store(
        TinyConvDetector(), str(images / "*.jpg"), tmp_path / "s", id_pattern=r"(\d+)$", progress=False
    )
    assert 42 in store and "123456" in store and "000000000042" in store and 7 not in store
    with pytest.raises(KeyError, match="not in the feature store"):
        store[7]


def vqa_files(tmp_path, image_ids, questions_per_image):
    questions, annotations, qid = [], [], 0
    for image_id in image_ids:
        for q in range(questions_per_image):
            questions.append({"question_id": qid, "image_id": image_id, "question": f"what is {q}?"})
            answers = [{"answer": "yes" if q % 2 else "no"} for _ in range(10)]
            annotations.append({"question_id": qid, "answers": answers, "multiple_choice_answer": answers[0]["answer"]})
            qid += 1
    (tmp_path / "q.json").write_text(json.dumps({"questions": questions}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": annotations}))
    return tmp_path / "q.json", tmp_path / "a.json"


def test_vqa_rows_hold_ids_and_fetch_features_from_the_store(tmp_path):
    images = tmp_path / "images"
    write_photos(images, [f"COCO_val2014_{i:012d}.jpg" for i in (1, 2, 3)], size=(64, 48))
    detector = TinyConvDetector(feature_dim=256)
    store = extract_to_store(detector, images, tmp_path / "s", id_pattern=r"(\d+)$", progress=False)
    questions, annotations = vqa_files(tmp_path, [1, 2, 3], questions_per_image=200)
    data = load_vqa_v2(questions, annotations, region_features=tmp_path / "s")
    assert len(data) == 600 and "region_features" not in data.column_names
    # the rows reference ids only: the question table is far smaller than one feature copy per question
    per_question_copy = 5 * 256 * 4  # 5 regions of 256 float32
    assert data.data.nbytes < len(data) * per_question_copy / 20
    row = data[201]
    assert row["image_id"] == 2
    assert np.array_equal(np.asarray(row["region_features"]), store[2]["features"])
    assert (row["image_width"], row["image_height"]) == (64 + 1, 48)

    processor = RegionFeatureProcessor()

    def collate(examples):
        return processor(
            [e["region_features"] for e in examples],
            [e["boxes"] for e in examples],
            [(e["image_width"], e["image_height"]) for e in examples],
        )

    ids_only = load_vqa_v2(questions, annotations)  # no features at all: the collator fetches them
    batch = StoreFeaturesCollator(store, collate)([ids_only[0], ids_only[599]])
    torch.testing.assert_close(batch["visual_feats"][1], torch.from_numpy(store[3]["features"]))


def test_a_dataset_with_images_missing_from_the_store_is_refused(tmp_path):
    images = tmp_path / "images"
    write_photos(images, ["1.png"])
    store = extract_to_store(TinyConvDetector(), images, tmp_path / "s", progress=False)
    questions, annotations = vqa_files(tmp_path, [1, 9], questions_per_image=1)
    with pytest.raises(ValueError, match=r"no features for 1 image\(s\).*\[9\]"):
        with_region_features(load_vqa_v2(questions, annotations), store)


def test_extract_command_errors_are_one_line(tmp_path, capsys):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    code = main(["extract", "--detector", str(tmp_path / "nowhere"), "--images", str(tmp_path), "--output", "o"])
    assert code == 1 and "is not a folder" in capsys.readouterr().err
