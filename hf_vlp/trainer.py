"""`VLPTrainer`: `transformers.Trainer` that logs each objective's loss, stops (or skips) on non-finite losses and
gradients, plus the task metrics of the field."""

import copy
import os
import types

import numpy as np
import torch
from transformers import Trainer
from transformers.utils import logging

logger = logging.get_logger(__name__)

NONFINITE_MODES = ("raise", "skip")


class VLPTrainer(Trainer):
    """Trainer that also logs every `*_loss` field of the model output (e.g. `mlm_loss`, `itm_loss`,
    `router_z_loss`), averaged over the steps since the last log and over processes.

    Objectives absent from a step (per-batch objective sampling) are averaged over the steps where they ran.

    Args:
        nonfinite: what to do when a loss or a gradient is NaN or infinite. The check runs once per optimizer step,
            after the backward pass of its last micro-batch and before the optimizer (one device sync):

            * `"raise"` (default): stop with a `FloatingPointError` naming the optimizer step, the micro-batch and
              the objectives, or the parameters whose gradient is not finite. The optimizer has not applied the
              step, so the model keeps its last finite weights. (`transformers.Trainer` alone would apply the NaN
              gradients and log the loss of earlier steps instead.)
            * `"skip"`: drop the step: its gradients are cleared and the optimizer is not called (the learning-rate
              schedule still advances). Each skip is logged as a warning, every log line carries
              `nonfinite_skipped_steps`, the number skipped so far, and a log line whose steps were all skipped
              shows `loss` and `grad_norm` NaN (nothing was measured) rather than 0.

            Under fp16 loss scaling the scaler already skips overflowing steps, so only losses are checked there.
            In multi-process training the decision is reduced over processes, so all of them stop or skip together.
    """

    def __init__(self, *args, nonfinite="raise", **kwargs):
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"`nonfinite` must be one of {NONFINITE_MODES}, got {nonfinite!r}.")
        self.nonfinite = nonfinite
        self.nonfinite_skipped_steps = 0
        self._skipped_since_log, self._step_at_last_log = 0, 0
        self._skip_optimizer_step = False
        self._window_losses: list[torch.Tensor] = []  # losses and objectives of the micro-batches of this step
        self._window_objectives: list[dict] = []
        super().__init__(*args, **kwargs)
        self._objective_sums: dict[str, torch.Tensor] = {}
        self._objective_counts: dict[str, torch.Tensor] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and isinstance(outputs, dict):
            objectives = {}
            for name, value in outputs.items():
                if name.endswith("_loss") and torch.is_tensor(value) and value.numel() == 1:
                    value = value.detach().float().reshape(())
                    objectives[name] = value
                    # a non-finite value is reported by the step check; it does not poison the logged average
                    finite = torch.isfinite(value)
                    self._objective_sums[name] = self._objective_sums.get(name, 0) + torch.where(finite, value, 0.0)
                    self._objective_counts[name] = self._objective_counts.get(name, 0) + finite.float()
            self._window_objectives.append(objectives)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._window_losses.append(loss.detach().float().reshape(-1))
        if len(self._window_objectives) < len(self._window_losses):  # a custom compute_loss returned no outputs
            self._window_objectives.append({})
        if self.accelerator.sync_gradients:  # last micro-batch of the step: gradients are complete (and reduced)
            self._check_step(model)
        return loss

    def _check_step(self, model):
        losses, objectives = self._window_losses, self._window_objectives
        self._window_losses, self._window_objectives = [], []
        loss_finite = torch.stack([torch.isfinite(loss).all() for loss in losses])
        bad_gradients = torch.zeros((), dtype=torch.bool, device=loss_finite.device)
        named_grads = []
        # fp16 loss scaling: inf gradients are the scaler's overflow signal, handled by skipping the step itself
        if self.accelerator.scaler is None and not self.is_deepspeed_enabled:
            named_grads = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
            if named_grads:
                grads_finite = torch.stack([torch.isfinite(grad).all() for _, grad in named_grads])
                bad_gradients = ~grads_finite.all().to(loss_finite.device)
        bad = (~loss_finite.all()) | bad_gradients
        if self.args.world_size > 1:  # every process must stop or skip together
            bad = self.accelerator.reduce(bad.float().reshape(1), "sum") > 0
        self._skip_optimizer_step = False
        if not bool(bad):  # the one device sync of the check
            return
        reason = self._describe_nonfinite(losses, objectives, named_grads)
        step = self.state.global_step + 1
        if self.nonfinite == "raise":
            raise FloatingPointError(
                f"non-finite training values at optimizer step {step}: {reason}. "
                "The step was not applied. Check that batch's inputs (hf_vlp processors refuse NaN / inf features and "
                "boxes), lower the learning rate, or pass VLPTrainer(nonfinite='skip') to skip such steps."
            )
        model.zero_grad(set_to_none=True)  # no gradient: torch optimizers leave every parameter and its state alone
        self._skip_optimizer_step = True  # and the guarded optimizer step is not called at all
        self.nonfinite_skipped_steps += 1
        self._skipped_since_log += 1
        logger.warning(
            f"skipping optimizer step {step}: {reason} ({self.nonfinite_skipped_steps} step(s) skipped so far)."
        )

    @staticmethod
    def _describe_nonfinite(losses, objectives, named_grads):
        for index, (loss, values) in enumerate(zip(losses, objectives)):
            if not torch.isfinite(loss).all():
                parts = ", ".join(f"{name}={value.item():.4g}" for name, value in sorted(values.items()))
                where = f"micro-batch {index + 1} of {len(losses)}" if len(losses) > 1 else "the batch"
                value = f"{loss.item():g}" if loss.numel() == 1 else str(loss.tolist())
                return f"loss {value} on {where}" + (f" ({parts})" if parts else "")
        names = [name for name, grad in named_grads if not torch.isfinite(grad).all()]
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            return f"the loss is finite but {len(names)} parameter gradient(s) are not: {shown}"
        return "another process had a non-finite loss or gradient"

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if optimizer is not None and not getattr(optimizer, "_vlp_guarded_step", False):
            original_step = optimizer.step

            def guarded_step(opt, *args, **kwargs):
                if self._skip_optimizer_step:
                    self._skip_optimizer_step = False
                    return None
                return original_step(*args, **kwargs)

            # a bound method, as torch's LR schedulers expect when they wrap `step`
            optimizer.step = types.MethodType(guarded_step, optimizer)
            optimizer._vlp_guarded_step = True
        return optimizer

    # -- exact resume: the collator's own generators (pretraining masks, negatives, objective draws) --------------

    COLLATOR_RNG_FILE = "collator_rng_state.pth"

    def _collator_rng_file(self):
        if self.args.world_size <= 1:
            return self.COLLATOR_RNG_FILE
        return f"collator_rng_state_{self.args.process_index}.pth"

    def _save_rng_state(self, output_dir):
        super()._save_rng_state(output_dir)
        collator = self.data_collator
        if hasattr(collator, "rng_state"):
            # the batches the optimizer steps so far consumed; the loader may already have collated the next one
            consumed = self.state.global_step * self.args.gradient_accumulation_steps
            try:
                state = collator.rng_state(before_call=consumed)
            except ValueError as error:  # e.g. batches collated in worker processes: the main copy never ran
                logger.warning(f"the collator's generator state is not saved, resuming will not be exact: {error}")
                return
            torch.save(state, os.path.join(output_dir, self._collator_rng_file()))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # the collator's generators are restored before the Trainer builds its data loader, which collates the first
        # batch before the Trainer restores its own generator states
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, (str, os.PathLike)) and hasattr(self.data_collator, "set_rng_state"):
            path = os.path.join(checkpoint, self._collator_rng_file())
            if os.path.isfile(path):
                self.data_collator.set_rng_state(torch.load(path, weights_only=True))  # data only, never code
            else:
                logger.warning(f"{path} is missing: the collator's masks restart from its seed (resume is not exact)")
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def get_eval_dataloader(self, eval_dataset=None):
        # evaluation draws its masks from a copy of the collator, so that it never moves the training batches'
        # generators (a resumed run, which skips the evaluations before its checkpoint, then matches exactly)
        collator = self.data_collator
        if not hasattr(collator, "rng_state"):
            return super().get_eval_dataloader(eval_dataset)
        self.data_collator = copy.deepcopy(collator)
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = collator

    def push_to_hub(self, commit_message="End of training", blocking=True, token=None, revision=None, **card):
        """The complete hf_vlp repo, as `hf-vlp push` uploads it: weights, config, the Trainer's processor
        (`processing_class`), a model card naming hf_vlp and the architecture, and remote code
        (`hf_vlp.hub.push_to_hub`), to `args.hub_model_id` (default: the output folder's name). transformers'
        `Trainer.push_to_hub` would upload the output folder without card or remote code. Main process only;
        returns the commit URL (None on other processes). `card` goes to the model card (base_model, datasets,
        results)."""
        from pathlib import Path

        from .hub import push_to_hub

        if not self.is_world_process_zero():
            return None
        if self.processing_class is None:
            raise ValueError(
                "push_to_hub needs the Trainer's `processing_class` (the model's processor) for a "
                "complete repo; pass processing_class=processor to the Trainer."
            )
        repo_id = self.args.hub_model_id or Path(self.args.output_dir).name
        model = self.accelerator.unwrap_model(self.model)
        return push_to_hub(model, self.processing_class, repo_id, private=bool(self.args.hub_private_repo), **card)

    def log(self, logs, *args, **kwargs):
        if self._objective_sums and "loss" in logs:
            for name in sorted(self._objective_sums):
                total = self._objective_sums[name].reshape(1)
                count = torch.as_tensor(self._objective_counts[name], dtype=torch.float32, device=total.device)
                count = count.reshape(1)
                # average over processes: sum of sums / sum of counts
                if self.args.world_size > 1:
                    total, count = self.accelerator.reduce(total, "sum"), self.accelerator.reduce(count, "sum")
                logs[name] = round((total / count).item(), 4) if count.item() > 0 else float("nan")
            self._objective_sums, self._objective_counts = {}, {}
        if self.nonfinite == "skip" and "loss" in logs:
            logs["nonfinite_skipped_steps"] = self.nonfinite_skipped_steps
            if self._skipped_since_log >= self.state.global_step - self._step_at_last_log > 0:
                # every step since the last log was skipped: no loss was measured (the Trainer would log 0.0)
                logs["loss"] = logs["grad_norm"] = float("nan")
            self._skipped_since_log, self._step_at_last_log = 0, self.state.global_step
        super().log(logs, *args, **kwargs)


# ------------------------------------------------------------------------------------------------------------------
# metrics (numpy in, float out): usable as `compute_metrics` building blocks
# ------------------------------------------------------------------------------------------------------------------


def vqa_score(logits, soft_scores) -> float:
    """VQA accuracy: the soft score (min(1, #humans/3)-style target) of the arg-max answer, averaged."""
    logits, soft_scores = np.asarray(logits), np.asarray(soft_scores)
    predicted = logits.argmax(-1)
    return float(soft_scores[np.arange(len(predicted)), predicted].mean())


def accuracy(logits, labels) -> float:
    logits, labels = np.asarray(logits), np.asarray(labels)
    return float((logits.argmax(-1) == labels).mean())


def recall_at_k(similarity, ks=(1, 5, 10)) -> dict:
    """Retrieval recall@K for a (queries, candidates) similarity matrix where query i's match is candidate i."""
    similarity = np.asarray(similarity)
    target = similarity[np.arange(len(similarity)), np.arange(len(similarity))][:, None]
    rank = (similarity > target).sum(1)  # candidates scored above the true match
    return {f"recall@{k}": float((rank < k).mean()) for k in ks}


def compute_vqa_metrics(eval_prediction) -> dict:
    logits = (
        eval_prediction.predictions[0]
        if isinstance(eval_prediction.predictions, tuple)
        else eval_prediction.predictions
    )
    return {"vqa_score": vqa_score(logits, eval_prediction.label_ids)}


def compute_accuracy_metrics(eval_prediction) -> dict:
    logits = (
        eval_prediction.predictions[0]
        if isinstance(eval_prediction.predictions, tuple)
        else eval_prediction.predictions
    )
    return {"accuracy": accuracy(logits, eval_prediction.label_ids)}


def retrieval_scores(predictions):
    """One matching score per (text, image) row: the logit of a scalar head, or the match-vs-not log-odds of a
    two-class head ((N, 2) logits: Oscar's match classifier)."""
    predictions = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions, dtype=np.float64)
    if predictions.ndim == 2 and predictions.shape[1] == 2:
        return predictions[:, 1] - predictions[:, 0]
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        return predictions[:, 0]
    if predictions.ndim != 1:
        raise ValueError(f"retrieval predictions must be (N,), (N, 1) or (N, 2) scores, got shape {predictions.shape}")
    return predictions


def compute_retrieval_metrics(eval_prediction) -> dict:
    """recall@1 of ranking groups: `label_ids` (N,) is 1 on the first row of each group (the matching pair) and 0 on
    its negatives (the layout of `DataCollatorForVLTask`'s retrieval batches); a group counts as recalled when its
    match scores strictly above every negative of the group (ties count as misses)."""
    scores = retrieval_scores(eval_prediction.predictions)
    labels = np.asarray(eval_prediction.label_ids).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"retrieval label_ids must have shape {scores.shape}, got {labels.shape}")
    starts = np.flatnonzero(labels == 1)
    if len(starts) == 0 or starts[0] != 0:
        raise ValueError("retrieval label_ids must start every group with its match (1), followed by negatives (0)")
    hits = [
        scores[start] > scores[start + 1 : end].max(initial=-np.inf)
        for start, end in zip(starts, [*starts[1:], len(scores)])
    ]
    return {"recall@1": float(np.mean(hits))}


# the held-out metric of each fine-tuning task, as `Trainer(compute_metrics=...)` takes it
TASK_METRICS = {
    "vqa": compute_vqa_metrics,
    "entailment": compute_accuracy_metrics,
    "nlvr2": compute_accuracy_metrics,
    "refexp": compute_accuracy_metrics,
    "retrieval": compute_retrieval_metrics,
}


def compute_metrics_for_task(task):
    """The `compute_metrics` of `task` (ValueError naming the tasks that have one)."""
    if task not in TASK_METRICS:
        raise ValueError(f"no metric for task {task!r}; tasks with one: {sorted(TASK_METRICS)}")
    return TASK_METRICS[task]
