"""Random SOHO inputs for every head (`ArchitectureSpec.example_inputs`; `hf-vlp bench`, tests): one caption per
image, non-square padded images (128 x 192) whose last one is padded at the bottom and right (its `pixel_mask` marks
a 100 x 120 area), so the square-canvas mask of the original is exercised. `regions` is unused."""

import torch

from hf_vlp import random_inputs as rand
from hf_vlp.spec import Task

IMAGE_HEIGHT, IMAGE_WIDTH = 128, 192  # 2 x 3 positions of SOHO's stride-64 grid
PADDED_HEIGHT, PADDED_WIDTH = 100, 120


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0):
    rng = rand.generator(seed)
    text_length = min(text_length, config.max_position_embeddings)
    input_ids, attention_mask = rand.text(batch_size, text_length, config.vocab_size, rng)
    pixel_values = torch.randn(batch_size, config.num_channels, IMAGE_HEIGHT, IMAGE_WIDTH, generator=rng)
    pixel_mask = torch.ones(batch_size, IMAGE_HEIGHT, IMAGE_WIDTH, dtype=torch.long)
    if batch_size > 1:
        pixel_mask[-1] = 0
        pixel_mask[-1, :PADDED_HEIGHT, :PADDED_WIDTH] = 1
        pixel_values[-1] *= pixel_mask[-1]  # zero padding, as the processor pads
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, pixel_mask=pixel_mask)
    task = Task(task)
    if task is Task.PRETRAINING:
        inputs.update(
            labels=rand.masked_lm_labels(input_ids, attention_mask, rng), itm_labels=rand.classes(batch_size, 2, rng)
        )
    elif task is Task.VQA:
        inputs["labels"] = rand.soft_scores(batch_size, config.num_labels, rng)
    return inputs
