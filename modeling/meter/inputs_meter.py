"""Random METER inputs for every head (`ArchitectureSpec.example_inputs`; `hf-vlp bench`, tests). `regions` is
unused: METER reads pixels."""

import torch

from hf_vlp import random_inputs as rand
from hf_vlp.spec import Task


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0):
    rng = rand.generator(seed)
    text = config.text_config
    # RoBERTa numbers positions from pad_token_id + 1: keep the text inside the position table
    text_length = min(text_length, text.max_position_embeddings - (text.pad_token_id or 0) - 1)
    input_ids, attention_mask = rand.text(
        batch_size,
        text_length,
        text.vocab_size,
        rng,
        first_token_id=text.bos_token_id,
        last_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id or 0,
    )
    image_size = config.vision_config.image_size
    pixel_values = rand.pixels(batch_size, image_size, rng)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
    task = Task(task)
    if task is Task.PRETRAINING:
        inputs.update(
            labels=rand.masked_lm_labels(input_ids, attention_mask, rng), itm_labels=rand.classes(batch_size, 2, rng)
        )
    elif task is Task.VQA:
        inputs["labels"] = rand.soft_scores(batch_size, config.num_labels, rng)
    elif task in (Task.ENTAILMENT, Task.NLVR2):
        inputs["labels"] = rand.classes(batch_size, config.num_labels, rng)
        if task is Task.NLVR2:  # images on dim 1
            inputs["pixel_values"] = torch.stack([pixel_values, rand.pixels(batch_size, image_size, rng)], dim=1)
    elif task is Task.RETRIEVAL:
        inputs["labels"] = rand.classes(batch_size, 2, rng)
    return inputs
