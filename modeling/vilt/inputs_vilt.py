"""Random ViLT inputs for every head (`ArchitectureSpec.example_inputs`; `hf-vlp bench`, tests). `regions` is
unused: ViLT reads pixels."""

import torch

from hf_vlp import random_inputs as rand
from hf_vlp.spec import Task


def _image(batch_size, image_size, rng):
    pixel_mask = torch.ones(batch_size, image_size, image_size, dtype=torch.long)
    if batch_size > 1:
        pixel_mask[-1, :, image_size // 2 :] = 0  # a narrower image, padded on the right
    return rand.pixels(batch_size, image_size, rng) * pixel_mask[:, None], pixel_mask


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0):
    rng = rand.generator(seed)
    text_length = min(text_length, config.max_position_embeddings)
    input_ids, attention_mask = rand.text(batch_size, text_length, config.vocab_size, rng)
    pixel_values, pixel_mask = _image(batch_size, config.image_size, rng)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, pixel_mask=pixel_mask)
    task = Task(task)
    if task is Task.PRETRAINING:
        inputs.update(
            labels=rand.masked_lm_labels(input_ids, attention_mask, rng), itm_labels=rand.classes(batch_size, 2, rng)
        )
    elif task is Task.VQA:
        inputs["labels"] = rand.soft_scores(batch_size, config.num_labels, rng)
    elif task is Task.NLVR2:  # images on dim 1
        second_values, second_mask = _image(batch_size, config.image_size, rng)
        inputs.update(
            pixel_values=torch.stack([pixel_values, second_values], dim=1),
            pixel_mask=torch.stack([pixel_mask, second_mask], dim=1),
            labels=rand.classes(batch_size, config.num_labels, rng),
        )
    elif task is Task.RETRIEVAL:
        inputs["labels"] = rand.classes(batch_size, 2, rng)
    return inputs
