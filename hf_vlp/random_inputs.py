"""Random model inputs in hf_vlp's input vocabulary (docs/design.md, "Input vocabulary"), the pieces each
architecture's `example_inputs` (named by its spec) is made of. Used by `hf-vlp bench` and the tests; values are
plausible (normalized boxes with x1 < x2, padded rows, special tokens in place), not meaningful."""

import torch

# the first ids of BERT-style vocabularies (and of `hf_vlp.recipes.shapes_tokenizer`) are special tokens
FIRST_WORD_ID = 5


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def text(batch, length, vocab_size, rng, first_token_id=None, last_token_id=None, pad_token_id=0):
    """`input_ids` and `attention_mask` (B, T): random words, the last row padded by two tokens (when T > 3),
    `first_token_id` at position 0 and `last_token_id` at each row's last real position."""
    if vocab_size <= FIRST_WORD_ID:
        raise ValueError(f"`vocab_size` must exceed {FIRST_WORD_ID} (the special tokens), got {vocab_size}")
    input_ids = torch.randint(FIRST_WORD_ID, vocab_size, (batch, length), generator=rng)
    lengths = torch.full((batch,), length)
    if batch > 1 and length > 3:
        lengths[-1] = length - 2
    attention_mask = (torch.arange(length)[None] < lengths[:, None]).long()
    if first_token_id is not None:
        input_ids[:, 0] = first_token_id
    if last_token_id is not None:
        input_ids[torch.arange(batch), lengths - 1] = last_token_id
    input_ids = input_ids.masked_fill(attention_mask == 0, pad_token_id)
    return input_ids, attention_mask


def regions(batch, count, feature_size, rng):
    """`visual_feats` (B, R, D), `visual_pos` (B, R, 4) normalized x1, y1, x2, y2 and `visual_attention_mask`
    (B, R) with the last row's last region padded."""
    corners = torch.rand(batch, count, 2, generator=rng) * 0.5
    sizes = torch.rand(batch, count, 2, generator=rng) * 0.45 + 0.05  # corners + sizes stay inside [0, 1]
    visual_attention_mask = torch.ones(batch, count, dtype=torch.long)
    if batch > 1 and count > 1:
        visual_attention_mask[-1, -1] = 0
    return dict(
        visual_feats=torch.rand(batch, count, feature_size, generator=rng),
        visual_pos=torch.cat([corners, corners + sizes], dim=-1),
        visual_attention_mask=visual_attention_mask,
    )


def pixels(batch, image_size, rng, channels=3):
    """`pixel_values` (B, C, H, W), normalized-image-like values."""
    return torch.randn(batch, channels, image_size, image_size, generator=rng)


def soft_scores(batch, num_labels, rng):
    """(B, num_labels) VQA-style soft answer scores: one answer at 1.0 and one at 0.3 per row."""
    scores = torch.zeros(batch, num_labels)
    rows = torch.arange(batch)
    scores[rows, torch.randint(0, num_labels, (batch,), generator=rng)] = 0.3
    scores[rows, torch.randint(0, num_labels, (batch,), generator=rng)] = 1.0
    return scores


def classes(batch, num_classes, rng):
    """(B,) class ids in [0, num_classes)."""
    return torch.randint(0, num_classes, (batch,), generator=rng)


def masked_lm_labels(input_ids, attention_mask, rng, probability=0.3):
    """(B, T) masked-LM labels: the ids of a random subset of real non-special tokens (at least one per row), -100
    elsewhere."""
    candidates = (attention_mask == 1) & (input_ids >= FIRST_WORD_ID)
    chosen = candidates & (torch.rand(input_ids.shape, generator=rng) < probability)
    first = candidates.float().argmax(1)
    chosen[torch.arange(len(input_ids)), first] |= candidates[torch.arange(len(input_ids)), first]
    return input_ids.masked_fill(~chosen, -100)


def pairs(tensors: dict, second: dict):
    """Stack two input dicts on a new dim 1 (NLVR2's two images)."""
    return {name: torch.stack([value, second[name]], dim=1) for name, value in tensors.items()}
