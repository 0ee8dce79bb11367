"""The bottom-up-attention detector's preprocessing, exactly as the original `processing_image.Preprocess` computes it
(shared/fixtures/frcnn/README.md, "Preprocessing"):

1. RGB pixels -> BGR float32 on the 0-255 scale (the weights are Caffe-trained on BGR).
2. Resize so that the short side is `min_size` unless the long side would exceed `max_size` (then the long side is
   `max_size`); the arithmetic is Python floats, each side `int(x + 0.5)`; the resampling is
   `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` on the float image, no antialias.
3. `(x - pixel_mean) / pixel_std` per BGR channel.
4. Pad bottom / right to the batch's largest size with `pad_value`, after normalising (the padding is the mean
   colour).

Returns `pixel_values` (B, 3, H, W), `image_sizes` (B, 2) int64 resized (h, w) before padding and `scales_yx` (B, 2)
float32 raw / resized.

Inputs: PIL images, numpy arrays (H, W) or (H, W, 3|4) uint8 RGB(A), float arrays on the 0-255 scale, or paths.
Grayscale images are replicated to three channels; RGBA / LA / palette images are converted to RGB and the alpha
channel is DROPPED (no compositing: transparent pixels keep their colour values). An image with a zero side is a
ValueError naming its index.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.nn import functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor


class BottomUpImageProcessor(BaseImageProcessor):
    r"""
    Args:
        min_size: target short side (800 for unc-nlp/frcnn-vg-finetuned's config; 600 in the Caffe original).
        max_size: cap on the long side (1333; 1000 in the Caffe original).
        pixel_mean, pixel_std: per-channel BGR statistics on the 0-255 scale (Caffe means, std 1).
        pad_value: value of the padding, after normalisation.
    """

    model_input_names = ["pixel_values", "image_sizes", "scales_yx"]

    def __init__(
        self,
        min_size: int = 800,
        max_size: int = 1333,
        pixel_mean=(102.9801, 115.9465, 122.7717),
        pixel_std=(1.0, 1.0, 1.0),
        pad_value: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(min_size) < 1 or int(max_size) < 1:
            raise ValueError(f"min_size and max_size must be positive, got {min_size} / {max_size}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(f"pixel_mean and pixel_std must give 3 values (B, G, R), got {pixel_mean} / {pixel_std}")
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.pixel_mean = [float(v) for v in pixel_mean]
        self.pixel_std = [float(v) for v in pixel_std]
        self.pad_value = float(pad_value)

    @classmethod
    def from_detector_config(cls, config) -> BottomUpImageProcessor:
        return cls(
            min_size=config.min_size,
            max_size=config.max_size,
            pixel_mean=config.pixel_mean,
            pixel_std=config.pixel_std,
            pad_value=config.pad_value,
        )

    # -- single images ---------------------------------------------------------------------------------------------

    @staticmethod
    def to_rgb_array(image, index: int = 0) -> np.ndarray:
        """(H, W, 3) RGB array (uint8, or float32 on the 0-255 scale) from a PIL image, an array or a path."""
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            if not os.path.isfile(image):
                raise ValueError(f"images[{index}]: {str(image)!r} is not a file")
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
        if torch.is_tensor(image):
            image = image.detach().cpu().numpy()
        if not isinstance(image, np.ndarray):
            raise ValueError(
                f"images[{index}] must be a PIL image, a numpy array or a path, got {type(image).__name__}"
            )
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise ValueError(f"images[{index}] must be (H, W), (H, W, 3) or (H, W, 4) RGB(A), got {image.shape}")
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        image = image[:, :, :3]  # RGBA: alpha dropped
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"images[{index}] is empty: size {image.shape[0]}x{image.shape[1]}")
        if image.dtype != np.uint8:
            image = image.astype(np.float32)
            if not np.isfinite(image).all():
                raise ValueError(f"images[{index}] holds non-finite values")
        return image

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The original's shortest-edge resize with a long-side cap, in Python floats, then `int(x + 0.5)`."""
        scale = self.min_size * 1.0 / min(height, width)
        if height < width:
            new_h, new_w = self.min_size, scale * width
        else:
            new_h, new_w = scale * height, self.min_size
        if max(new_h, new_w) > self.max_size:
            scale = self.max_size * 1.0 / max(new_h, new_w)
            new_h, new_w = new_h * scale, new_w * scale
        return int(new_h + 0.5), int(new_w + 0.5)

    def _normalized(self, rgb: np.ndarray) -> torch.Tensor:
        bgr = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1]).astype(np.float32))
        height, width = bgr.shape[:2]
        new_h, new_w = self.resized_size(height, width)
        resized = F.interpolate(bgr.permute(2, 0, 1)[None], (new_h, new_w), mode="bilinear", align_corners=False)[0]
        mean = torch.tensor(self.pixel_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.pixel_std, dtype=torch.float32)[:, None, None]
        return (resized - mean) / std

    # -- batches ---------------------------------------------------------------------------------------------------

    def preprocess(self, images, return_tensors="pt", **kwargs) -> BatchFeature:
        if kwargs:
            raise ValueError(f"unexpected arguments {sorted(kwargs)} for BottomUpImageProcessor")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' (or None, which means 'pt'), got {return_tensors!r}")
        if isinstance(images, (str, os.PathLike, np.ndarray)) or not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("images is empty: pass at least one image")
        arrays = [self.to_rgb_array(image, index) for index, image in enumerate(images)]
        normalized = [self._normalized(array) for array in arrays]
        height = max(image.shape[1] for image in normalized)
        width = max(image.shape[2] for image in normalized)
        pixel_values = torch.full((len(arrays), 3, height, width), self.pad_value, dtype=torch.float32)
        for index, image in enumerate(normalized):
            pixel_values[index, :, : image.shape[1], : image.shape[2]] = image
        image_sizes = torch.tensor([list(image.shape[1:]) for image in normalized], dtype=torch.int64)
        raw_sizes = torch.tensor([list(array.shape[:2]) for array in arrays], dtype=torch.int64)
        scales_yx = raw_sizes / image_sizes  # float32, as the original's true_divide of integer tensors
        return BatchFeature(
            {"pixel_values": pixel_values, "image_sizes": image_sizes, "scales_yx": scales_yx.to(torch.float32)}
        )

    def __call__(self, images, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)


__all__ = ["BottomUpImageProcessor"]
