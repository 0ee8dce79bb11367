"""SimVLM's processor: an image processor (square resize to the model's `image_size`, [-1, 1] normalisation as ViT)
and any tokenizer. The text prefix is tokenized without special tokens (the encoder reads image tokens and words);
targets (`text_target`) get the tokenizer's end token, which must be the model's `eos_token_id`."""

from transformers import BatchFeature, ProcessorMixin, ViTImageProcessorPil

# the paper's zero-shot captioning prompt (section 4.3)
CAPTION_PROMPT = "a picture of"


class SimVlmProcessor(ProcessorMixin):
    """`processor(images=..., text=prefixes, text_target=suffixes)` -> `pixel_values`, `input_ids`,
    `attention_mask` and `labels` (suffix ids + end token, -100 at padding), the inputs of
    `SimVlmForConditionalGeneration`. Any part may be left out (text-only PrefixLM, captioning without prompt)."""

    def __init__(self, image_processor=None, tokenizer=None):
        super().__init__(image_processor, tokenizer)

    @property
    def end_token_id(self):
        tokenizer = self.tokenizer
        end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if end is None:
            raise ValueError("the tokenizer has neither an eos nor a sep token to end targets with")
        return end

    def __call__(self, images=None, text=None, text_target=None, return_tensors="pt", **kwargs) -> BatchFeature:
        if images is None and text is None and text_target is None:
            raise ValueError("pass `images`, `text`, `text_target` or several of them")
        data = {}
        if images is not None:
            data["pixel_values"] = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        if text is not None:
            encoded = self.tokenizer(
                text, add_special_tokens=False, padding=True, return_tensors=return_tensors, **kwargs
            )
            data["input_ids"], data["attention_mask"] = encoded["input_ids"], encoded["attention_mask"]
        if text_target is not None:
            targets = [text_target] if isinstance(text_target, str) else list(text_target)
            ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] + [self.end_token_id] for t in targets]
            length = max(len(i) for i in ids)
            data["labels"] = [i + [-100] * (length - len(i)) for i in ids]
        return BatchFeature(data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def build_simvlm_processor(tokenizer, image_size: int = 224) -> SimVlmProcessor:
    """A `SimVlmProcessor` around `tokenizer` with an image processor for `image_size` px squares."""
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"`image_size` must be a positive int, got {image_size!r}")
    image_processor = ViTImageProcessorPil(size={"height": image_size, "width": image_size})
    return SimVlmProcessor(image_processor=image_processor, tokenizer=tokenizer)


__all__ = ["CAPTION_PROMPT", "SimVlmProcessor", "build_simvlm_processor"]
