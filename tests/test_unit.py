"""UniT: parity with MMF's original code on the fixture (every output), the checkpoint layouts the converter reads,
the objectives training, the multi-task sampler's frequencies, Trainer integration, and bad input."""

import collections
import copy
import json

import pytest
import torch
from conftest import fixture_dir

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.conversion import common
from hf_vlp.conversion import unit as unit_conversion
from hf_vlp.modeling.unit import (
    UnitConfig,
    UnitForMultiTaskLearning,
    UnitMultiTaskBatchSampler,
    UnitMultiTaskTrainer,
    collate_unit_batch,
)
from hf_vlp.modeling.unit.inputs_unit import example_inputs

TASKS = {
    "detection_coco": dict(type="detection", task_index=0, num_queries=4, num_classes=5),
    "detection_vg": dict(type="detection", task_index=1, num_queries=4, num_classes=6, use_attributes=True),
    "vqa": dict(type="vl", task_index=2, num_queries=2, num_labels=7, loss="binary_cross_entropy_with_logits"),
    "entailment": dict(type="vl", task_index=3, num_queries=2, num_labels=3, keep_only_cls=True),
    "sst2": dict(type="glue", task_index=4, num_queries=2, num_labels=2),
}


def tiny_config(**overrides):
    sizes = dict(
        text_config=dict(
            vocab_size=40,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
        ),
        tasks=TASKS,
        backbone_layers=[1, 1, 1, 1],
        backbone_stem_channels=8,
        backbone_base_channels=4,
        backbone_dilation=False,
        backbone_frozen_stages=-1,
        encoder_hidden_size=16,
        decoder_hidden_size=24,
        num_encoder_layers=1,
        num_decoder_layers=2,
        num_heads=2,
        ffn_size=32,
        dropout=0.0,
        max_task_num=8,
        num_attributes=9,
        max_attributes=3,
    )
    sizes.update(overrides)
    return UnitConfig(**sizes)


# ------------------------------------------------------------------------------------------------------------------
# parity and checkpoint layouts
# ------------------------------------------------------------------------------------------------------------------


def test_fixture_parity_every_output():
    folder = fixture_dir("unit")
    checkpoint = next(folder.glob("*.pth"))
    model = unit_conversion.convert(checkpoint)
    lines = []
    report = common.verify(unit_conversion, model, folder, print_fn=lines.append)
    assert report, "\n".join(lines)
    assert not report.skipped and len(report.compared) == len(report.checks), "\n".join(lines)


def _fixture_checkpoint():
    folder = fixture_dir("unit")
    checkpoint = torch.load(next(folder.glob("*.pth")), map_location="cpu", weights_only=True)
    return folder, checkpoint


def _logits(model, folder):
    with torch.no_grad():
        outputs = unit_conversion.fixture_outputs(model.eval(), folder)
    return {k: v for k, v in outputs.items() if torch.is_tensor(v)}


def test_bare_state_dict_and_legacy_detr_prefix_convert_the_same(tmp_path):
    folder, checkpoint = _fixture_checkpoint()
    expected = _logits(unit_conversion.convert(checkpoint), folder)
    legacy = {k.replace("unit_base_model.", "detr_model."): v for k, v in checkpoint["model"].items()}
    torch.save(legacy, tmp_path / "bare_legacy.pth")  # bare: MMF's `ckpt.get('model', ckpt)`
    with pytest.raises(common.ConversionError, match="config"):
        unit_conversion.convert(tmp_path / "bare_legacy.pth")  # a bare state dict carries no config
    (tmp_path / "config.json").write_text(json.dumps(checkpoint["config"]))
    converted = unit_conversion.convert(tmp_path / "bare_legacy.pth", tmp_path / "config.json")
    got = _logits(converted, folder)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_per_dataset_decoders_layout_and_inconsistent_duplicates():
    folder, checkpoint = _fixture_checkpoint()
    state = dict(checkpoint["model"])
    config = copy.deepcopy(checkpoint["config"])
    shared = {k: v for k, v in state.items() if k.startswith("unit_base_model.transformer.decoder.")}
    # the shared layout's duplicates must be identical copies
    broken = dict(state)
    duplicate = next(k for k in state if k.startswith("unit_base_model.transformer.decoders."))
    broken[duplicate] = broken[duplicate] + 1
    with pytest.raises(common.ConversionError, match="identical copy"):
        unit_conversion.convert({"model": broken, "config": config})
    # share_decoders: false -> only the per-dataset copies, each its own weights
    separate = {k: v for k, v in state.items() if k not in shared}
    generator = torch.Generator().manual_seed(0)
    for key in list(separate):
        if key.startswith("unit_base_model.transformer.decoders."):
            separate[key] = separate[key] + 0.01 * torch.randn(separate[key].shape, generator=generator)
    config["model_config"]["unit"]["base_args"]["share_decoders"] = False
    model = unit_conversion.convert({"model": separate, "config": config})
    assert not model.config.share_decoders and model.unit.decoder is None
    assert set(model.unit.decoders) == set(model.config.tasks)
    for name in model.config.tasks:
        kind = model.config.tasks[name]["type"]
        key = f"unit_base_model.transformer.decoders.{kind}.{name}.layers.0.linear1.weight"
        torch.testing.assert_close(model.unit.decoders[name].layers[0].linear1.weight, separate[key])
    outputs = _logits(model, folder)
    assert all(torch.isfinite(v).all() for v in outputs.values())


def test_converter_reads_sizes_from_the_checkpoint():
    _, checkpoint = _fixture_checkpoint()
    model = unit_conversion.convert(checkpoint)
    config = model.config
    base_args = checkpoint["config"]["model_config"]["unit"]["base_args"]
    assert config.encoder_hidden_size == base_args["encoder_hidden_dim"]
    assert config.decoder_hidden_size == base_args["decoder_hidden_dim"]
    assert config.num_decoder_layers == base_args["dec_layers"]
    for kind, datasets in base_args["num_queries"].items():
        for name, queries in datasets.items():
            assert config.tasks[name]["type"] == kind and config.tasks[name]["num_queries"] == queries
    assert config.text_config.vocab_size == base_args["bert_config"]["vocab_size"]


# ------------------------------------------------------------------------------------------------------------------
# objectives
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
def test_each_objective_loss_falls_on_a_tiny_batch(task):
    torch.manual_seed(0)
    config = tiny_config()
    model = UnitForMultiTaskLearning(config).train()
    inputs = example_inputs(config, "multitask", batch_size=2, text_length=6, dataset=task)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(25):
        optimizer.zero_grad()
        output = model(**inputs)
        if first is None:
            first = {k: float(v.detach()) for k, v in output.loss_dict.items()}
        output.loss.backward()
        optimizer.step()
    with torch.no_grad():
        last = {k: float(v) for k, v in model(**inputs).loss_dict.items()}
    assert last.keys() == first.keys()
    names = ("loss_ce", "loss_bbox", "loss_giou") if TASKS[task]["type"] == "detection" else ("loss_0",)
    if TASKS[task].get("use_attributes"):
        names += ("loss_attr",)
    for name in names:
        assert last[name] < first[name], (task, name, first[name], last[name])
    if TASKS[task]["type"] == "detection":  # auxiliary losses on every decoder layer but the last
        assert {"loss_ce_0", "loss_bbox_0", "loss_giou_0"} <= set(first)


def test_detection_outputs_and_attribute_prediction():
    config = tiny_config(predict_attributes=True)
    model = UnitForMultiTaskLearning(config).eval()
    inputs = example_inputs(config, "multitask", dataset="detection_vg")
    with torch.no_grad():
        output = model(**inputs)
    assert output.logits.shape == (2, 4, 7) and output.pred_boxes.shape == (2, 4, 4)
    assert ((output.pred_boxes > 0) & (output.pred_boxes < 1)).all()
    assert output.attribute_logits.shape == (2, 4, 9)
    assert output.decoder_intermediate_hidden_states.shape == (2, 2, 4, 24)
    # detection without labels: predictions, no loss
    unlabeled = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad():
        assert model(**unlabeled).loss is None


def test_glue_reads_no_image_and_task_embeddings_change_the_output():
    config = tiny_config()
    model = UnitForMultiTaskLearning(config).eval()
    inputs = example_inputs(config, "multitask", dataset="sst2")
    assert "pixel_values" not in inputs
    with torch.no_grad():
        logits = model(**inputs).logits
        model.unit.task_embeddings_lang.weight[TASKS["sst2"]["task_index"]] += 1.0
        assert not torch.allclose(model(**inputs).logits, logits)


def test_per_dataset_decoders_are_separate_modules():
    config = tiny_config(share_decoders=False)
    model = UnitForMultiTaskLearning(config)
    assert model.unit.decoder is None and set(model.unit.decoders) == set(TASKS)
    names = {name for name, _ in model.named_parameters()}
    assert "unit.decoders.vqa.layers.0.linear1.weight" in names and "unit.decoders.sst2.norm.weight" in names
    shared = UnitForMultiTaskLearning(tiny_config())
    assert shared.unit.decoders is None and sum(p.numel() for p in shared.parameters()) < sum(
        p.numel() for p in model.parameters()
    )


# ------------------------------------------------------------------------------------------------------------------
# multi-task sampling and Trainer
# ------------------------------------------------------------------------------------------------------------------


def test_multitask_sampler_frequencies_match_the_ratios():
    sizes = {"a": 40, "b": 25, "c": 10}
    ratios = {"a": 0.2, "b": 0.5, "c": 0.3}
    sampler = UnitMultiTaskBatchSampler(sizes, batch_size=4, ratios=ratios, num_batches=6000, seed=1)
    counts = collections.Counter()
    for batch in sampler:
        tasks = {sampler.task_of(i) for i in batch}
        assert len(tasks) == 1 and len(batch) == 4
        counts[tasks.pop()] += 1
    for name, ratio in ratios.items():
        assert abs(counts[name] / 6000 - ratio) < 0.02, (name, counts)
    # every row of a dataset is visited before any repeats
    first_of_c = [i for batch in sampler for i in batch if sampler.task_of(i) == "c"][:10]
    assert sorted(first_of_c) == list(range(65, 75))
    # no ratios: proportional to the sizes
    proportional = UnitMultiTaskBatchSampler(sizes, batch_size=2, num_batches=6000, seed=2)
    counts = collections.Counter(proportional.task_of(batch[0]) for batch in proportional)
    for name, size in sizes.items():
        assert abs(counts[name] / 6000 - size / 75) < 0.02, (name, counts)
    with pytest.raises(ValueError, match="ratios"):
        UnitMultiTaskBatchSampler(sizes, batch_size=2, ratios={"a": 1.0})


def test_trainer_trains_mixed_tasks(tmp_path):
    from torch.utils.data import ConcatDataset
    from transformers import TrainingArguments

    torch.manual_seed(0)
    config = tiny_config()
    model = UnitForMultiTaskLearning(config)
    datasets, sizes = [], {}
    for offset, name in enumerate(("detection_coco", "vqa", "sst2")):
        batch = example_inputs(config, "multitask", batch_size=4, text_length=6, seed=offset, dataset=name)
        rows = []
        for row in range(4):
            example = {"task": name}
            for key, value in batch.items():
                if key == "task":
                    continue
                example[key] = value[row]
            rows.append(example)
        datasets.append(rows)
        sizes[name] = len(rows)
    sampler = UnitMultiTaskBatchSampler(sizes, batch_size=2, ratios={"detection_coco": 1, "vqa": 1, "sst2": 1})
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        learning_rate=1e-3,
        logging_steps=1,
    )
    trainer = UnitMultiTaskTrainer(
        model=model, args=arguments, train_dataset=ConcatDataset(datasets), batch_sampler=sampler
    )
    before = model.unit.query_embeds["vqa"].weight.detach().clone()
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 6 and all(loss == loss and loss > 0 for loss in losses)
    assert not torch.equal(model.unit.query_embeds["vqa"].weight.detach(), before)


def test_collate_refuses_mixed_datasets_and_pads():
    rows = [
        {
            "task": "vqa",
            "pixel_values": torch.ones(3, 4, 5),
            "input_ids": torch.tensor([1, 2, 3]),
            "labels": torch.zeros(7),
        },
        {
            "task": "vqa",
            "pixel_values": torch.ones(3, 6, 2),
            "input_ids": torch.tensor([1, 2]),
            "labels": torch.ones(7),
        },
    ]
    batch = collate_unit_batch(rows)
    assert batch["pixel_values"].shape == (2, 3, 6, 5) and batch["pixel_mask"][1].sum() == 12
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    with pytest.raises(ValueError, match="one dataset"):
        collate_unit_batch([rows[0], {**rows[1], "task": "sst2"}])


# ------------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_value_errors():
    config = tiny_config()
    model = UnitForMultiTaskLearning(config).eval()
    detection = example_inputs(config, "multitask", dataset="detection_coco")
    with pytest.raises(ValueError, match="pixel_mask"):
        model(**{**detection, "pixel_mask": detection["pixel_mask"][:, :-1]})
    pixel_boxes = copy.deepcopy(detection["labels"])
    pixel_boxes[0]["boxes"] = pixel_boxes[0]["boxes"] * 100  # pixels, not normalized
    with pytest.raises(ValueError, match=r"boxes.*normalized \(cx, cy, w, h\)"):
        model(**{**detection, "labels": pixel_boxes})
    corners = copy.deepcopy(detection["labels"])
    corners[1]["boxes"][:, 2:] = -0.1  # negative width / height
    with pytest.raises(ValueError, match="boxes"):
        model(**{**detection, "labels": corners})
    with pytest.raises(ValueError, match=r"`task` must be one of .*'vqa'.*got 'vqa2'"):
        model(**{**detection, "task": "vqa2"})
    with pytest.raises(ValueError, match="task"):
        model(**{k: v for k, v in detection.items() if k != "task"})  # several datasets: the task is required
    vqa = example_inputs(config, "multitask", dataset="vqa")
    with pytest.raises(ValueError, match="input_ids"):
        model(**{k: v for k, v in vqa.items() if k != "input_ids"})
    with pytest.raises(ValueError, match="labels"):
        model(**{**vqa, "labels": torch.tensor([0, 1])})  # class ids for a soft-score task
    with pytest.raises(ValueError, match="pixel_values"):
        model(**{**vqa, "pixel_values": None})
    with pytest.raises(ValueError, match=r"tasks\['x'\]\['type'\]"):
        tiny_config(tasks={"x": dict(type="captioning", task_index=0, num_queries=1)})
