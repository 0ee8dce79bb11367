"""One ResNet for every architecture that needs a convolutional trunk.

Parameter names are torchvision's (`conv1`, `bn1`, `layer1` .. `layer4`; blocks `conv1/bn1/conv2/bn2[/conv3/bn3]`,
`downsample.0/.1`), so torchvision and mmcls checkpoints load as they are and detectron2 / Caffe-converted ones load
through a key table in their converter. The switches cover the trunks hf_vlp reproduces:

* torchvision ResNet / ResNeXt (`groups`, `width_per_group`, `replace_stride_with_dilation` with torchvision's
  semantics: the first block of a dilated stage keeps the previous stage's dilation);
* Caffe / detectron2 "MSRA" ResNets (`stride_in_1x1`: the stride sits in the first 1x1 conv; `caffe_stem_pool`:
  3x3/2 max-pool with no padding and `ceil_mode=True`, Caffe's pooling arithmetic);
* frozen batch norm (`norm="frozen"`), frozen stages, and trunks cut after the last stage a model uses.

`make_stage` builds one stage on its own (the bottom-up-attention detector's res5 head: stride 1, dilation 2 in
every block).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all four kept as buffers.

    It computes exactly what an eval-mode `nn.BatchNorm2d` computes (`F.batch_norm` with `training=False`). Its
    state-dict keys are BatchNorm2d's, and a checkpoint saved from a BatchNorm2d (with `num_batches_tracked`) or from
    detectron2 / maskrcnn-benchmark (without it) loads into it. `eps=0` reproduces maskrcnn-benchmark's FrozenBN.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # A BatchNorm2d checkpoint carries a step counter that frozen statistics have no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            hidden_states, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def make_norm(norm: str, num_features: int, eps: float = 1e-5) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(num_features, eps=eps)
    if norm == "frozen":
        return FrozenBatchNorm2d(num_features, eps=eps)
    raise ValueError(f"norm must be 'batch' or 'frozen', got {norm!r}")


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). `stride_in_1x1` does not apply: both convs are 3x3."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm: str = "batch",
        norm_eps: float = 1e-5,
        stride_in_1x1: bool = False,
        bottleneck_channels: int | None = None,
    ):
        super().__init__()
        if groups != 1 or base_width != 64 or bottleneck_channels is not None:
            raise ValueError("block='basic' supports only groups=1, width_per_group=64 and no bottleneck_channels")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = make_norm(norm, planes, norm_eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = make_norm(norm, planes, norm_eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        identity = hidden_states if self.downsample is None else self.downsample(hidden_states)
        out = self.relu(self.bn1(self.conv1(hidden_states)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped, dilated) -> 1x1, output `planes * 4` channels.

    The inner width is torchvision's `int(planes * base_width / 64) * groups` unless `bottleneck_channels` gives it
    directly (detectron2 configs state it as `num_groups * width_per_group * 2**stage`). The stride sits in the 3x3
    (torchvision, "ResNet v1.5") or, with `stride_in_1x1`, in the first 1x1 (Caffe / MSRA / detectron2).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm: str = "batch",
        norm_eps: float = 1e-5,
        stride_in_1x1: bool = False,
        bottleneck_channels: int | None = None,
    ):
        super().__init__()
        width = bottleneck_channels if bottleneck_channels is not None else int(planes * (base_width / 64.0)) * groups
        if width < 1 or width % groups:
            raise ValueError(f"bottleneck width {width} must be a positive multiple of groups={groups}")
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, width, 1, stride=stride_1x1, bias=False)
        self.bn1 = make_norm(norm, width, norm_eps)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=stride_3x3, padding=dilation, dilation=dilation, groups=groups, bias=False
        )
        self.bn2 = make_norm(norm, width, norm_eps)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = make_norm(norm, planes * self.expansion, norm_eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        identity = hidden_states if self.downsample is None else self.downsample(hidden_states)
        out = self.relu(self.bn1(self.conv1(hidden_states)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _block_class(block: str) -> type[nn.Module]:
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
    return BLOCKS[block]


def make_stage(
    in_channels: int,
    planes: int,
    blocks: int,
    stride: int = 1,
    dilation: int = 1,
    first_block_dilation: int | None = None,
    *,
    block: str = "bottleneck",
    groups: int = 1,
    width_per_group: int = 64,
    bottleneck_channels: int | None = None,
    stride_in_1x1: bool = False,
    norm: str = "batch",
    norm_eps: float = 1e-5,
) -> nn.Sequential:
    """One ResNet stage: `blocks` blocks, the first with `stride` and a projection shortcut when needed.

    The first block uses `first_block_dilation` (default: `dilation`), the others `dilation`. torchvision's
    `replace_stride_with_dilation` is `stride=1, first_block_dilation=<previous dilation>,
    dilation=<previous dilation * stride>`; the bottom-up-attention res5 head is `stride=1, dilation=2,
    first_block_dilation=2`.
    """
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks}")
    block_class = _block_class(block)
    out_channels = planes * block_class.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), make_norm(norm, out_channels, norm_eps)
        )
    common = dict(
        groups=groups,
        base_width=width_per_group,
        norm=norm,
        norm_eps=norm_eps,
        stride_in_1x1=stride_in_1x1,
        bottleneck_channels=bottleneck_channels,
    )
    first_dilation = dilation if first_block_dilation is None else first_block_dilation
    layers = [block_class(in_channels, planes, stride, downsample, dilation=first_dilation, **common)]
    layers += [block_class(out_channels, planes, dilation=dilation, **common) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """A ResNet trunk (no classifier) whose `forward` returns `{"layer<i>": feature map}` for `out_stages`.

    Stages after the last requested one are not built (a C4 detector builds `layer1..layer3` only).
    `base_channels` are the planes of `layer1`, doubled per stage; `bottleneck_channels`, if given, is the inner width
    of `layer1`'s bottlenecks, doubled per stage (overrides `groups * width_per_group` arithmetic).
    `frozen_stages`: -1 freezes nothing, 0 the stem, i the stem and `layer1..layer<i>` (no gradients, and their
    batch norms stay in eval mode under `.train()`).
    """

    def __init__(
        self,
        block: str = "bottleneck",
        layers: Sequence[int] = (3, 4, 6, 3),
        *,
        in_channels: int = 3,
        stem_channels: int = 64,
        base_channels: int = 64,
        groups: int = 1,
        width_per_group: int = 64,
        bottleneck_channels: int | None = None,
        stride_in_1x1: bool = False,
        caffe_stem_pool: bool = False,
        norm: str = "batch",
        norm_eps: float = 1e-5,
        frozen_stages: int = -1,
        replace_stride_with_dilation: Sequence[bool] = (False, False, False),
        out_stages: Sequence[str] = ("layer4",),
    ):
        super().__init__()
        layers = tuple(layers)
        if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {layers}")
        replace_stride_with_dilation = tuple(replace_stride_with_dilation)
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(
                f"replace_stride_with_dilation must have 3 entries (layer2..layer4), got {replace_stride_with_dilation}"
            )
        out_stages = tuple(out_stages)
        if not out_stages or any(name not in STAGE_NAMES for name in out_stages):
            raise ValueError(f"out_stages must be a non-empty subset of {STAGE_NAMES}, got {out_stages}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages}")
        block_class = _block_class(block)
        self.out_stages = tuple(name for name in STAGE_NAMES if name in out_stages)
        self.frozen_stages = frozen_stages
        num_built = max(STAGE_NAMES.index(name) for name in self.out_stages) + 1

        self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, stem_channels, norm_eps)
        self.relu = nn.ReLU(inplace=True)
        # Caffe pools with ceil and no padding; torchvision pads by 1 and floors. They differ on odd sizes.
        self.maxpool = (
            nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True) if caffe_stem_pool else nn.MaxPool2d(3, 2, padding=1)
        )

        dilation = 1
        in_planes = stem_channels
        self.stage_channels = {}
        for index in range(num_built):
            stride = 1 if index == 0 else 2
            previous_dilation = dilation
            if index > 0 and replace_stride_with_dilation[index - 1]:
                dilation *= stride
                stride = 1
            planes = base_channels * 2**index
            stage = make_stage(
                in_planes,
                planes,
                layers[index],
                stride=stride,
                dilation=dilation,
                first_block_dilation=previous_dilation,
                block=block,
                groups=groups,
                width_per_group=width_per_group,
                bottleneck_channels=None if bottleneck_channels is None else bottleneck_channels * 2**index,
                stride_in_1x1=stride_in_1x1,
                norm=norm,
                norm_eps=norm_eps,
            )
            self.add_module(STAGE_NAMES[index], stage)
            in_planes = planes * block_class.expansion
            self.stage_channels[STAGE_NAMES[index]] = in_planes
        self.out_channels = {name: self.stage_channels[name] for name in self.out_stages}

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        self._freeze_stages()

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules = [self.conv1, self.bn1]
        for name in STAGE_NAMES[: self.frozen_stages]:
            if hasattr(self, name):
                modules.append(getattr(self, name))
        return modules

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
        return self

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (batch, channels, height, width), got {tuple(pixel_values.shape)}")
        hidden_states = self.maxpool(self.relu(self.bn1(self.conv1(pixel_values))))
        outputs = {}
        for name in STAGE_NAMES:
            if not hasattr(self, name):
                break
            hidden_states = getattr(self, name)(hidden_states)
            if name in self.out_stages:
                outputs[name] = hidden_states
        return outputs


__all__ = ["BasicBlock", "Bottleneck", "FrozenBatchNorm2d", "ResNet", "STAGE_NAMES", "make_norm", "make_stage"]
