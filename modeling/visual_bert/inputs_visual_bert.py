"""Random VisualBERT inputs for every head (`ArchitectureSpec.example_inputs`; `hf-vlp bench`, tests). VisualBERT
reads region features as `visual_embeds` and no boxes."""

from hf_vlp import random_inputs as rand
from hf_vlp.spec import Task

NUM_CHOICES = 4  # VCR


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0):
    rng = rand.generator(seed)
    input_ids, attention_mask = rand.text(batch_size, text_length, config.vocab_size, rng)
    visual = rand.regions(batch_size, regions, config.visual_embedding_dim, rng)
    inputs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        visual_embeds=visual["visual_feats"],
        visual_attention_mask=visual["visual_attention_mask"],
    )
    task = Task(task)
    if task is Task.PRETRAINING:
        inputs.update(
            labels=rand.masked_lm_labels(input_ids, attention_mask, rng),
            sentence_image_labels=rand.classes(batch_size, 2, rng),
        )
    elif task is Task.VQA:
        inputs["labels"] = rand.soft_scores(batch_size, config.num_labels, rng)
    elif task is Task.NLVR2:
        inputs["labels"] = rand.classes(batch_size, config.num_labels, rng)
    elif task is Task.VCR:  # every input once per choice
        inputs = {
            name: value[:, None].expand(-1, NUM_CHOICES, *value.shape[1:]).contiguous()
            for name, value in inputs.items()
        }
        inputs["labels"] = rand.classes(batch_size, NUM_CHOICES, rng)
    return inputs
