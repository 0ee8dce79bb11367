"""Random UNITER inputs for every head (`ArchitectureSpec.example_inputs`; `hf-vlp bench`, tests)."""

import torch

from hf_vlp import random_inputs as rand
from hf_vlp.spec import Task

NUM_CHOICES = 4  # VCR


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0):
    rng = rand.generator(seed)
    input_ids, attention_mask = rand.text(batch_size, text_length, config.vocab_size, rng)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
    inputs.update(rand.regions(batch_size, regions, config.visual_feat_dim, rng))
    task = Task(task)
    if task is Task.PRETRAINING:
        inputs.update(
            labels=rand.masked_lm_labels(input_ids, attention_mask, rng), itm_labels=rand.classes(batch_size, 2, rng)
        )
    elif task is Task.VQA:
        inputs["labels"] = rand.soft_scores(batch_size, config.num_labels, rng)
    elif task is Task.ENTAILMENT:
        inputs["labels"] = rand.classes(batch_size, config.num_labels, rng)
    elif task is Task.NLVR2:  # one statement, two images on dim 1
        second = rand.regions(batch_size, regions, config.visual_feat_dim, rng)
        inputs.update(rand.pairs({k: inputs[k] for k in second}, second), labels=rand.classes(batch_size, 2, rng))
    elif task is Task.RETRIEVAL:
        inputs["labels"] = rand.classes(batch_size, 2, rng)
    elif task is Task.REFEXP:
        inputs["labels"] = rand.classes(batch_size, regions - 1, rng)  # never the padded last region
    elif task is Task.VCR:  # four (question, choice) texts per example sharing one image
        choices = [rand.text(batch_size, text_length, config.vocab_size, rng) for _ in range(NUM_CHOICES)]
        inputs["input_ids"] = torch.stack([ids for ids, _ in choices], dim=1)
        inputs["attention_mask"] = torch.stack([mask for _, mask in choices], dim=1)
        # the original's types: question 0, then the choice 2 (answers) or 3 (rationales)
        types = torch.zeros_like(inputs["input_ids"])
        types[..., text_length // 2 :] = 2
        inputs["token_type_ids"] = types
        inputs["labels"] = rand.classes(batch_size, NUM_CHOICES, rng)
    return inputs
