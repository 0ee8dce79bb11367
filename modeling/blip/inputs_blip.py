"""Random BLIP inputs for every head (`ArchitectureSpec.example_inputs`; `hf-vlp bench`, tests). `regions` is
unused: BLIP reads pixels."""

import torch

from hf_vlp import random_inputs as rand
from hf_vlp.spec import Task


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0):
    rng = rand.generator(seed)
    text = config.text_config
    input_ids, attention_mask = rand.text(
        batch_size, text_length, text.vocab_size, rng, text.bos_token_id, text.sep_token_id, text.pad_token_id
    )
    inputs = dict(
        pixel_values=rand.pixels(batch_size, config.vision_config.image_size, rng),
        input_ids=input_ids,
        attention_mask=attention_mask,
    )
    task = Task(task)
    if task is Task.VQA:  # one answer per question: `[DEC] answer [SEP]`
        answers, answer_mask = rand.text(batch_size, 4, text.vocab_size, rng, text.bos_token_id, text.sep_token_id)
        inputs["labels"] = answers.masked_fill(answer_mask == 0, -100)
    elif task is Task.CAPTIONING:
        inputs["labels"] = input_ids.masked_fill(attention_mask == 0, -100)
    elif task is Task.RETRIEVAL:
        inputs["return_loss"] = True  # the ITC + ITM fine-tuning losses
    elif task is Task.NLVR2:  # one statement, two images on dim 1
        second = rand.pixels(batch_size, config.vision_config.image_size, rng)
        inputs["pixel_values"] = torch.stack([inputs["pixel_values"], second], dim=1)
        inputs["labels"] = rand.classes(batch_size, 2, rng)
    return inputs
