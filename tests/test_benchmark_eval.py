"""`hf_vlp.benchmark_eval`: a saved tiny UNITER scored on small files in the official formats. Where the head's bias
fixes every prediction the metric is known by hand; otherwise it is recomputed from the model's own scores."""

import json
import pickle

import numpy as np
import pytest
import torch

from hf_vlp import benchmark_eval, metrics
from hf_vlp.modeling.uniter import (
    UniterConfig,
    UniterForImageTextRetrieval,
    UniterForReferringExpression,
    UniterForVisualEntailment,
    UniterForVisualQuestionAnswering,
    UniterForVisualReasoning,
    UniterProcessor,
)
from hf_vlp.processing.region import RegionFeatureProcessor

DIM = 6


def _config(**overrides):
    sizes = dict(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        visual_feat_dim=DIM,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return UniterConfig(**{**sizes, **overrides})


def _save(model, bert_tokenizer, folder):
    model.save_pretrained(folder)
    UniterProcessor(RegionFeatureProcessor(), bert_tokenizer).save_pretrained(folder)
    return folder


def _features(folder, image_ids, regions=3, seed=0):
    """One NPZ per image: pixel boxes in a 100 x 80 image, DIM-d features."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for image_id in image_ids:
        corner = rng.uniform(0, 40, (regions, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(10, 40, (regions, 2))], axis=1).astype(np.float32)
        np.savez(
            folder / f"{image_id}.npz",
            boxes=boxes,
            features=rng.normal(size=(regions, DIM)).astype(np.float32),
            image_width=100,
            image_height=80,
        )
    return folder


def _always(model, head, index):
    """Make `head`'s last linear layer output a huge score for class `index` whatever its input."""
    layer = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(-100.0)
        layer.bias[index] = 100.0
    return model


def test_vqa_official_accuracy_of_a_fixed_answer(tmp_path, bert_tokenizer):
    answers = ["yes", "no", "2"]
    model = UniterForVisualQuestionAnswering(_config(num_labels=3, id2label=dict(enumerate(answers))))
    folder = _save(_always(model, model.classifier, 2), bert_tokenizer, tmp_path / "model")
    questions = {"questions": [{"question_id": q, "image_id": q % 2, "question": "how many?"} for q in range(3)]}
    annotations = {
        "annotations": [
            {
                "question_id": 0,
                "answers": [{"answer": "2"}] * 10,
                "answer_type": "number",
                "multiple_choice_answer": "2",
            },
            {
                "question_id": 1,
                "answers": [{"answer": "two"}] * 2 + [{"answer": "3"}] * 8,
                "answer_type": "number",
                "multiple_choice_answer": "3",
            },
            {
                "question_id": 2,
                "answers": [{"answer": "yes"}] * 10,
                "answer_type": "yes/no",
                "multiple_choice_answer": "yes",
            },
        ]
    }
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    features = _features(tmp_path / "features", [0, 1])
    result = benchmark_eval.evaluate_benchmark("vqa", folder, [tmp_path / "q.json", tmp_path / "a.json"], features)
    # question 1: "two" is written as the annotators typed it, so "2" matches none of them (official behaviour)
    assert result == {
        "accuracy": pytest.approx(1 / 3),
        "accuracy/number": pytest.approx(0.5),
        "accuracy/yes/no": 0.0,
    }


def test_nlvr2_and_entailment_of_a_fixed_label(tmp_path, bert_tokenizer):
    model = UniterForVisualReasoning(_config(type_vocab_size=3, nlvr2_head="paired"))
    folder = _save(_always(model, model.classifier, 1), bert_tokenizer, tmp_path / "nlvr2")  # always "True"
    rows = [
        {"identifier": "dev-1-0-0", "sentence": "a", "label": "True"},
        {"identifier": "dev-1-1-0", "sentence": "a", "label": "False"},
        {"identifier": "dev-2-0-1", "sentence": "b", "label": "True"},
    ]
    (tmp_path / "dev.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    features = _features(tmp_path / "f", [f"dev-{s}-{p}-img{i}" for s, p in ((1, 0), (1, 1), (2, 0)) for i in (0, 1)])
    result = benchmark_eval.evaluate_benchmark("nlvr2", folder, tmp_path / "dev.json", features)
    assert result == {"accuracy": pytest.approx(2 / 3), "consistency": pytest.approx(1 / 2)}

    labels = ["entailment", "neutral", "contradiction"]
    # a head whose label order differs from the file's: the names decide
    model = UniterForVisualEntailment(
        _config(num_labels=3, id2label={0: "contradiction", 1: "entailment", 2: "neutral"})
    )
    folder = _save(_always(model, model.classifier, 0), bert_tokenizer, tmp_path / "ve")  # always contradiction
    rows = [{"Flickr30K_ID": str(i), "sentence2": "h", "gold_label": labels[i % 3], "pairID": str(i)} for i in range(6)]
    (tmp_path / "ve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    features = _features(tmp_path / "vef", range(6))
    assert benchmark_eval.evaluate_benchmark("entailment", folder, tmp_path / "ve.jsonl", features) == {
        "accuracy": pytest.approx(2 / 6)
    }


def test_refexp_scores_the_box_of_the_chosen_detection(tmp_path, bert_tokenizer):
    torch.manual_seed(0)
    model = UniterForReferringExpression(_config())
    folder = _save(model, bert_tokenizer, tmp_path / "re")
    features = _features(tmp_path / "f", [7])
    record = np.load(features / "7.npz")
    instances = {
        "images": [{"id": 7, "file_name": "x.jpg", "width": 100, "height": 80}],
        "annotations": [
            {"id": 1 + i, "image_id": 7, "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            for i, b in enumerate(record["boxes"])
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    refs = [
        {"ref_id": i, "ann_id": 1 + i, "image_id": 7, "split": "val", "sentences": [{"sent": text, "sent_id": i}]}
        for i, text in enumerate(["the left one", "the middle one", "the right one"])
    ]
    with open(tmp_path / "refs.p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    result = benchmark_eval.evaluate_benchmark(
        "refexp", folder, [tmp_path / "refs.p", tmp_path / "instances.json"], features, split="val"
    )
    # the model's own choice per expression, through the same processor, then IoU by hand
    processor = UniterProcessor(RegionFeatureProcessor(), bert_tokenizer)
    chosen = []
    for ref in refs:
        batch = processor(
            text=[ref["sentences"][0]["sent"]],
            visual_feats=[record["features"]],
            boxes=[record["boxes"]],
            image_sizes=[(100, 80)],
        )
        with torch.no_grad():
            chosen.append(int(model.eval()(**batch).logits.argmax(-1)))
    gold = [ref["ann_id"] - 1 for ref in refs]
    expected = metrics.refexp_accuracy(record["boxes"][chosen], record["boxes"][gold])
    assert result == pytest.approx(expected)


def test_retrieval_recall_over_a_gallery(tmp_path, bert_tokenizer):
    torch.manual_seed(0)
    model = UniterForImageTextRetrieval(_config())
    folder = _save(model, bert_tokenizer, tmp_path / "ret")
    images = [
        {
            "filename": f"{i}.jpg",
            "imgid": i,
            "split": "test",
            "sentences": [{"raw": f"caption {i} {k}"} for k in range(2)],
        }
        for i in range(4)
    ]
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": images}))
    features = _features(tmp_path / "f", range(4))
    result = benchmark_eval.evaluate_benchmark(
        "retrieval", folder, tmp_path / "dataset_flickr30k.json", features, gallery=3
    )
    assert set(result) == {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    assert result["text_to_image_R@5"] == 1.0  # a gallery of 3 images
    # recomputed from the model's own pair scores (6 captions of the first 3 images)
    processor = UniterProcessor(RegionFeatureProcessor(), bert_tokenizer)
    scores = np.zeros((3, 6))
    for i in range(3):
        record = np.load(tmp_path / "f" / f"{i}.npz")
        for t in range(6):
            batch = processor(
                text=[f"caption {t // 2} {t % 2}"],
                visual_feats=[record["features"]],
                boxes=[record["boxes"]],
                image_sizes=[(100, 80)],
            )
            with torch.no_grad():
                scores[i, t] = float(model.eval()(**batch).logits.reshape(-1)[-1])
    assert result == pytest.approx(metrics.retrieval_recall(scores, [0, 0, 1, 1, 2, 2]))


def test_bad_arguments(tmp_path, bert_tokenizer):
    folder = _save(UniterForVisualQuestionAnswering(_config(num_labels=2)), bert_tokenizer, tmp_path / "m")
    features = _features(tmp_path / "f", [0])
    with pytest.raises(ValueError, match="`task` must be one of"):
        benchmark_eval.evaluate_benchmark("gqa", folder, tmp_path / "x.json", features)
    with pytest.raises(ValueError, match="does not exist"):
        benchmark_eval.evaluate_benchmark("nlvr2", folder, tmp_path / "missing.json", features)
    (tmp_path / "dev.json").write_text("")
    with pytest.raises(ValueError, match="holds a UniterForVisualQuestionAnswering, not the nlvr2 head"):
        benchmark_eval.evaluate_benchmark("nlvr2", folder, tmp_path / "dev.json", features)
    (tmp_path / "q.json").write_text("{}")
    with pytest.raises(ValueError, match="needs two data files"):
        benchmark_eval.evaluate_benchmark("vqa", folder, tmp_path / "q.json", features)
    with pytest.raises(ValueError, match="no answer table"):
        benchmark_eval.evaluate_benchmark("vqa", folder, [tmp_path / "q.json", tmp_path / "q.json"], features)


def test_the_cli_prints_the_benchmark_metric(tmp_path, bert_tokenizer, capsys):
    from hf_vlp import cli

    model = UniterForVisualReasoning(_config(type_vocab_size=3, nlvr2_head="paired"))
    folder = _save(_always(model, model.classifier, 0), bert_tokenizer, tmp_path / "nlvr2")  # always "False"
    rows = [
        {"identifier": f"dev-1-{p}-0", "sentence": "a", "label": label} for p, label in enumerate(["False", "True"])
    ]
    (tmp_path / "dev.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    features = _features(tmp_path / "f", [f"dev-1-{p}-img{i}" for p in (0, 1) for i in (0, 1)])
    status = cli.main(
        ["eval", "nlvr2", "--model", str(folder), "--data", str(tmp_path / "dev.json"), "--features", str(features)]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "accuracy     0.5000" in printed and "consistency  0.0000" in printed
    assert cli.main(["eval", "nlvr2", "--model", str(folder), "--data", str(tmp_path / "dev.json")]) != 0
    assert "--data needs --features" in capsys.readouterr().err
