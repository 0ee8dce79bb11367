"""Random Switch Transformers inputs (`ArchitectureSpec.example_inputs`; `hf-vlp bench`, tests): source ids and
target `labels` half as long. `regions` is unused: the model reads text only."""

from hf_vlp import random_inputs as rand


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0):
    rng = rand.generator(seed)
    input_ids, attention_mask = rand.text(
        batch_size, text_length, config.vocab_size, rng, pad_token_id=config.pad_token_id
    )
    labels, label_mask = rand.text(batch_size, max(2, text_length // 2), config.vocab_size, rng)
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels.masked_fill(label_mask == 0, -100))
