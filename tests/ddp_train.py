"""Trains a tiny UNITER VQA model for a few steps through VLPTrainer; run with python or torchrun (see test_ddp.py)."""

import json
import os
import sys

import torch
from transformers import TrainerCallback

import hf_vlp  # noqa: F401
from hf_vlp.modeling.uniter import UniterConfig, UniterForVisualQuestionAnswering
from hf_vlp.recipes import training_arguments
from hf_vlp.trainer import VLPTrainer

output_dir, per_device_batch = sys.argv[1], int(sys.argv[2])


class Rows(torch.utils.data.Dataset):
    """16 fixed random examples, the same in every process."""

    def __init__(self):
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

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


class RecordLoss(TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


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
model = UniterForVisualQuestionAnswering(config)
arguments = training_arguments(
    output_dir,
    per_device_train_batch_size=per_device_batch,
    max_steps=3,
    logging_steps=1,
    learning_rate=1e-2,
    warmup_steps=0,
    use_cpu=True,
    train_sampling_strategy="sequential",
    disable_tqdm=True,
    **({"ddp_backend": "gloo"} if "WORLD_SIZE" in os.environ else {}),
)
recorder = RecordLoss()
trainer = VLPTrainer(model=model, args=arguments, train_dataset=Rows(), callbacks=[recorder])
trainer.train()
rank = trainer.args.process_index
torch.save(model.state_dict(), f"{output_dir}/weights_rank{rank}.pt")
if rank == 0:
    with open(f"{output_dir}/losses.json", "w") as handle:
        json.dump(recorder.losses, handle)
