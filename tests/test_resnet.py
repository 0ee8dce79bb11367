"""The shared ResNet (hf_vlp.layers.resnet): torchvision's names, sizes and dilation semantics, Caffe switches.

Compared with torchvision when it imports; otherwise against facts about torchvision's models stated by hand
(parameter counts of resnet18/50 and resnext50_32x4d without their classifier, key names) and against functional
re-computations.
"""

import importlib.util

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hf_vlp.layers.resnet import FrozenBatchNorm2d, ResNet, make_stage

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def count(module):
    return sum(p.numel() for p in module.parameters())


# torchvision's totals minus the fc layer (512*1000+1000 and 2048*1000+1000).
@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(block="basic", layers=(2, 2, 2, 2)), 11_689_512 - 513_000),
        (dict(block="bottleneck", layers=(3, 4, 6, 3)), 25_557_032 - 2_049_000),
        (dict(block="bottleneck", layers=(3, 4, 6, 3), groups=32, width_per_group=4), 25_028_904 - 2_049_000),
    ],
)
def test_parameter_counts_match_torchvision(kwargs, expected):
    model = ResNet(out_stages=("layer4",), **kwargs)
    assert count(model) == expected


def test_key_names_are_torchvision_names():
    keys = set(ResNet("bottleneck", (3, 4, 6, 3)).state_dict())
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "layer1.0.conv3.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_mean",
        "layer4.2.bn3.bias",
    ]:
        assert key in keys
    assert not any(key.startswith("fc.") for key in keys)
    basic = set(ResNet("basic", (2, 2, 2, 2)).state_dict())
    assert "layer1.0.downsample.0.weight" not in basic  # 64 -> 64, stride 1: identity shortcut
    assert "layer2.0.downsample.0.weight" in basic and "layer2.0.conv3.weight" not in basic


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not importable here")
def test_equals_torchvision_forward():
    import torchvision

    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    model = ResNet("bottleneck", (3, 4, 6, 3), replace_stride_with_dilation=(False, True, True)).eval()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    model.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference.layer4(
            reference.layer3(
                reference.layer2(reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))
            )
        )
        assert torch.allclose(model(x)["layer4"], expected, atol=1e-5)


def test_out_stages_shapes_and_unbuilt_stages():
    model = ResNet("bottleneck", (3, 4, 6, 3), out_stages=("layer1", "layer3"))
    assert not hasattr(model, "layer4")
    out = model(torch.randn(2, 3, 64, 96))
    assert list(out) == ["layer1", "layer3"]
    assert out["layer1"].shape == (2, 256, 16, 24)
    assert out["layer3"].shape == (2, 1024, 4, 6)
    assert model.out_channels == {"layer1": 256, "layer3": 1024}


def test_dilation_follows_torchvision_semantics():
    model = ResNet("bottleneck", (3, 4, 6, 3), replace_stride_with_dilation=(False, True, True))
    # layer3: stride replaced by dilation 2, but its first block keeps the previous dilation (1).
    assert model.layer3[0].conv2.dilation == (1, 1) and model.layer3[0].conv2.stride == (1, 1)
    assert all(block.conv2.dilation == (2, 2) for block in model.layer3[1:])
    assert model.layer3[0].downsample[0].stride == (1, 1)
    # layer4: first block at the previous dilation (2), the others at 4.
    assert model.layer4[0].conv2.dilation == (2, 2)
    assert all(block.conv2.dilation == (4, 4) and block.conv2.padding == (4, 4) for block in model.layer4[1:])
    assert model(torch.randn(1, 3, 64, 64))["layer4"].shape == (1, 2048, 8, 8)


def test_stride_in_1x1_moves_the_stride():
    caffe = ResNet("bottleneck", (1, 1, 1, 1), stride_in_1x1=True)
    torchvision_like = ResNet("bottleneck", (1, 1, 1, 1))
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.stride == (1, 1)
    assert torchvision_like.layer2[0].conv1.stride == (1, 1) and torchvision_like.layer2[0].conv2.stride == (2, 2)


def test_caffe_stem_pool_uses_ceil_and_no_padding():
    x = torch.randn(1, 3, 66, 66)  # conv1 -> 33x33
    caffe = ResNet("basic", (1, 1, 1, 1), caffe_stem_pool=True, out_stages=("layer1",)).eval()
    plain = ResNet("basic", (1, 1, 1, 1), out_stages=("layer1",)).eval()
    assert caffe(x)["layer1"].shape[-1] == 16  # ceil((33 - 3) / 2) + 1
    assert plain(x)["layer1"].shape[-1] == 17  # floor((33 + 2 - 3) / 2) + 1
    stem = caffe.relu(caffe.bn1(caffe.conv1(x)))
    assert torch.equal(caffe.maxpool(stem), F.max_pool2d(stem, 3, 2, 0, ceil_mode=True))


def test_bottleneck_equals_functional_computation():
    torch.manual_seed(0)
    stage = make_stage(8, 4, 1, stride=2, stride_in_1x1=True, groups=2, bottleneck_channels=6, norm="frozen").eval()
    for module in stage.modules():
        if isinstance(module, FrozenBatchNorm2d):
            for name in ("weight", "bias", "running_mean"):
                getattr(module, name).normal_()
            module.running_var.uniform_(0.5, 2)
    block = stage[0]
    x = torch.randn(2, 8, 9, 9)

    def bn(m, h):
        return (h - m.running_mean[:, None, None]) / torch.sqrt(m.running_var[:, None, None] + 1e-5) * m.weight[
            :, None, None
        ] + m.bias[:, None, None]

    h = F.relu(bn(block.bn1, F.conv2d(x, block.conv1.weight, stride=2)))
    h = F.relu(bn(block.bn2, F.conv2d(h, block.conv2.weight, padding=1, groups=2)))
    h = bn(block.bn3, F.conv2d(h, block.conv3.weight))
    shortcut = bn(block.downsample[1], F.conv2d(x, block.downsample[0].weight, stride=2))
    assert torch.allclose(stage(x), F.relu(h + shortcut), atol=1e-5)


def test_make_stage_res5_head_dilates_every_block():
    stage = make_stage(64, 32, 3, stride=1, dilation=2, stride_in_1x1=True)
    assert [b.conv2.dilation for b in stage] == [(2, 2)] * 3
    assert [b.conv2.padding for b in stage] == [(2, 2)] * 3
    assert stage[0].downsample[0].stride == (1, 1)
    assert stage(torch.randn(1, 64, 14, 14)).shape == (1, 128, 14, 14)


def test_frozen_batch_norm_equals_eval_batch_norm_and_loads_its_checkpoints():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5)
    bn.train()
    bn(torch.randn(4, 5, 3, 3) * 3 + 1)  # move the running statistics
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    bn.eval()
    frozen = FrozenBatchNorm2d(5)
    frozen.load_state_dict(bn.state_dict())  # with num_batches_tracked
    x = torch.randn(2, 5, 4, 4)
    assert torch.equal(frozen(x), bn(x))
    without = {k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"}
    FrozenBatchNorm2d(5).load_state_dict(without)  # detectron2 layout
    assert list(frozen.parameters()) == []


def test_frozen_norm_resnet_loads_a_batch_norm_resnet():
    source = ResNet("basic", (1, 1, 1, 1), out_stages=("layer2",)).eval()
    frozen = ResNet("basic", (1, 1, 1, 1), norm="frozen", out_stages=("layer2",))
    frozen.load_state_dict(source.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(frozen(x)["layer2"], source(x)["layer2"], atol=1e-6)


def test_frozen_stages_stop_gradients_and_keep_eval_mode():
    model = ResNet("basic", (1, 1, 1, 1), frozen_stages=1, out_stages=("layer2",)).train()
    assert not any(p.requires_grad for p in model.conv1.parameters())
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert not model.bn1.training and not model.layer1[0].bn1.training and model.layer2[0].bn1.training


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(block="dense"), "block"),
        (dict(layers=(1, 1, 1)), "layers"),
        (dict(norm="group"), "norm"),
        (dict(out_stages=("layer5",)), "out_stages"),
        (dict(replace_stride_with_dilation=(True,)), "replace_stride_with_dilation"),
        (dict(block="basic", groups=2), "basic"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNet(**kwargs)
