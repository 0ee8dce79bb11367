"""Random ViT inputs for every head (`ArchitectureSpec.example_inputs`; `hf-vlp bench`, tests). `text_length` and
`regions` are unused: ViT reads pixels only."""

from hf_vlp import random_inputs as rand
from hf_vlp.spec import Task


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0):
    rng = rand.generator(seed)
    inputs = dict(pixel_values=rand.pixels(batch_size, config.image_size, rng))
    if Task(task) is Task.CLASSIFICATION:
        inputs["labels"] = rand.classes(batch_size, config.num_labels, rng)
    return inputs
