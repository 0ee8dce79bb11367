"""Oscar's token rows, as CPT builds them: `[CLS] text_a [SEP] text_b [SEP]`, segments 0 / 1, zero padding."""

from __future__ import annotations

from dataclasses import dataclass


def _truncate_seq_pair(tokens_a: list, tokens_b: list, max_length: int) -> None:
    """Drop the last token of the longer sequence until both fit (BERT's / Oscar's `_truncate_seq_pair`)."""
    while len(tokens_a) + len(tokens_b) > max_length:
        (tokens_a if len(tokens_a) > len(tokens_b) else tokens_b).pop()


@dataclass
class TokenRow:
    tokens: list[str]
    input_ids: list[int]
    token_type_ids: list[int]
    attention_mask: list[int]
    mask_positions: list[int]


def encode_pair(tokenizer, text_a: str, text_b: str | None, max_length: int = 70) -> TokenRow:
    """`[CLS] text_a [SEP] text_b [SEP]`, segment 0 / 1, zero-padded to `max_length` (Oscar/CPT `tokenize`)."""
    tokens_a = tokenizer.tokenize(text_a)
    tokens_b = tokenizer.tokenize(text_b) if text_b else []
    if tokens_b:
        _truncate_seq_pair(tokens_a, tokens_b, max_length - 3)
    else:
        tokens_a = tokens_a[: max_length - 2]
    tokens = [tokenizer.cls_token, *tokens_a, tokenizer.sep_token]
    segments = [0] * len(tokens)
    if tokens_b:
        tokens += [*tokens_b, tokenizer.sep_token]
        segments += [1] * (len(tokens_b) + 1)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    padding = max_length - len(ids)
    mask_id = tokenizer.mask_token_id
    return TokenRow(
        tokens=tokens,
        input_ids=ids + [tokenizer.pad_token_id or 0] * padding,
        token_type_ids=segments + [0] * padding,
        attention_mask=[1] * len(ids) + [0] * padding,
        mask_positions=[i for i, t in enumerate(ids) if t == mask_id],
    )


def color_token_id(tokenizer, name: str) -> int:
    """The vocabulary id of a colour word; CPT only uses words that are a single word piece."""
    pieces = tokenizer.tokenize(name)
    if len(pieces) != 1 or pieces[0] == tokenizer.unk_token:
        raise ValueError(f"colour word {name!r} must be one word piece of the vocabulary, it tokenizes to {pieces}.")
    return tokenizer.convert_tokens_to_ids(pieces[0])
