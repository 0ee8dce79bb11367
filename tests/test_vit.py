"""ViT: parity with Google's original Flax code (`.npz` releases, with and without the representation layer), both
sub-module spellings, refused variants, classification fine-tuning, Auto classes, image processor and LoRA."""

import numpy as np
import pytest
import torch
from conftest import fixture_dir
from safetensors.torch import load_file
from transformers import (
    AutoModelForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    ViTModel,
)

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.conversion import common
from hf_vlp.conversion import vit as vit_conversion
from hf_vlp.modeling.vit import (
    LORA_MODULES_TO_SAVE,
    LORA_TARGET_MODULES,
    ViTForImageClassificationWithRepresentation,
    ViTRepresentationConfig,
)


def tiny_sizes(**overrides):
    sizes = dict(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=8,
        num_labels=3,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    )
    return {**sizes, **overrides}


def _npz_files(folder):
    files = sorted(folder.glob("*.npz"))
    assert files, f"no .npz checkpoints in {folder}"
    return files


# ------------------------------------------------------------------------------------------------------------------
# parity with the original implementation
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "backbone"])
def test_fixture_parity_every_output_across_checkpoints(task):
    folder = fixture_dir("vit")
    reference = load_file(folder / "outputs.safetensors")
    verified = {}
    for checkpoint in _npz_files(folder):
        model = vit_conversion.convert(checkpoint, task=task)
        lines = []
        assert common.verify(vit_conversion, model, folder, atol=1e-4, print_fn=lines.append), "\n".join(lines)
        verified.update({line.split(":")[0]: line for line in lines if line.endswith(" ok")})
    expected = {n for n in reference if task == "classification" or not n.endswith(".logits")}
    missing = sorted(expected - set(verified))
    assert not missing, f"outputs no checkpoint verified: {missing}"


def test_representation_layer_decides_the_class():
    folder = fixture_dir("vit")
    for checkpoint in _npz_files(folder):
        with np.load(checkpoint) as archive:
            has_pre_logits = "pre_logits/kernel" in archive.files
        model = vit_conversion.convert(checkpoint)
        expected = ViTForImageClassificationWithRepresentation if has_pre_logits else ViTForImageClassification
        assert type(model) is expected
        assert model.config.hidden_act == "gelu_pytorch_tanh" and model.config.layer_norm_eps == 1e-6


def _rewrite_npz(source, target, rename=lambda k: k, drop=()):
    with np.load(source) as archive:
        arrays = {rename(k): archive[k] for k in archive.files if not any(k.startswith(d) for d in drop)}
    np.savez(target, **arrays)
    return target


def test_linen_spelling_converts_to_the_same_model(tmp_path):
    """Today's Linen code names block modules MultiHeadDotProductAttention_0 / LayerNorm_1 / MlpBlock_0."""
    folder = fixture_dir("vit")
    source = _npz_files(folder)[0]
    linen = {
        "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
        "LayerNorm_2": "LayerNorm_1",
        "MlpBlock_3": "MlpBlock_0",
    }

    def rename(key):
        for old, new in linen.items():
            key = key.replace(f"/{old}/", f"/{new}/")
        return key

    converted = vit_conversion.convert(_rewrite_npz(source, tmp_path / "linen.npz", rename)).state_dict()
    for name, value in vit_conversion.convert(source).state_dict().items():
        assert torch.equal(converted[name], value), name


def test_unsupported_variants_and_other_files_are_clear_errors(tmp_path):
    folder = fixture_dir("vit")
    source = _npz_files(folder)[0]
    with pytest.raises(common.ConversionError, match="classifier='gap'"):
        vit_conversion.convert(_rewrite_npz(source, tmp_path / "gap.npz", drop=("cls",)))
    with pytest.raises(common.ConversionError, match="hybrid"):
        vit_conversion.convert(
            _rewrite_npz(
                source, tmp_path / "hybrid.npz", rename=lambda k: k.replace("embedding/bias", "conv_root/kernel")
            )
        )
    np.savez(tmp_path / "other.npz", **{"text/embedding": np.zeros((2, 2), np.float32)})
    with pytest.raises(common.ConversionError, match="not a ViT checkpoint"):
        vit_conversion.convert(tmp_path / "other.npz")
    torch.save({"a": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(common.ConversionError, match="npz"):
        vit_conversion.convert(tmp_path / "model.pt")
    np.savez(
        tmp_path / "extra.npz", **{**dict(np.load(source)), "Transformer/surprise/kernel": np.zeros(2, np.float32)}
    )
    with pytest.raises(common.ConversionError, match="surprise"):
        vit_conversion.convert(tmp_path / "extra.npz")


def test_image_processor_reproduces_original_scaling():
    folder = fixture_dir("vit")
    from PIL import Image

    inputs = load_file(folder / "inputs.safetensors")
    expected = inputs["pixel_values"]
    processor = ViTImageProcessorPil(size={"height": expected.shape[-2], "width": expected.shape[-1]})
    images = [Image.fromarray(image.numpy()) for image in inputs["raw_images"]]
    torch.testing.assert_close(
        processor(images=images, return_tensors="pt")["pixel_values"], expected, atol=1e-6, rtol=0
    )


# ------------------------------------------------------------------------------------------------------------------
# fine-tuning, Auto classes, PEFT
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("representation", [False, True])
def test_classification_fine_tuning_loss_falls(representation):
    torch.manual_seed(0)
    if representation:
        model = ViTForImageClassificationWithRepresentation(ViTRepresentationConfig(**tiny_sizes(pooler_output_size=8)))
    else:
        model = ViTForImageClassification(ViTConfig(**tiny_sizes()))
    pixel_values, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(pixel_values=pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_representation_model_auto_class_round_trip(tmp_path):
    model = ViTForImageClassificationWithRepresentation(
        ViTRepresentationConfig(**tiny_sizes(pooler_output_size=8))
    ).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is ViTForImageClassificationWithRepresentation
    pixel_values = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits)
    # a backbone converted from a pre_logits file is a plain ViTModel with a tanh pooler
    backbone = ViTModel(ViTConfig(**tiny_sizes(pooler_output_size=8, pooler_act="tanh")))
    assert backbone.pooler.dense.out_features == 8


def test_lora_preset_trains_with_gradient_checkpointing_and_reloads(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    config = ViTConfig(**tiny_sizes())
    base = ViTForImageClassification(config)
    base.activation_checkpointing_enable()
    base.enable_input_require_grads()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGET_MODULES, modules_to_save=LORA_MODULES_TO_SAVE)
    model = get_peft_model(base, lora).train()
    pixel_values, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(pixel_values=pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    model.eval()
    expected = model(pixel_values=pixel_values).logits
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    reloaded = PeftModel.from_pretrained(ViTForImageClassification(config), tmp_path).eval()
    torch.testing.assert_close(reloaded(pixel_values=pixel_values).logits, expected)
