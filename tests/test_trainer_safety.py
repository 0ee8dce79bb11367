"""VLPTrainer on non-finite losses and gradients: stop naming the step (default) or skip the step and count it."""

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.modeling.uniter import UniterConfig, UniterForVisualQuestionAnswering
from hf_vlp.trainer import VLPTrainer

BATCH = 4
NAN_ROW = 5  # in the second batch of the sequential order: optimizer step 2


class VqaRows(torch.utils.data.Dataset):
    """16 UNITER VQA examples; row `nan_row` has a NaN answer score, the kind of row a broken annotation file gives
    (the region inputs are refused by the model's own input check, so the NaN comes in through the labels)."""

    def __init__(self, nan_row=NAN_ROW):
        generator = torch.Generator().manual_seed(0)
        self.rows = [
            dict(
                input_ids=torch.randint(5, 50, (6,), generator=generator),
                visual_feats=torch.rand(4, 12, generator=generator),
                visual_pos=torch.tensor([[0.1, 0.1, 0.5, 0.6]] * 4),
                labels=(torch.rand(7, generator=generator) > 0.7).float(),
            )
            for _ in range(16)
        ]
        if nan_row is not None:
            self.rows[nan_row]["labels"][2] = float("nan")

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


class Snapshots(TrainerCallback):
    """Parameters after every optimizer step, and the logged entries."""

    def __init__(self):
        self.parameters, self.logs = {}, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.parameters[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def tiny_vqa_model():
    torch.manual_seed(0)
    config = UniterConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        visual_feat_dim=12,
        num_labels=7,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return UniterForVisualQuestionAnswering(config)


def arguments(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        max_steps=4,
        logging_steps=1,
        learning_rate=1e-2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        seed=0,
        remove_unused_columns=False,
    )
    return TrainingArguments(**{**defaults, **overrides})


def all_finite(model):
    return all(torch.isfinite(p).all() for p in model.parameters())


def test_control_plain_trainer_lets_one_nan_row_corrupt_the_weights(tmp_path):
    """The failure VLPTrainer guards against: transformers' Trainer applies the NaN step and trains on."""
    model = tiny_vqa_model()
    Trainer(model=model, args=arguments(tmp_path), train_dataset=VqaRows()).train()
    assert not all_finite(model)


def test_nan_row_stops_training_naming_the_step_before_the_weights_change(tmp_path):
    model, snapshots = tiny_vqa_model(), Snapshots()
    trainer = VLPTrainer(model=model, args=arguments(tmp_path), train_dataset=VqaRows(), callbacks=[snapshots])
    with pytest.raises(FloatingPointError, match=r"optimizer step 2: loss nan on the batch"):
        trainer.train()
    assert all_finite(model)
    assert list(snapshots.parameters) == [1]  # step 1 ran, step 2 was not applied
    for name, value in model.named_parameters():
        assert torch.equal(value, snapshots.parameters[1][name]), name


def test_nan_row_with_gradient_accumulation_names_the_micro_batch(tmp_path):
    trainer = VLPTrainer(
        model=tiny_vqa_model(),
        train_dataset=VqaRows(),
        args=arguments(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2),
    )
    # rows 4, 5 are the first micro-batch of step 2 (rows 4-7)
    with pytest.raises(FloatingPointError, match="optimizer step 2: loss nan on micro-batch 1 of 2"):
        trainer.train()


def test_skip_drops_the_step_keeps_weights_finite_and_logs_the_count(tmp_path):
    model, snapshots = tiny_vqa_model(), Snapshots()
    trainer = VLPTrainer(
        model=model, args=arguments(tmp_path), train_dataset=VqaRows(), callbacks=[snapshots], nonfinite="skip"
    )
    trainer.train()
    assert all_finite(model)
    assert trainer.nonfinite_skipped_steps == 1
    # step 2 was skipped: no parameter moved, not even through Adam's momentum; steps 3 and 4 trained again
    for name in snapshots.parameters[1]:
        assert torch.equal(snapshots.parameters[2][name], snapshots.parameters[1][name]), name
    assert any(not torch.equal(snapshots.parameters[3][n], snapshots.parameters[2][n]) for n in snapshots.parameters[2])
    logged = [entry for entry in snapshots.logs if "loss" in entry]
    assert [entry["nonfinite_skipped_steps"] for entry in logged] == [0, 1, 1, 1]
    # the skipped step measured nothing: NaN, not the 0.0 transformers' Trainer logs; the others are real losses
    losses = torch.tensor([entry["loss"] for entry in logged])
    assert losses[1].isnan() and (losses[[0, 2, 3]] > 0).all()


def test_skip_matches_training_without_the_bad_batch_up_to_the_skipped_step(tmp_path):
    """Skipping is dropping: step 1 is identical with or without the NaN row further on."""
    clean, snapshots_clean = tiny_vqa_model(), Snapshots()
    VLPTrainer(
        model=clean,
        args=arguments(tmp_path / "a", max_steps=1),
        train_dataset=VqaRows(nan_row=None),
        callbacks=[snapshots_clean],
    ).train()
    skipped, snapshots_skip = tiny_vqa_model(), Snapshots()
    VLPTrainer(
        model=skipped,
        args=arguments(tmp_path / "b", max_steps=2),
        train_dataset=VqaRows(),
        callbacks=[snapshots_skip],
        nonfinite="skip",
    ).train()
    for name, value in snapshots_clean.parameters[1].items():
        assert torch.equal(snapshots_skip.parameters[2][name], value), name


class SqrtModel(torch.nn.Module):
    """loss = mean(sqrt(|w * x|)): finite for every x, but its gradient at x = 0 is 0 * inf = NaN."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))

    def forward(self, x, labels=None):
        loss = (self.weight * x).abs().sqrt().mean()
        return {"loss": loss, "sqrt_loss": loss.detach()}


class SqrtRows(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        # row 3 has a zero entry: step 2 of batches of 2
        return {"x": torch.tensor([0.0, 1.0, 2.0]) if index == 3 else torch.tensor([1.0, 2.0, 3.0])}


def test_finite_loss_with_nan_gradient_names_the_parameter(tmp_path):
    trainer = VLPTrainer(
        model=SqrtModel(), args=arguments(tmp_path, per_device_train_batch_size=2), train_dataset=SqrtRows()
    )
    with pytest.raises(FloatingPointError, match="optimizer step 2: .*1 parameter gradient\\(s\\) are not: weight"):
        trainer.train()


def test_skipped_steps_leave_the_logged_objectives_finite(tmp_path):
    snapshots = Snapshots()
    trainer = VLPTrainer(
        model=SqrtModel(),
        args=arguments(tmp_path, per_device_train_batch_size=2),
        train_dataset=SqrtRows(),
        callbacks=[snapshots],
        nonfinite="skip",
    )
    trainer.train()
    logged = [entry for entry in snapshots.logs if "loss" in entry]
    assert [entry["nonfinite_skipped_steps"] for entry in logged] == [0, 1, 1, 1]
    assert all(torch.isfinite(torch.tensor(entry["sqrt_loss"])) for entry in logged)
    assert torch.isfinite(trainer.model.weight).all()


def test_nonfinite_mode_is_validated():
    with pytest.raises(ValueError, match="`nonfinite` must be one of \\('raise', 'skip'\\), got 'ignore'"):
        VLPTrainer(nonfinite="ignore")
