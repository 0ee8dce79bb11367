"""Few-shot CPT: fine-tune a masked-LM VL model on the colour word of painted copies through `transformers.Trainer`
(`Oscar/oscar/fewshot/refcoco_cpt.py`, `RefcocoCPTDataset` with is_train=True): training rows, their collator, the
masked-LM loss wrapper and the original's optimiser settings."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from ..processing.cpt import CptProcessor, color_token_id
from .adapters import adapter_for
from .scoring import grounding_inputs


def grounding_training_rows(
    processor: CptProcessor, examples: Sequence[dict], region_features, seed: int = 0, balance: bool = True
) -> list[dict]:
    """Training rows for few-shot CPT grounding (`RefcocoCPTDataset`, is_train=True).

    Each example: `image`, `boxes` (candidates), `text`, and `target_index` (the referred candidate) or
    `target_box`; optional `labels` (tags), `masks`, `box_format` ("xywh" default). Each painted copy becomes a row
    whose label is its colour word if it holds the target (CPT IoU > 0.5), else "none". With `balance` (as CPT):
    one positive copy per example and as many negatives, drawn with `random.Random(seed)`."""
    rng = random.Random(seed)
    none_id = color_token_id(processor.tokenizer, processor.none_word)
    rows = []
    for n, example in enumerate(examples):
        box_format = example.get("box_format", "xywh")
        target = example.get("target_box")
        if target is None:
            if "target_index" not in example:
                raise ValueError(f"example {n} needs `target_index` or `target_box`.")
            target = example["boxes"][int(example["target_index"])]
        prepared = grounding_inputs(
            processor,
            example["image"],
            example["boxes"],
            example["text"],
            region_features,
            example.get("labels"),
            example.get("masks"),
            box_format,
            target_box=target,
        )
        words = prepared.target_words
        label_ids = processor.color_token_ids(words)
        positives = [c for c, w in enumerate(words) if w != processor.none_word]
        negatives = [c for c, w in enumerate(words) if w == processor.none_word]
        chosen = list(range(len(words)))
        if balance:
            if positives:
                rng.shuffle(positives)
                positives = positives[:1]
            rng.shuffle(negatives)
            chosen = positives + negatives[: max(len(positives), 1)]
        for c in chosen:
            row = {k: v[c] for k, v in prepared.inputs.items()}
            labels = torch.full_like(row["input_ids"], -100)
            labels[prepared.mask_positions[c]] = label_ids[c]
            row["labels"] = labels
            rows.append(row)
    if not any(int(r["labels"].max()) != none_id for r in rows):
        raise ValueError("no painted copy covers its target (CPT IoU > 0.5): check `target_index` / `target_box`.")
    return rows


class CptDataCollator:
    """Stacks CPT rows; pads `visual_feats`, `visual_pos`, `visual_attention_mask` to the longest row."""

    def __call__(self, rows: Sequence[dict]) -> dict:
        batch = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            if key in ("visual_feats", "visual_pos", "visual_attention_mask"):
                longest = max(v.shape[0] for v in values)
                values = [F.pad(v, (0, 0) * (v.dim() - 1) + (0, longest - v.shape[0])) for v in values]
            batch[key] = torch.stack(values)
        return batch


@dataclass
class CptMaskedLMOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class CptForMaskedLM(nn.Module):
    """Trains a model's prompt answers with the masked-LM loss: cross-entropy (fp32) of the vocabulary logits at
    the labelled positions (`labels` (B, T), -100 elsewhere), i.e. `REC_MLM_CPT`'s loss on the colour word.
    Trainer-ready; the wrapped model is trained in place (`cpt_model.model`)."""

    accepts_loss_kwargs = False

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.adapter = adapter_for(model)
        self.config = getattr(model, "config", None)

    def forward(
        self,
        input_ids,
        visual_feats,
        visual_pos,
        labels=None,
        attention_mask=None,
        token_type_ids=None,
        visual_attention_mask=None,
        **kwargs,
    ):
        inputs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            visual_attention_mask=visual_attention_mask,
        )
        hidden = self.adapter.text_hidden_states(inputs)
        if labels is None:
            return CptMaskedLMOutput(logits=self.adapter.mlm_logits(hidden))
        if labels.shape != input_ids.shape:
            raise ValueError(
                f"`labels` must have the shape of `input_ids` {tuple(input_ids.shape)}, got {tuple(labels.shape)}."
            )
        selected = labels != -100
        logits = self.adapter.mlm_logits(hidden[selected]).float()
        loss = F.cross_entropy(logits, labels[selected]) if selected.any() else hidden.sum() * 0.0
        return CptMaskedLMOutput(loss=loss, logits=logits)


def few_shot_training_arguments(output_dir: str = "cpt-few-shot", **overrides):
    """`TrainingArguments` of `fewshot/refcoco_cpt.py`: AdamW, lr 3e-5, weight decay 0.01, betas (0.9, 0.98), 10%
    linear warm-up, 40 epochs; no checkpoints, no reporting."""
    from transformers import TrainingArguments

    defaults = dict(
        output_dir=output_dir,
        learning_rate=3e-5,
        weight_decay=0.01,
        adam_beta1=0.9,
        adam_beta2=0.98,
        warmup_steps=0.1,
        num_train_epochs=40,
        per_device_train_batch_size=32,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        logging_steps=10,
        remove_unused_columns=False,
    )
    return TrainingArguments(**{**defaults, **overrides})


def tune(
    model,
    processor: CptProcessor,
    examples: Sequence[dict],
    region_features,
    training_args=None,
    seed: int = 0,
    **trainer_kwargs,
):
    """Few-shot CPT: fine-tune `model` in place with the MLM loss on the colour word / "none" through
    `transformers.Trainer` (`few_shot_training_arguments()` unless `training_args` is given); returns the Trainer."""
    from transformers import Trainer

    rows = grounding_training_rows(processor, examples, region_features, seed=seed)
    if training_args is None:
        training_args = few_shot_training_arguments(seed=seed)
    trainer = Trainer(
        model=CptForMaskedLM(model),
        args=training_args,
        train_dataset=_RowDataset(rows),
        data_collator=CptDataCollator(),
        **trainer_kwargs,
    )
    trainer.train()
    model.eval()
    return trainer


class _RowDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]
