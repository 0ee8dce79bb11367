"""Random FILIP inputs for every head (`ArchitectureSpec.example_inputs`; `hf-vlp bench`, tests): paired images and
texts ending with the end-of-text token the global pooling reads. The retrieval head gets `labels`, sample ids that make
every pair its own (image i matches text i only). `regions` is unused."""

import torch

from hf_vlp import random_inputs as rand
from hf_vlp.spec import Task


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0):
    rng = rand.generator(seed)
    text = config.text_config
    text_length = min(text_length, text.max_position_embeddings)
    input_ids, attention_mask = rand.text(
        batch_size, text_length, text.vocab_size, rng, text.bos_token_id, text.eos_token_id, text.pad_token_id
    )
    inputs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=rand.pixels(batch_size, config.vision_config.image_size, rng),
    )
    if Task(task) is Task.RETRIEVAL:
        inputs["labels"] = torch.arange(batch_size)
    return inputs
