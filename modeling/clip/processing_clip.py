"""CLIP inputs the original way (openai/CLIP `clip/clip.py`: `tokenize`, `_transform`; `simple_tokenizer.py`).

* Tokenizer: transformers' `CLIPTokenizer` built from the original BPE file (`bpe_simple_vocab_16e6.txt.gz`, also in
  the PyPI wheel `open_clip_torch`) gives the original ids for plain text; the original also runs `ftfy.fix_text` and
  `html.unescape` twice before tokenizing, which transformers' normaliser does not (shared/fixtures/clip:
  "Two dogs &amp; a red ..." gets different ids). `CLIPOriginalProcessor` applies that cleaning first (`ftfy` when it
  is installed: it only matters for mojibake such as "Ã©cole").
* Overlong text: the original raises unless `truncate=True`, which keeps the first context-1 tokens and ends with
  <|endoftext|>; so does this processor (`truncation=True` gives the same ids).
* Padding: the original pads with 0, transformers with <|endoftext|>; pooling at the first <|endoftext|> gives the same
  features either way.
* Images: `CLIPImageProcessorPil(size={"shortest_edge": n}, crop_size=n)` (PIL bicubic, centre crop, OpenAI mean/std)
  reproduces `_transform(n)` exactly; the tensor-backed `CLIPImageProcessor` differs by up to 1.5e-2.
"""

import gzip
import html
import importlib.util
import re
from functools import lru_cache
from pathlib import Path

from transformers import CLIPImageProcessorPil, CLIPProcessor, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# merges used by the original: lines 2 .. 48895 of the file (49152 - 256 - 2 of them)
NUM_MERGES = 49152 - 256 - 2


def default_bpe_path() -> Path:
    """The BPE file shipped in the `open_clip_torch` wheel (install with `pip install --no-deps open_clip_torch`;
    it is read as a data file, never imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"bpe_path not given and `open_clip_torch` is not installed; pass the original {BPE_FILE} "
            "(openai/CLIP clip/ folder) or `pip install --no-deps open_clip_torch`"
        )
    return Path(list(spec.submodule_search_locations)[0]) / BPE_FILE


def clip_vocab_and_merges(bpe_path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The original `SimpleTokenizer` vocabulary: 256 byte symbols, the same with `</w>`, one token per merge, then
    <|startoftext|> and <|endoftext|> (49406, 49407 for the released file)."""
    bpe_path = Path(bpe_path)
    if not bpe_path.exists():
        raise ValueError(f"bpe_path {str(bpe_path)!r} does not exist")
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1] if line.strip()]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


@lru_cache(maxsize=1)
def _ftfy():
    try:
        import ftfy

        return ftfy
    except ImportError:
        return None


def clean_text(text: str) -> str:
    """`simple_tokenizer.basic_clean` + `whitespace_clean`: ftfy (if installed), html.unescape twice, strip, collapse
    whitespace. Lower-casing is done by the tokenizer's normaliser."""
    ftfy = _ftfy()
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class CLIPOriginalProcessor(CLIPProcessor):
    """`CLIPProcessor` that cleans text as the original does and refuses text longer than the context unless
    `truncation=True`. Pads to the context length by default (like `clip.tokenize`)."""

    def __call__(self, images=None, text=None, truncation=False, padding="max_length", max_length=None, **kwargs):
        context = max_length or self.tokenizer.model_max_length
        if text is not None:
            single = isinstance(text, str)
            texts = [clean_text(t) for t in ([text] if single else list(text))]
            if not truncation:
                lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
                too_long = [(i, n) for i, n in enumerate(lengths) if n > context]
                if too_long:
                    index, length = too_long[0]
                    raise ValueError(
                        f"text[{index}] is {length} tokens long (with <|startoftext|> and <|endoftext|>) but the CLIP "
                        f"context is {context}; pass truncation=True to cut it as clip.tokenize(truncate=True) does"
                    )
            text = texts[0] if single else texts
        kwargs.setdefault("return_tensors", "pt")
        return super().__call__(
            images=images, text=text, truncation=truncation, padding=padding, max_length=context, **kwargs
        )


def build_clip_processor(bpe_path=None, image_size: int = 224, context_length: int = 77) -> CLIPOriginalProcessor:
    """The original preprocessing as a transformers processor. `bpe_path`: the original BPE file (default: the copy in
    the `open_clip_torch` wheel)."""
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"`image_size` must be a positive int, got {image_size!r}")
    if not isinstance(context_length, int) or context_length < 2:
        raise ValueError(f"`context_length` must be an int >= 2, got {context_length!r}")
    vocab, merges = clip_vocab_and_merges(bpe_path or default_bpe_path())
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPOriginalProcessor(image_processor=image_processor, tokenizer=tokenizer)


__all__ = ["CLIPOriginalProcessor", "build_clip_processor", "clean_text", "clip_vocab_and_merges", "default_bpe_path"]
