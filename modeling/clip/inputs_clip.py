"""Random CLIP inputs (ViT and ResNet towers) for every head (`ArchitectureSpec.example_inputs`; `hf-vlp bench`,
tests). Every head is the contrastive model: texts end with the end-of-text token the pooling reads. `regions` is
unused."""

from hf_vlp import random_inputs as rand


def example_inputs(config, task, batch_size=2, *, text_length=8, regions=5, seed=0):
    rng = rand.generator(seed)
    text = config.text_config
    text_length = min(text_length, text.max_position_embeddings)
    input_ids, attention_mask = rand.text(
        batch_size, text_length, text.vocab_size, rng, text.bos_token_id, text.eos_token_id, text.pad_token_id
    )
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=rand.pixels(batch_size, config.vision_config.image_size, rng),
    )
