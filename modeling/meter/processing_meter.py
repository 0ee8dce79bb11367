"""METER inputs the original way (METER `meter/transforms/transform.py`: `clip_transform`; `meter/datasets`).

* Images (`MeterImageProcessor`): PIL bicubic resize of the shorter side to `image_size` (the longer side becomes
  `int(size * long / short)`), centre crop to `image_size` x `image_size`, /255, CLIP mean/std. This is transformers'
  `CLIPImageProcessorPil` except for the crop offset: torchvision's `CenterCrop` (which METER uses) rounds
  `(H - S) / 2` half to even, transformers floors it, and the two differ by one pixel when `(H - S) % 4 == 3`
  (shared/fixtures/meter/finetune_heads: a 128x94 picture). METER's datasets open pictures as RGBA before the
  transform; for opaque pictures that gives the same pixels as RGB (checked on the fixture).
* Text: the RoBERTa tokenizer (`roberta-base`), padded to `max_text_len` (40 in METER's configs) and truncated there;
  token type ids are dropped (RoBERTa has one type).
* NLVR2: `images` as a list of (left, right) pairs gives `pixel_values` (B, 2, 3, S, S).
"""

import numpy as np
from transformers import CLIPImageProcessorPil, ProcessorMixin
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling


class MeterImageProcessor(CLIPImageProcessorPil):
    """`CLIPImageProcessorPil` at METER's 288 px with torchvision's centre-crop rounding (module docstring)."""

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"shortest_edge": 288}
    crop_size = {"height": 288, "width": 288}

    def center_crop(self, image: np.ndarray, size, **kwargs) -> np.ndarray:
        """torchvision `CenterCrop` (channels first): offsets `int(round((H - h) / 2))`, Python's half-to-even round,
        where transformers uses `(H - h) // 2`. Images smaller than the crop are refused (METER resizes first)."""
        if size.height is None or size.width is None:
            raise ValueError(f"crop_size must have 'height' and 'width', got {size}")
        height, width = image.shape[-2:]
        if size.height > height or size.width > width:
            raise ValueError(
                f"cannot centre-crop a {height}x{width} image to {size.height}x{size.width}: resize it first "
                "(do_resize=True with shortest_edge >= the crop size)"
            )
        top = int(round((height - size.height) / 2))
        left = int(round((width - size.width) / 2))
        return image[..., top : top + size.height, left : left + size.width]


class MeterProcessor(ProcessorMixin):
    """`MeterImageProcessor` + a RoBERTa tokenizer. Returns `input_ids`, `attention_mask` and `pixel_values` (the
    arguments of every METER head); a list of image pairs gives `pixel_values` (B, 2, 3, S, S) for NLVR2."""

    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, max_text_len: int = 40, **kwargs):
        if not isinstance(max_text_len, int) or max_text_len < 3:
            raise ValueError(f"`max_text_len` must be an int >= 3 (<s>, a token, </s>), got {max_text_len!r}")
        self.max_text_len = max_text_len
        super().__init__(image_processor, tokenizer)

    def __call__(self, images=None, text=None, padding="max_length", truncation=True, max_length=None, **kwargs):
        if images is None and text is None:
            raise ValueError("pass `images`, `text` or both")
        return_tensors = kwargs.pop("return_tensors", "pt")
        encoding = {}
        if text is not None:
            tokens = self.tokenizer(
                text,
                padding=padding,
                truncation=truncation,
                max_length=max_length or self.max_text_len,
                return_tensors=return_tensors,
                **kwargs,
            )
            encoding.update(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        if images is not None:
            pairs = isinstance(images, (list, tuple)) and len(images) > 0 and isinstance(images[0], (list, tuple))
            if pairs:
                if any(len(pair) != 2 for pair in images):
                    raise ValueError(
                        "`images` as pairs (NLVR2) must hold exactly two images per example, got lengths "
                        f"{[len(pair) for pair in images]}"
                    )
                flat = [image for pair in images for image in pair]
                pixels = self.image_processor(flat, return_tensors="pt")["pixel_values"]
                pixels = pixels.view(len(images), 2, *pixels.shape[1:])
            else:
                pixels = self.image_processor(images, return_tensors="pt")["pixel_values"]
            if "input_ids" in encoding and pixels.shape[0] != encoding["input_ids"].shape[0]:
                raise ValueError(
                    f"`images` gives {pixels.shape[0]} examples but `text` {encoding['input_ids'].shape[0]}: METER "
                    "pairs one image (or one NLVR2 pair) with each text"
                )
            encoding["pixel_values"] = pixels
        from transformers import BatchFeature

        return BatchFeature(encoding, tensor_type=return_tensors)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["MeterImageProcessor", "MeterProcessor"]
