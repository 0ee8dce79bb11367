"""Multi-task training for UniT: every batch comes from one dataset, and the dataset of each step is drawn by ratio
(MMF's `multitasking: {type: ratios}`; with no ratios, proportionally to the dataset sizes, MMF's
`dataset_size_proportional_sampling`).

- `UnitMultiTaskBatchSampler`: batches of indices into the concatenation of the datasets (`ConcatDataset` order).
- `collate_unit_batch`: rows of one dataset (each with its `task` name) -> `UnitForMultiTaskLearning` inputs.
- `UnitMultiTaskTrainer`: transformers' `Trainer` whose training loader uses the batch sampler.
"""

from collections.abc import Mapping

import torch
from torch.utils.data import DataLoader, Sampler
from transformers import Trainer


class UnitMultiTaskBatchSampler(Sampler):
    """`num_batches` batches per epoch; each step draws a dataset with probability `ratios[name] / sum(ratios)` and
    takes its next `batch_size` indices (each dataset's order is reshuffled whenever it runs out).

    dataset_sizes: dataset name -> number of rows, in the order of the concatenated dataset.
    ratios: dataset name -> sampling weight (any positive scale); None = proportional to the sizes.
    num_batches: batches per epoch; None = as many as one pass over every dataset would give.
    """

    def __init__(self, dataset_sizes: Mapping[str, int], batch_size, ratios=None, num_batches=None, seed=0):
        if not dataset_sizes or any(int(size) < 1 for size in dataset_sizes.values()):
            raise ValueError(f"`dataset_sizes` must give every dataset a positive size, got {dict(dataset_sizes)}.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
        self.names = list(dataset_sizes)
        self.sizes = [int(dataset_sizes[name]) for name in self.names]
        ratios = dict(zip(self.names, self.sizes)) if ratios is None else dict(ratios)
        unknown = sorted(set(ratios) - set(self.names))
        missing = sorted(set(self.names) - set(ratios))
        if unknown or missing:
            raise ValueError(
                f"`ratios` must name exactly the datasets {self.names}: unknown {unknown}, missing {missing}."
            )
        if any(float(ratios[name]) < 0 for name in self.names) or sum(float(r) for r in ratios.values()) <= 0:
            raise ValueError(f"`ratios` must be non-negative with a positive sum, got {ratios}.")
        total = sum(float(ratios[name]) for name in self.names)
        self.probabilities = torch.tensor([float(ratios[name]) / total for name in self.names], dtype=torch.float64)
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.batch_size = batch_size
        self.num_batches = (
            sum(-(-size // batch_size) for size in self.sizes) if num_batches is None else int(num_batches)
        )
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.num_batches

    def task_of(self, index):
        """The dataset name of a concatenated index."""
        for name, offset, size in zip(self.names, self.offsets, self.sizes):
            if offset <= index < offset + size:
                return name
        raise ValueError(f"index {index} is outside the {sum(self.sizes)} concatenated rows.")

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        orders = [torch.randperm(size, generator=generator).tolist() for size in self.sizes]
        cursors = [0] * len(self.sizes)
        choices = torch.multinomial(self.probabilities, self.num_batches, replacement=True, generator=generator)
        for dataset in choices.tolist():
            batch = []
            while len(batch) < self.batch_size:
                if cursors[dataset] == self.sizes[dataset]:
                    orders[dataset] = torch.randperm(self.sizes[dataset], generator=generator).tolist()
                    cursors[dataset] = 0
                take = min(self.batch_size - len(batch), self.sizes[dataset] - cursors[dataset])
                batch += orders[dataset][cursors[dataset] : cursors[dataset] + take]
                cursors[dataset] += take
                if self.sizes[dataset] < self.batch_size and len(batch) >= self.sizes[dataset]:
                    break  # a dataset smaller than a batch gives one whole pass, no repeats
            yield [self.offsets[dataset] + index for index in batch]


def _pad_stack(tensors, fill):
    """Stack tensors of equal rank, padding every dimension at its end with `fill`."""
    shape = [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
    out = tensors[0].new_full((len(tensors), *shape), fill)
    for row, tensor in enumerate(tensors):
        out[(row, *[slice(0, s) for s in tensor.shape])] = tensor
    return out


def collate_unit_batch(rows, pad_token_id=0):
    """Rows of ONE dataset -> model inputs. Each row: `task`, and any of `pixel_values` (3, H, W) (zero-padded to the
    batch's largest, `pixel_mask` made, or padded from the row's own), `input_ids` / `attention_mask` /
    `token_type_ids` (L,) (padded), `labels` (a detection target dict, a class id or a soft-score vector)."""
    tasks = {row["task"] for row in rows}
    if len(tasks) != 1:
        raise ValueError(
            f"a UniT batch holds one dataset, got rows of {sorted(tasks)} (use UnitMultiTaskBatchSampler)."
        )
    batch = {"task": tasks.pop()}
    if "pixel_values" in rows[0]:
        images = [torch.as_tensor(row["pixel_values"]) for row in rows]
        masks = [
            torch.as_tensor(row["pixel_mask"])
            if "pixel_mask" in row
            else torch.ones(image.shape[-2:], dtype=torch.long)
            for row, image in zip(rows, images)
        ]
        batch["pixel_values"] = _pad_stack(images, 0.0)
        batch["pixel_mask"] = _pad_stack(masks, 0)
    if "input_ids" in rows[0]:
        ids = [torch.as_tensor(row["input_ids"]) for row in rows]
        batch["input_ids"] = _pad_stack(ids, pad_token_id)
        masks = [
            torch.as_tensor(row["attention_mask"]) if "attention_mask" in row else torch.ones_like(i)
            for row, i in zip(rows, ids)
        ]
        batch["attention_mask"] = _pad_stack(masks, 0)
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"] = _pad_stack([torch.as_tensor(row["token_type_ids"]) for row in rows], 0)
    if "labels" in rows[0]:
        labels = [row["labels"] for row in rows]
        if isinstance(labels[0], Mapping):
            batch["labels"] = [{key: torch.as_tensor(value) for key, value in label.items()} for label in labels]
        else:
            batch["labels"] = torch.stack([torch.as_tensor(label) for label in labels])
    return batch


class UnitMultiTaskTrainer(Trainer):
    """`Trainer` whose training batches come from `batch_sampler` (one dataset per batch, mixed by ratio); the
    training dataset is the concatenation the sampler indexes, `data_collator` defaults to `collate_unit_batch`."""

    def __init__(self, *args, batch_sampler: UnitMultiTaskBatchSampler, **kwargs):
        kwargs.setdefault("data_collator", collate_unit_batch)
        super().__init__(*args, **kwargs)
        self.batch_sampler = batch_sampler

    def get_train_dataloader(self):
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=self.batch_sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
        )
        return self.accelerator.prepare(loader)


__all__ = ["UnitMultiTaskBatchSampler", "UnitMultiTaskTrainer", "collate_unit_batch"]
