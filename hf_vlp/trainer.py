"""`VLPTrainer`: `transformers.Trainer` that logs each objective's loss, plus the task metrics of the field."""

import numpy as np
import torch
from transformers import Trainer


class VLPTrainer(Trainer):
    """Trainer that also logs every `*_loss` field of the model output (e.g. `mlm_loss`, `itm_loss`,
    `router_z_loss`), averaged over the steps since the last log and over processes.

    Objectives absent from a step (per-batch objective sampling) are averaged over the steps where they ran.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._objective_sums: dict[str, torch.Tensor] = {}
        self._objective_counts: dict[str, torch.Tensor] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and isinstance(outputs, dict):
            for name, value in outputs.items():
                if name.endswith("_loss") and torch.is_tensor(value) and value.numel() == 1:
                    value = value.detach().float()
                    self._objective_sums[name] = self._objective_sums.get(name, 0) + value
                    self._objective_counts[name] = self._objective_counts.get(name, 0) + 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if self._objective_sums and "loss" in logs:
            for name in sorted(self._objective_sums):
                total = self._objective_sums[name].reshape(1)
                count = torch.tensor([float(self._objective_counts[name])], device=total.device)
                # average over processes: sum of sums / sum of counts
                if self.args.world_size > 1:
                    total, count = self.accelerator.reduce(total, "sum"), self.accelerator.reduce(count.to(total.device), "sum")
                logs[name] = round((total / count).item(), 4)
            self._objective_sums, self._objective_counts = {}, {}
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
    logits = eval_prediction.predictions[0] if isinstance(eval_prediction.predictions, tuple) else eval_prediction.predictions
    return {"vqa_score": vqa_score(logits, eval_prediction.label_ids)}


def compute_accuracy_metrics(eval_prediction) -> dict:
    logits = eval_prediction.predictions[0] if isinstance(eval_prediction.predictions, tuple) else eval_prediction.predictions
    return {"accuracy": accuracy(logits, eval_prediction.label_ids)}
