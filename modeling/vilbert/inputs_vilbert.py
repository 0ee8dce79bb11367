"""Random ViLBERT inputs for every head (`ArchitectureSpec.example_inputs`; `hf-vlp bench`, tests). ERNIE-ViL, a
ViLBERT variant, reuses them."""

from hf_vlp import random_inputs as rand
from hf_vlp.spec import Task

NUM_CHOICES = 4  # VCR


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0):
    rng = rand.generator(seed)
    input_ids, attention_mask = rand.text(batch_size, text_length, config.vocab_size, rng)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
    inputs.update(rand.regions(batch_size, regions, config.v_feature_size, rng))
    inputs["visual_pos"][:, 0] = inputs["visual_pos"].new_tensor([0.0, 0.0, 1.0, 1.0])  # the whole-image region
    task = Task(task)
    if task is Task.PRETRAINING:
        inputs.update(
            labels=rand.masked_lm_labels(input_ids, attention_mask, rng), itm_labels=rand.classes(batch_size, 2, rng)
        )
    elif task in (Task.VQA, Task.MULTITASK):
        inputs["labels"] = rand.soft_scores(batch_size, config.num_labels, rng)
        if task is Task.MULTITASK:
            inputs["task"] = "vqa"
    elif task is Task.GQA:
        inputs["labels"] = rand.classes(batch_size, config.gqa_num_labels, rng)
    elif task in (Task.RETRIEVAL, Task.NLVR2):
        inputs["labels"] = rand.classes(batch_size, 2, rng)
        if task is Task.NLVR2:  # one statement, two images on dim 1
            second = rand.regions(batch_size, regions, config.v_feature_size, rng)
            inputs.update(rand.pairs({k: inputs[k] for k in second}, second))
    elif task is Task.ENTAILMENT:
        inputs["labels"] = rand.classes(batch_size, 3, rng)
    elif task is Task.REFEXP:
        inputs["labels"] = rand.classes(batch_size, regions - 1, rng)  # never the padded last region
    elif task is Task.VCR:  # every choice's text against the same regions
        for name in ("input_ids", "attention_mask"):
            inputs[name] = inputs[name][:, None].expand(-1, NUM_CHOICES, -1).contiguous()
        inputs["labels"] = rand.classes(batch_size, NUM_CHOICES, rng)
    return inputs
