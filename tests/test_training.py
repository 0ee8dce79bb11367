"""`hf-vlp train`: resume continues exactly where it stopped, seeds reproduce, evaluation during training reports the
task's metric (and `load_best_model_at_end` keeps the best checkpoint), checkpoints carry the processor, and every
architecture x task pair of the specs either trains or is refused with a ValueError naming both."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import hf_vlp
from hf_vlp import training
from hf_vlp.cli import main
from hf_vlp.registry import ARCHITECTURES

TINY = [
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "4",
    "--report_to",
    "none",
    "--logging_steps",
    "1",
    "--disable_tqdm",
    "true",
    "--dataloader_pin_memory",
    "false",
]


def hf_vlp_train(output_dir, stage="finetune", *flags):
    """`hf-vlp train <stage>` on a few scenes; returns the exit status."""
    sizes = ["--num_images", "8"] + (["--eval_images", "4"] if stage == "finetune" else [])
    return main(["train", stage, "--output_dir", str(output_dir), *sizes, *TINY, *flags])


def weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


def max_abs_diff(first, second):
    assert first.keys() == second.keys()
    return max((first[name].double() - second[name].double()).abs().max().item() for name in first)


def assert_equal_weights(first, second):
    assert first.keys() == second.keys()
    unequal = [name for name in first if not torch.equal(first[name], second[name])]
    assert not unequal, f"{len(unequal)} tensors differ (max abs diff {max_abs_diff(first, second):.3g}): {unequal[:5]}"


# ------------------------------------------------------------------------------------------------------------------
# resume
# ------------------------------------------------------------------------------------------------------------------


class StopAfter:
    """A TrainerCallback that ends training after `step` optimizer steps, as an interrupted job would."""

    def __new__(cls, step):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= step:
                    control.should_training_stop = True
                return control

        return _Stop()


def test_resume_continues_where_the_interrupted_run_stopped(tmp_path, monkeypatch):
    run = ["--task", "vqa", "--max_steps", "4", "--save_steps", "2", "--seed", "3"]
    assert hf_vlp_train(tmp_path / "uninterrupted", "finetune", *run) == 0

    class Interrupted(training.VLPTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(StopAfter(2))

    with monkeypatch.context() as patch:
        patch.setattr(training, "VLPTrainer", Interrupted)
        assert hf_vlp_train(tmp_path / "resumed", "finetune", *run) == 0
    assert not (tmp_path / "resumed" / "checkpoint-4").exists()
    interrupted = weights(tmp_path / "resumed")
    assert max_abs_diff(interrupted, weights(tmp_path / "uninterrupted")) > 0  # it really stopped early

    assert (
        hf_vlp_train(
            tmp_path / "resumed",
            "finetune",
            *run,
            "--resume_from_checkpoint",
            str(tmp_path / "resumed" / "checkpoint-2"),
        )
        == 0
    )
    state = json.loads((tmp_path / "resumed" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert_equal_weights(weights(tmp_path / "resumed"), weights(tmp_path / "uninterrupted"))


def test_pretraining_resume_continues_where_the_interrupted_run_stopped(tmp_path, monkeypatch):
    """The pretraining collator draws masks, negatives and objectives from its own generators: the checkpoint keeps
    their state for the next batch, so the resumed run masks exactly as the uninterrupted one."""
    run = ["--max_steps", "4", "--save_steps", "2", "--seed", "3"]
    assert hf_vlp_train(tmp_path / "uninterrupted", "pretrain", *run) == 0

    class Interrupted(training.VLPTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(StopAfter(2))

    with monkeypatch.context() as patch:
        patch.setattr(training, "VLPTrainer", Interrupted)
        assert hf_vlp_train(tmp_path / "resumed", "pretrain", *run) == 0
    assert (tmp_path / "resumed" / "checkpoint-2" / "collator_rng_state.pth").exists()
    assert not (tmp_path / "resumed" / "checkpoint-4").exists()  # it really stopped early
    checkpoint = str(tmp_path / "resumed" / "checkpoint-2")
    assert hf_vlp_train(tmp_path / "resumed", "pretrain", *run, "--resume_from_checkpoint", checkpoint) == 0
    assert_equal_weights(weights(tmp_path / "resumed"), weights(tmp_path / "uninterrupted"))


def test_collator_keeps_the_state_before_recent_calls():
    from hf_vlp.pretraining.collators import DataCollatorForVLPretraining
    from hf_vlp.recipes import build_processor, shapes_tokenizer

    collator = DataCollatorForVLPretraining(build_processor("uniter", shapes_tokenizer(num_images=20)), seed=1)
    rows = [
        {
            "text": "a red circle",
            "region_features": np.ones((2, 4)),
            "boxes": [[0, 0, 5, 5]] * 2,
            "image_width": 10,
            "image_height": 10,
            "region_labels": [1, 2],
            "region_class_probs": np.full((2, 6), 1 / 6),
        }
        for _ in range(3)
    ]
    first = collator(rows)
    state = collator.rng_state(before_call=0)
    collator(rows)
    collator.set_rng_state(state)
    again = collator(rows)
    assert torch.equal(first["input_ids"], again["input_ids"])
    with pytest.raises(ValueError, match="no generator state is kept for call 9"):
        collator.rng_state(before_call=9)


def test_resume_last_finds_the_newest_checkpoint(tmp_path):
    run = ["--task", "entailment", "--max_steps", "2", "--save_steps", "1", "--seed", "1"]
    from transformers import TrainingArguments

    assert hf_vlp_train(tmp_path, "finetune", *run) == 0

    assert training.resume_checkpoint(TrainingArguments(str(tmp_path), resume_from_checkpoint="last")) == str(
        tmp_path / "checkpoint-2"
    )
    assert training.resume_checkpoint(TrainingArguments(str(tmp_path))) is None
    training.check_train_arguments(
        training.FinetuneArguments(), TrainingArguments(str(tmp_path), resume_from_checkpoint="last")
    )


def test_resume_from_a_missing_checkpoint_is_refused_before_training(tmp_path, capsys):
    status = hf_vlp_train(tmp_path, "finetune", "--max_steps", "2", "--resume_from_checkpoint", str(tmp_path / "nope"))
    assert status == 2
    assert "resume_from_checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "model.safetensors").exists()
    assert hf_vlp_train(tmp_path / "empty", "finetune", "--max_steps", "2", "--resume_from_checkpoint", "last") == 2
    assert "no checkpoint-N folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------------
# seeds
# ------------------------------------------------------------------------------------------------------------------


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    run = ["--task", "vqa", "--max_steps", "2", "--save_strategy", "no"]
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert hf_vlp_train(tmp_path / name, "finetune", *run, "--seed", seed) == 0
    assert_equal_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert max_abs_diff(weights(tmp_path / "a"), weights(tmp_path / "c")) > 1e-3


def test_pretraining_seed_reproduces(tmp_path):
    run = ["--arch", "uniter", "--max_steps", "2", "--save_strategy", "no", "--seed", "2"]
    for name in ("a", "b"):
        assert hf_vlp_train(tmp_path / name, "pretrain", *run) == 0
    assert_equal_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))


# ------------------------------------------------------------------------------------------------------------------
# evaluation during training
# ------------------------------------------------------------------------------------------------------------------


def test_eval_during_training_logs_the_metric_and_keeps_the_best_checkpoint(tmp_path):
    # "best" = highest eval loss: a choice the last checkpoint does not win by default, so the test sees that the
    # weights kept are the best checkpoint's, not merely the last ones
    run = [
        "--task",
        "vqa",
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--load_best_model_at_end",
        "--metric_for_best_model",
        "loss",
        "--greater_is_better",
        "true",
        "--learning_rate",
        "1e-3",
        "--seed",
        "0",
    ]
    assert hf_vlp_train(tmp_path, "finetune", *run) == 0
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [2, 4]
    assert all(0.0 <= entry["eval_vqa_score"] <= 1.0 for entry in evaluations)
    best = max(evaluations, key=lambda entry: entry["eval_loss"])
    assert state["best_model_checkpoint"] == str(tmp_path / f"checkpoint-{best['step']}")
    assert_equal_weights(weights(tmp_path), weights(state["best_model_checkpoint"]))


@pytest.mark.parametrize(
    ("task", "metric"),
    [("entailment", "accuracy"), ("refexp", "accuracy"), ("nlvr2", "accuracy"), ("retrieval", "recall@1")],
)
def test_eval_reports_each_tasks_metric(tmp_path, task, metric):
    run = ["--task", task, "--max_steps", "2", "--save_strategy", "no", "--eval_strategy", "steps", "--eval_steps", "2"]
    trainer_states = []
    original = training.VLPTrainer.evaluate

    def evaluate(self, *args, **kwargs):
        metrics = original(self, *args, **kwargs)
        trainer_states.append(metrics)
        return metrics

    training.VLPTrainer.evaluate = evaluate
    try:
        assert hf_vlp_train(tmp_path, "finetune", *run) == 0
    finally:
        training.VLPTrainer.evaluate = original
    assert len(trainer_states) == 1 and 0.0 <= trainer_states[0][f"eval_{metric}"] <= 1.0


def test_retrieval_metric_counts_groups():
    from transformers import EvalPrediction

    from hf_vlp.trainer import compute_retrieval_metrics

    labels = [1, 0, 1, 0, 0, 1, 0]  # groups of 2, 3 and 2 (a short last batch)
    scores = [2.0, 1.0, 0.0, 3.0, -1.0, 1.0, 1.0]  # hit, miss (a negative above), miss (a tie)
    assert compute_retrieval_metrics(EvalPrediction(scores, labels))["recall@1"] == pytest.approx(1 / 3)
    two_class = [[0.0, 2.0], [0.0, 1.0]]  # Oscar's match classifier: log-odds of "match"
    assert compute_retrieval_metrics(EvalPrediction(two_class, [1, 0]))["recall@1"] == 1.0
    with pytest.raises(ValueError, match="start every group"):
        compute_retrieval_metrics(EvalPrediction(scores, [0] + labels[1:]))


# ------------------------------------------------------------------------------------------------------------------
# checkpoints carry the processor
# ------------------------------------------------------------------------------------------------------------------


def test_checkpoints_load_with_auto_processor(tmp_path):
    from transformers import AutoModel, AutoProcessor

    assert hf_vlp_train(tmp_path, "finetune", "--task", "vqa", "--max_steps", "2", "--save_steps", "1") == 0
    final = AutoProcessor.from_pretrained(tmp_path)
    for step in (1, 2):
        processor = AutoProcessor.from_pretrained(tmp_path / f"checkpoint-{step}")
        assert type(processor) is type(final)
        assert processor.tokenizer.get_vocab() == final.tokenizer.get_vocab()
        assert AutoModel.from_pretrained(tmp_path / f"checkpoint-{step}").config.model_type == "uniter"


# ------------------------------------------------------------------------------------------------------------------
# every architecture x task pair of the specs
# ------------------------------------------------------------------------------------------------------------------

PAIRS = [(arch, task) for arch, spec in sorted(ARCHITECTURES.items()) for task in spec.tasks]
TRAINABLE = [pair for pair in PAIRS if pair[1] in training.trainable_tasks(pair[0])]
REFUSED = [pair for pair in PAIRS if pair not in TRAINABLE]
# the default run trains one task per architecture; the rest run under `-m slow`
FIRST = {arch: next(task for a, task in TRAINABLE if a == arch) for arch in dict(TRAINABLE)}
MATRIX = [pytest.param(arch, task, marks=() if FIRST[arch] == task else pytest.mark.slow) for arch, task in TRAINABLE]


def test_the_matrix_covers_every_region_architecture():
    assert not hf_vlp.FAILED_ARCHITECTURES
    region = {arch for arch, spec in ARCHITECTURES.items() if spec.inputs.value == "regions"}
    assert set(FIRST) == region
    assert {task for _, task in TRAINABLE} == set(training.SHAPES_FINETUNE_TASKS) | {"pretraining"}


@pytest.mark.parametrize(("arch", "task"), MATRIX)
def test_every_trainable_pair_trains_through_the_cli(tmp_path, arch, task):
    from transformers import AutoProcessor

    run = ["--max_steps", "2", "--save_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2"]
    if task == "pretraining":
        status = hf_vlp_train(tmp_path, "pretrain", "--arch", arch, *run)
    else:
        status = hf_vlp_train(tmp_path, "finetune", "--arch", arch, "--task", task, *run)
    assert status == 0
    trained = weights(tmp_path)
    assert all(torch.isfinite(value).all() for value in trained.values())
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    metric = {"pretraining": "eval_loss", "retrieval": "eval_recall@1", "vqa": "eval_vqa_score"}.get(
        task, "eval_accuracy"
    )
    assert any(metric in entry for entry in state["log_history"])
    processor = AutoProcessor.from_pretrained(tmp_path / "checkpoint-2")
    assert type(processor).__name__ == ARCHITECTURES[arch].processor.rpartition(".")[2]


@pytest.mark.parametrize(("arch", "task"), REFUSED)
def test_every_other_pair_is_refused_naming_arch_and_task(tmp_path, capsys, arch, task):
    stage = ["pretrain", "--arch", arch] if task == "pretraining" else ["finetune", "--arch", arch, "--task", task]
    status = main(["train", *stage, "--output_dir", str(tmp_path), "--max_steps", "1", "--report_to", "none"])
    assert status == 2
    error = capsys.readouterr().err
    assert f"'{arch}'" in error and f"'{task}'" in error
    assert not any(tmp_path.iterdir())
