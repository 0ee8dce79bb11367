"""Random LXMERT inputs for every head (`ArchitectureSpec.example_inputs`; `hf-vlp bench`, tests)."""

import torch

from hf_vlp import random_inputs as rand
from hf_vlp.spec import Task


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0):
    rng = rand.generator(seed)
    input_ids, attention_mask = rand.text(batch_size, text_length, config.vocab_size, rng)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
    inputs.update(rand.regions(batch_size, regions, config.visual_feat_dim, rng))
    task = Task(task)
    if task is Task.PRETRAINING:
        confidence = inputs["visual_attention_mask"].float()  # padded regions weigh 0
        masked = torch.zeros(batch_size, regions)
        masked[:, 0] = 1.0
        inputs.update(
            labels=rand.masked_lm_labels(input_ids, attention_mask, rng),
            matched_label=rand.classes(batch_size, 2, rng),
            obj_labels={
                "obj": (torch.randint(0, config.num_object_labels, (batch_size, regions), generator=rng), confidence),
                "attr": (torch.randint(0, config.num_attr_labels, (batch_size, regions), generator=rng), confidence),
                "feat": (inputs["visual_feats"].clone(), masked),
            },
            ans=rand.classes(batch_size, config.num_qa_labels, rng),
        )
    elif task is Task.VQA:
        inputs["labels"] = rand.soft_scores(batch_size, config.num_qa_labels, rng)
    elif task is Task.NLVR2:  # one statement, two images on dim 1
        second = rand.regions(batch_size, regions, config.visual_feat_dim, rng)
        inputs.update(rand.pairs({k: inputs[k] for k in second}, second), labels=rand.classes(batch_size, 2, rng))
    return inputs
