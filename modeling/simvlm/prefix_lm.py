"""The PrefixLM split (paper section 3.1, eq. 2): a text x of n tokens is cut at a random point Tp; the model reads
x[:Tp] (after the image, for image-text data) bidirectionally and is trained to generate x[Tp:].

`prefix_lm_split` cuts token lists; `PrefixLmCollator` batches examples (with or without images) into the inputs of
`SimVlmForConditionalGeneration`. The paper states the split but not its distribution; ours (docs/simvlm.md):
Tp uniform over the admissible cut points, image-text cuts may leave an empty text prefix (pure captioning), text-only
cuts keep at least `min_text_prefix` tokens (the encoder needs an input) and at least one suffix token.
"""

from collections.abc import Sequence

import torch


def prefix_lm_split(
    token_ids: Sequence[int],
    generator: torch.Generator,
    with_image: bool,
    min_text_prefix: int = 1,
    max_prefix_fraction: float = 1.0,
) -> tuple[list[int], list[int]]:
    """Cut `token_ids` (words only, no special tokens) into (prefix, suffix) at a random point. The suffix keeps at
    least one token; an image-text example may get an empty prefix, a text-only one gets at least
    `min_text_prefix` tokens. `max_prefix_fraction` caps the prefix at that fraction of the text."""
    token_ids = list(token_ids)
    low = 0 if with_image else min_text_prefix
    high = min(len(token_ids) - 1, int(len(token_ids) * max_prefix_fraction))
    if high < low:
        raise ValueError(
            f"a {'image-text' if with_image else 'text-only'} example needs at least {low + 1} tokens to split into a "
            f"prefix and a suffix, got {len(token_ids)}"
        )
    cut = int(torch.randint(low, high + 1, (1,), generator=generator))
    return token_ids[:cut], token_ids[cut:]


class PrefixLmCollator:
    """Examples -> PrefixLM batches for `SimVlmForConditionalGeneration`.

    Each example is a dict with `input_ids` (the text's word ids, no special tokens) and optionally `pixel_values`
    (C, H, W); a batch must be all image-text or all text-only (the paper mixes the two datasets by batch). Returns
    `input_ids` / `attention_mask` (the text prefix, right-padded; omitted when every prefix is empty),
    `pixel_values`, and `labels` (suffix + `eos_token_id`, -100 at padding).

    `split=False` keeps the whole text as the suffix (captioning fine-tuning: the image is the only prefix).
    """

    def __init__(
        self,
        pad_token_id: int,
        eos_token_id: int,
        split: bool = True,
        min_text_prefix: int = 1,
        max_prefix_fraction: float = 1.0,
        seed: int = 0,
    ):
        if not 0.0 < max_prefix_fraction <= 1.0:
            raise ValueError(f"`max_prefix_fraction` must be in (0, 1], got {max_prefix_fraction!r}")
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id
        self.split, self.min_text_prefix, self.max_prefix_fraction = split, min_text_prefix, max_prefix_fraction
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, examples):
        if not examples:
            raise ValueError("`examples` is empty")
        with_image = ["pixel_values" in example for example in examples]
        if any(with_image) != all(with_image):
            raise ValueError("a PrefixLM batch must be all image-text or all text-only (`pixel_values` in some only)")
        prefixes, suffixes = [], []
        for example in examples:
            ids = [int(i) for i in example["input_ids"]]
            if self.split:
                prefix, suffix = prefix_lm_split(
                    ids, self.generator, with_image[0], self.min_text_prefix, self.max_prefix_fraction
                )
            else:
                if not with_image[0]:
                    raise ValueError("`split=False` needs images: a text-only example would have no prefix")
                prefix, suffix = [], ids
            prefixes.append(prefix)
            suffixes.append(suffix + [self.eos_token_id])
        batch = {}
        if with_image[0]:
            batch["pixel_values"] = torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples])
        if any(prefixes):
            batch["input_ids"], batch["attention_mask"] = _pad(prefixes, self.pad_token_id)
        labels, label_mask = _pad(suffixes, self.pad_token_id)
        batch["labels"] = labels.masked_fill(label_mask == 0, -100)
        return batch


def _pad(sequences, pad_token_id):
    length = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids, mask


__all__ = ["PrefixLmCollator", "prefix_lm_split"]
