"""Random SimVLM inputs for every head (`ArchitectureSpec.example_inputs`; `hf-vlp bench`, tests). `regions` is
unused: SimVLM reads pixels. The text prefix has no special tokens; suffixes end with `eos_token_id`."""

from hf_vlp import random_inputs as rand
from hf_vlp.spec import Task


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0):
    rng = rand.generator(seed)
    input_ids, attention_mask = rand.text(
        batch_size, text_length, config.vocab_size, rng, pad_token_id=config.pad_token_id
    )
    inputs = dict(
        input_ids=input_ids,
        pixel_values=rand.pixels(batch_size, config.image_size, rng, channels=config.num_channels),
        attention_mask=attention_mask,
    )
    suffix, suffix_mask = rand.text(
        batch_size,
        text_length,
        config.vocab_size,
        rng,
        last_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    task = Task(task)
    if task is Task.BASE:  # the bare encoder-decoder reads decoder inputs, not labels
        inputs["decoder_input_ids"] = suffix
    elif task in (Task.PRETRAINING, Task.CAPTIONING, Task.VQA):  # the suffix / caption / answer to generate
        inputs["labels"] = suffix.masked_fill(suffix_mask == 0, -100)
    else:
        raise ValueError(f"SimVLM has no {task.value!r} head")
    return inputs
