"""Random UniT inputs (`ArchitectureSpec.example_inputs`; `hf-vlp bench`, tests).

The multitask head runs one dataset per batch: the inputs are those of the config's first vision-and-language
dataset (image + text, the path that exercises every encoder), else its first detection, else its first GLUE one.
`task=` picks another dataset. The second image is padded on the right (`pixel_mask` 0 there).
"""

import torch

from hf_vlp import random_inputs as rand
from hf_vlp.spec import Task

IMAGE_SIZE = 64


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0, dataset=None):
    Task(task)  # the multitask head is the only one
    rng = rand.generator(seed)
    if dataset is None:
        dataset = next((name for kind in ("vl", "detection", "glue") for name in config.task_names(kind)), None)
    spec = config.tasks[dataset]
    inputs = {"task": dataset}
    if spec["type"] in ("detection", "vl"):
        pixel_values = rand.pixels(batch_size, IMAGE_SIZE, rng)
        pixel_mask = torch.ones(batch_size, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.long)
        if batch_size > 1:
            pixel_mask[1, :, IMAGE_SIZE * 3 // 4 :] = 0
            pixel_values[1, :, :, IMAGE_SIZE * 3 // 4 :] = 0
        inputs.update(pixel_values=pixel_values, pixel_mask=pixel_mask)
    if spec["type"] in ("vl", "glue"):
        input_ids, attention_mask = rand.text(batch_size, text_length, config.text_config.vocab_size, rng)
        inputs.update(input_ids=input_ids, attention_mask=attention_mask)
    if spec["type"] == "detection":
        labels = []
        for _ in range(batch_size):
            count = int(torch.randint(1, 4, (1,), generator=rng))
            centres = torch.rand(count, 2, generator=rng) * 0.5 + 0.25
            sizes = torch.rand(count, 2, generator=rng) * 0.3 + 0.1
            target = {
                "class_labels": torch.randint(0, spec["num_classes"], (count,), generator=rng),
                "boxes": torch.cat([centres, sizes], dim=-1),
            }
            if spec["use_attributes"]:
                target["attributes"] = torch.randint(
                    -1, config.num_attributes, (count, config.max_attributes), generator=rng
                )
            labels.append(target)
        inputs["labels"] = labels
    elif spec["loss"] == "binary_cross_entropy_with_logits":
        inputs["labels"] = rand.soft_scores(batch_size, spec["num_labels"], rng)
    else:
        inputs["labels"] = rand.classes(batch_size, spec["num_labels"], rng)
    return inputs
