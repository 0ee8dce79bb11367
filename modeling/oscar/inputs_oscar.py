"""Random Oscar inputs for every head (`ArchitectureSpec.example_inputs`; `hf-vlp bench`, tests): text
`[CLS] words [SEP] tags [SEP]`, the tags (second half) in segment 1."""

import torch

from hf_vlp import random_inputs as rand
from hf_vlp.spec import Task


def _one_image(config, batch_size, text_length, regions, rng):
    input_ids, attention_mask = rand.text(
        batch_size, text_length, config.vocab_size, rng, config.bos_token_id, config.eos_token_id, config.pad_token_id
    )
    token_type_ids = (torch.arange(text_length) >= text_length // 2).long().expand(batch_size, -1) * attention_mask
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    inputs.update(rand.regions(batch_size, regions, config.visual_feat_dim, rng))
    return inputs


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0):
    rng = rand.generator(seed)
    inputs = _one_image(config, batch_size, text_length, regions, rng)
    task = Task(task)
    if task is Task.PRETRAINING:
        inputs.update(
            labels=rand.masked_lm_labels(inputs["input_ids"], inputs["attention_mask"], rng),
            contrastive_labels=rand.classes(batch_size, config.num_contrast_classes, rng),
        )
    elif task is Task.VQA:
        inputs["labels"] = rand.soft_scores(batch_size, config.num_labels, rng)
    elif task is Task.RETRIEVAL:
        inputs["labels"] = rand.classes(batch_size, 2, rng)
    elif task is Task.NLVR2:  # `num_choices` (text, image) pairs per example on dim 1
        others = [_one_image(config, batch_size, text_length, regions, rng) for _ in range(config.num_choices - 1)]
        pairs = [inputs] + others
        inputs = {name: torch.stack([p[name] for p in pairs], dim=1) for name in inputs}
        inputs["labels"] = rand.classes(batch_size, config.num_labels, rng)
    elif task is Task.CAPTIONING:  # mask caption words (segment 0) and predict them
        caption = (inputs["token_type_ids"] == 0) & (inputs["attention_mask"] == 1)
        labels = rand.masked_lm_labels(inputs["input_ids"], caption.long(), rng)
        inputs["input_ids"] = inputs["input_ids"].masked_fill(labels != -100, config.mask_token_id)
        inputs["labels"] = labels
    return inputs
