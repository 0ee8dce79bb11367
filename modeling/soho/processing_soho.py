"""SOHO inputs the original way (`configs/*/soho_res18_*.py` pipelines: `Resize(img_scale=(1000, 600),
keep_ratio=True)`, `Normalize(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)`,
`Pad(size_divisor=32)`, then the collate's padding to the largest image of the batch).

`SohoImageProcessor` returns `pixel_values` (B, 3, H, W) zero-padded at the bottom / right and `pixel_mask` (B, H, W)
with 1 on each image's resized area: the model derives the original's `img_shape` / `pad_shape` from them. Resizing
uses PIL's bilinear filter; the original uses OpenCV's, which differs by a few grey levels on downscaled images (the
parity fixtures start from already normalised tensors, so this is not part of the verified path).
"""

import numpy as np
import torch
from PIL import Image
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

SOHO_MEAN = (123.675, 116.28, 103.53)  # RGB, on 0-255 values
SOHO_STD = (58.395, 57.12, 57.375)


def _as_rgb_array(image, index) -> np.ndarray:
    """An image as an (h, w, 3) float32 RGB array on 0-255 values. PIL images are converted to RGB; arrays and
    tensors are taken as RGB, channels last or first."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if torch.is_tensor(image):
        image = image.detach().cpu().float().numpy()
    try:
        array = np.asarray(image, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`images[{index}]` must be a PIL image or an (h, w, 3) / (3, h, w) array: {error}") from None
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"`images[{index}]` must be an RGB image (h, w, 3) or (3, h, w), got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"`images[{index}]` holds non-finite values.")
    return array


class SohoImageProcessor(BaseImageProcessor):
    r"""
    Args:
        do_resize: resize keeping the aspect ratio so that the long side is at most `size["longest_edge"]` and the
            short side at most `size["shortest_edge"]` (mmcv `rescale` with `img_scale=(1000, 600)`).
        image_mean, image_std: per-channel normalisation on 0-255 RGB values (the original's).
        size_divisor: each image is padded to a multiple of it (32), then the batch to its largest image.
    """

    model_input_names = ["pixel_values", "pixel_mask"]

    def __init__(
        self,
        do_resize=True,
        size=None,
        image_mean=SOHO_MEAN,
        image_std=SOHO_STD,
        size_divisor=32,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.do_resize = do_resize
        self.size = dict(size) if size is not None else {"shortest_edge": 600, "longest_edge": 1000}
        if set(self.size) != {"shortest_edge", "longest_edge"} or min(self.size.values()) < 1:
            raise ValueError(f"`size` must be {{'shortest_edge': int, 'longest_edge': int}}, got {self.size!r}")
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"`image_mean` / `image_std` must be 3 values (std > 0), got {image_mean}, {image_std}")
        if not isinstance(size_divisor, int) or size_divisor < 1:
            raise ValueError(f"`size_divisor` must be a positive int, got {size_divisor!r}")
        self.size_divisor = size_divisor

    def resized_shape(self, height, width):
        """(h, w) after the keep-ratio resize: scale = min(long / max(h, w), short / min(h, w)), rounded half up."""
        scale = min(self.size["longest_edge"] / max(height, width), self.size["shortest_edge"] / min(height, width))
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def preprocess(self, images, return_tensors="pt", **kwargs):
        if kwargs:
            raise ValueError(f"unknown argument(s) {sorted(kwargs)} for SohoImageProcessor")
        if isinstance(images, (Image.Image, np.ndarray)) or torch.is_tensor(images):
            images = [images]
        if not images:
            raise ValueError("`images` is empty: pass one image or a list of images.")
        arrays = []
        for index, image in enumerate(images):
            array = _as_rgb_array(image, index)
            if self.do_resize:
                height, width = self.resized_shape(*array.shape[:2])
                resized = Image.fromarray(array.round().clip(0, 255).astype(np.uint8)).resize(
                    (width, height), Image.Resampling.BILINEAR
                )
                array = np.asarray(resized, dtype=np.float32)
            arrays.append((array - np.float32(self.image_mean)) / np.float32(self.image_std))
        divisor = self.size_divisor
        pad_height = max(-(-a.shape[0] // divisor) * divisor for a in arrays)
        pad_width = max(-(-a.shape[1] // divisor) * divisor for a in arrays)
        pixel_values = np.zeros((len(arrays), 3, pad_height, pad_width), dtype=np.float32)
        pixel_mask = np.zeros((len(arrays), pad_height, pad_width), dtype=np.int64)
        for index, array in enumerate(arrays):
            height, width = array.shape[:2]
            pixel_values[index, :, :height, :width] = array.transpose(2, 0, 1)
            pixel_mask[index, :height, :width] = 1
        return BatchFeature({"pixel_values": pixel_values, "pixel_mask": pixel_mask}, tensor_type=return_tensors)


class SohoProcessor(ProcessorMixin):
    """`processor(images=[...], text=[...])` -> `input_ids`, `attention_mask`, `token_type_ids`, `pixel_values`,
    `pixel_mask`: the keyword arguments of every SOHO model. `text` holds the same number of captions for every
    image, image-major (all captions of image 0, then image 1 ...); the model repeats each image for its captions.
    The released model uses BERT-base-uncased's WordPiece vocabulary."""

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, padding=True, truncation=True, max_length=None, return_tensors="pt"):
        if images is None and text is None:
            raise ValueError("nothing to process: pass `images`, `text`, or both.")
        data = {}
        if text is not None:
            data.update(
                self.tokenizer(
                    text, padding=padding, truncation=truncation, max_length=max_length, return_tensors=return_tensors
                )
            )
        if images is not None:
            pixels = self.image_processor(images, return_tensors=return_tensors)
            if text is not None and len(data["input_ids"]) % len(pixels["pixel_values"]):
                raise ValueError(
                    f"{len(data['input_ids'])} texts for {len(pixels['pixel_values'])} images: `text` needs the same "
                    "number of captions for every image (image-major)."
                )
            data.update(pixels)
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self):
        return list(self.tokenizer.model_input_names) + list(self.image_processor.model_input_names)


__all__ = ["SOHO_MEAN", "SOHO_STD", "SohoImageProcessor", "SohoProcessor"]
