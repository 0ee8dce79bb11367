"""BLIP inputs the original way: transformers' `BlipProcessor` with BLIP's tokenizer (bert-base-uncased + `[DEC]` +
`[ENC]`, `models/blip.py` `init_tokenizer`) and `transform_test` (square bicubic resize, CLIP mean/std), plus the
original text normalisation (`data/utils.py` `pre_caption` / `pre_question`).

transformers' `AutoProcessor` already maps BLIP configs to `BlipProcessor`; nothing is registered here.
"""

import re
from pathlib import Path

from transformers import BertTokenizer, BlipImageProcessorPil, BlipProcessor

DEC_TOKEN, ENC_TOKEN = "[DEC]", "[ENC]"


def build_blip_processor(vocab, image_size: int = 384) -> BlipProcessor:
    """`vocab`: a bert-base-uncased `vocab.txt` or a directory holding one. The tokenizer gets `[DEC]` as bos (id
    30522) and `[ENC]` as an additional special token (30523), as the original's `init_tokenizer` does."""
    vocab = Path(vocab)
    directory = vocab if vocab.is_dir() else vocab.parent
    if not (directory / "vocab.txt").exists():
        raise ValueError(f"`vocab` must be a vocab.txt or a directory with one, got {str(vocab)!r}")
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"`image_size` must be a positive int, got {image_size!r}")
    tokenizer = BertTokenizer.from_pretrained(str(directory), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
    tokenizer.add_special_tokens({"additional_special_tokens": [ENC_TOKEN]})
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def pre_caption(caption: str, max_words: int = 50) -> str:
    """Lower case, `.!"()*#:;~` -> space, squeezed spaces, stripped, at most `max_words` words."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def pre_question(question: str, max_words: int = 50) -> str:
    """Lower case, `.!"()*#:;~` removed (`?` kept), trailing spaces stripped, at most `max_words` words."""
    question = re.sub(r"([.!\"()*#:;~])", "", question.lower())
    question = question.rstrip(" ")
    words = question.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else question
