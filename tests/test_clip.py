"""CLIP: parity with OpenAI's original code (ViT and ModifiedResNet, TorchScript and state-dict files), the
distributed-exact contrastive loss wired into the models, the ResNet tower, processors, Auto classes, LoRA and input
checks. (2-process DDP exactness of the loss itself: tests/test_contrastive_ddp.py.)"""

import gzip
import json

import pytest
import torch
from conftest import fixture_dir
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoProcessor, CLIPConfig, CLIPModel

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.conversion import clip as clip_conversion
from hf_vlp.conversion import common
from hf_vlp.modeling.clip import (
    LORA_TARGET_MODULES,
    RESNET_LORA_TARGET_MODULES,
    CLIPForPreTraining,
    CLIPOriginalProcessor,
    CLIPResNetConfig,
    CLIPResNetModel,
    build_clip_processor,
)
from hf_vlp.modeling.clip.processing_clip import default_bpe_path


def text_config(**overrides):
    sizes = dict(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=8,
        eos_token_id=39,
        bos_token_id=38,
        pad_token_id=0,
    )
    return {**sizes, **overrides}


def tiny_vit_clip():
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )
    return CLIPConfig(text_config=text_config(), vision_config=vision, projection_dim=8)


def tiny_resnet_clip():
    vision = dict(layers=[1, 1, 1, 1], width=4, image_size=32)
    return CLIPResNetConfig(text_config=text_config(), vision_config=vision, projection_dim=8)


def tiny_batch(image_size, batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 38, (batch, 8), generator=generator)
    input_ids[:, 0] = 38
    lengths = torch.tensor([8, 5, 6, 3][:batch])
    input_ids[torch.arange(batch), lengths - 1] = 39
    input_ids[torch.arange(8)[None] >= lengths[:, None]] = 0
    return dict(input_ids=input_ids, pixel_values=torch.randn(batch, 3, image_size, image_size, generator=generator))


# ------------------------------------------------------------------------------------------------------------------
# parity with the original implementation
# ------------------------------------------------------------------------------------------------------------------


def test_fixture_parity_every_output_across_checkpoints():
    folder = fixture_dir("clip")
    reference = load_file(folder / "outputs.safetensors")
    checkpoints = sorted(folder.glob("*.pt"))
    assert checkpoints, f"no original checkpoints in {folder}"
    verified = {}
    for checkpoint in checkpoints:
        model = clip_conversion.convert(checkpoint)
        lines = []
        assert common.verify(clip_conversion, model, folder, atol=1e-4, print_fn=lines.append), "\n".join(lines)
        verified.update({line.split(":")[0]: line for line in lines if line.endswith(" ok")})
    missing = sorted(set(reference) - set(verified))
    assert not missing, f"outputs no checkpoint verified: {missing}"


def test_torchscript_archive_and_state_dict_give_identical_models():
    folder = fixture_dir("clip")
    by_variant = {}
    for checkpoint in sorted(folder.glob("*.pt")):
        model = clip_conversion.convert(checkpoint)
        by_variant.setdefault(type(model).__name__, []).append(model.state_dict())
    for states in by_variant.values():
        for name, value in states[0].items():
            for other in states[1:]:
                assert torch.equal(other[name], value), name


def test_converter_accepts_wrapped_prefixed_state_dict(tmp_path):
    folder = fixture_dir("clip")
    checkpoint = next(p for p in sorted(folder.glob("*.pt")) if not clip_conversion.is_torchscript_archive(p))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({"state_dict": {f"module.{k}": v.half() for k, v in state.items()}}, tmp_path / "wrapped.pt")
    reference = clip_conversion.convert(checkpoint).state_dict()
    for name, value in clip_conversion.convert(tmp_path / "wrapped.pt").state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, reference[name].half().float()), name


def test_converter_rejects_other_architectures_and_unknown_keys(tmp_path):
    torch.save({"bert.embeddings.word_embeddings.weight": torch.zeros(4, 4)}, tmp_path / "bert.pt")
    with pytest.raises(common.ConversionError, match="not an OpenAI CLIP checkpoint"):
        clip_conversion.convert(tmp_path / "bert.pt")
    folder = fixture_dir("clip")
    checkpoint = next(p for p in sorted(folder.glob("*.pt")) if not clip_conversion.is_torchscript_archive(p))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({**state, "visual.surprise": torch.zeros(1)}, tmp_path / "unknown.pt")
    with pytest.raises(common.ConversionError, match="visual.surprise"):
        clip_conversion.convert(tmp_path / "unknown.pt")


def test_converted_text_pooling_needs_eos_from_vocab_size():
    """transformers pools at the first eos_token_id; the converter sets it to vocab_size - 1 (EOT is the largest id)."""
    folder = fixture_dir("clip")
    model = clip_conversion.convert(sorted(folder.glob("*.pt"))[0])
    text = model.config.text_config
    assert text.eos_token_id == text.vocab_size - 1 and text.bos_token_id == text.vocab_size - 2


# ------------------------------------------------------------------------------------------------------------------
# contrastive training
# ------------------------------------------------------------------------------------------------------------------


def test_loss_equals_transformers_clip_loss_in_one_process():
    torch.manual_seed(0)
    model = CLIPForPreTraining(tiny_vit_clip()).eval()
    batch = tiny_batch(16)
    ours = model(**batch).loss
    theirs = CLIPModel.forward(model, **batch, return_loss=True).loss
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("variant", ["vit", "resnet"])
def test_contrastive_loss_falls(variant):
    torch.manual_seed(0)
    model = CLIPForPreTraining(tiny_vit_clip()) if variant == "vit" else CLIPResNetModel(tiny_resnet_clip())
    batch = tiny_batch(model.config.vision_config.image_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    model.train()
    for _ in range(12):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_resnet_tower_shapes_and_hidden_states():
    model = CLIPResNetModel(tiny_resnet_clip()).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    out = model.vision_model(pixel_values, output_hidden_states=True)
    assert out.pooler_output.shape == (2, 8)
    assert [tuple(h.shape[1:]) for h in out.hidden_states] == [
        (4, 8, 8),
        (16, 8, 8),
        (32, 4, 4),
        (64, 2, 2),
        (128, 1, 1),
    ]
    with pytest.raises(ValueError, match="attention pool was trained"):
        model.vision_model(torch.randn(1, 3, 64, 64))


def test_resnet_gradient_checkpointing_gives_same_gradients():
    """Train mode in both runs: BatchNorm normalises with batch statistics, so recomputation gives the same values."""
    torch.manual_seed(0)
    model = CLIPResNetModel(tiny_resnet_clip()).train()
    batch = tiny_batch(32)
    model(**batch).loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(**batch).loss.backward()
    for name, grad in expected.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, msg=name)


# ------------------------------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["vit", "resnet"])
def test_text_longer_than_context_is_a_clear_error(variant):
    model = CLIPForPreTraining(tiny_vit_clip()) if variant == "vit" else CLIPResNetModel(tiny_resnet_clip())
    batch = tiny_batch(model.config.vision_config.image_size)
    batch["input_ids"] = torch.cat([batch["input_ids"], batch["input_ids"]], dim=1)
    with pytest.raises(ValueError, match="input_ids has 16 tokens but the CLIP text encoder's context is 8"):
        model(**batch)
    with pytest.raises(ValueError, match="context is 8"):
        model.get_text_features(input_ids=batch["input_ids"])


def _tiny_bpe(path):
    """A BPE file in the original format: a header line, then merges."""
    merges = ["t h", "th e</w>", "c a", "ca t</w>", "d o", "do g</w>"]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return path


def test_processor_refuses_overlong_text_unless_truncating(tmp_path):
    processor = build_clip_processor(_tiny_bpe(tmp_path / "bpe.txt.gz"), image_size=16, context_length=6)
    with pytest.raises(ValueError, match="text\\[1\\] is .* tokens long .* context is 6"):
        processor(text=["the cat", "the cat the dog the cat"])
    ids = processor(text=["the cat the dog the cat"], truncation=True)["input_ids"]
    assert ids.shape == (1, 6) and ids[0, -1].item() == processor.tokenizer.eos_token_id


def test_processor_save_load_and_auto_processor(tmp_path):
    processor = build_clip_processor(_tiny_bpe(tmp_path / "bpe.txt.gz"), image_size=16, context_length=6)
    processor.save_pretrained(tmp_path / "saved")
    for loaded in (
        CLIPOriginalProcessor.from_pretrained(tmp_path / "saved"),
        AutoProcessor.from_pretrained(tmp_path / "saved"),
    ):
        assert type(loaded) is CLIPOriginalProcessor
        assert loaded.tokenizer.model_max_length == 6
        text = ["the &amp;amp; cat", "a dog"]
        torch.testing.assert_close(loaded(text=text)["input_ids"], processor(text=text)["input_ids"])
    # html entities are unescaped twice, as in the original simple_tokenizer
    assert (
        processor(text=["the &amp;amp; cat"])["input_ids"].tolist()
        == processor(text=["the & cat"])["input_ids"].tolist()
    )


def test_processor_reproduces_original_tokens_and_pixels():
    folder = fixture_dir("clip")
    try:
        bpe = default_bpe_path()
    except ValueError as error:
        pytest.skip(str(error))
    from PIL import Image

    inputs = load_file(folder / "inputs.safetensors")
    with safe_open(folder / "inputs.safetensors", "pt") as handle:
        captions = json.loads(handle.metadata()["captions"])
    reference = inputs["caption_input_ids"].long()
    processor = build_clip_processor(bpe, context_length=reference.shape[1])
    ids = processor(text=captions)["input_ids"]
    real = reference != 0  # the original pads with 0, transformers with <|endoftext|>
    assert torch.equal(ids[real], reference[real])
    raw = [inputs[k].numpy() for k in sorted(k for k in inputs if k.startswith("raw_image_"))]
    images = [Image.fromarray(a) for a in raw]
    for prefix in ("vit", "rn"):
        expected = inputs[f"{prefix}.pixel_values"]
        processor = build_clip_processor(bpe, image_size=expected.shape[-1])
        torch.testing.assert_close(processor(images=images)["pixel_values"], expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------------------------
# Auto classes, save / load, PEFT
# ------------------------------------------------------------------------------------------------------------------


def test_auto_classes_resolve_and_round_trip(tmp_path):
    model = CLIPResNetModel(tiny_resnet_clip()).eval()
    model.save_pretrained(tmp_path / "rn")
    assert type(AutoConfig.from_pretrained(tmp_path / "rn")) is CLIPResNetConfig
    loaded = AutoModel.from_pretrained(tmp_path / "rn").eval()
    assert type(loaded) is CLIPResNetModel
    batch = tiny_batch(32)
    torch.testing.assert_close(loaded(**batch).logits_per_image, model(**batch).logits_per_image)
    assert type(AutoModelForPreTraining.from_config(tiny_vit_clip())) is CLIPForPreTraining
    vit = CLIPForPreTraining(tiny_vit_clip())
    vit.save_pretrained(tmp_path / "vit")
    assert type(CLIPModel.from_pretrained(tmp_path / "vit")) is CLIPModel  # transformers loads the same weights


@pytest.mark.parametrize("variant", ["vit", "resnet"])
def test_lora_preset_trains_with_gradient_checkpointing_and_reloads(tmp_path, variant):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    if variant == "vit":
        config, targets, cls = tiny_vit_clip(), LORA_TARGET_MODULES, CLIPForPreTraining
    else:
        config, targets, cls = tiny_resnet_clip(), RESNET_LORA_TARGET_MODULES, CLIPResNetModel
        config.vision_config.freeze_batch_norm = True  # adapters do not carry BatchNorm running statistics
    base = cls(config)
    base.activation_checkpointing_enable()
    base.enable_input_require_grads()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert any("text_model" in n for n in adapted) and any("vision_model" in n for n in adapted)
    model.train()
    batch = tiny_batch(config.vision_config.image_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "vision_model" in n)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    model.eval()
    expected = model(**batch).logits_per_image
    model.save_pretrained(tmp_path / "adapter")
    torch.manual_seed(0)
    reloaded = PeftModel.from_pretrained(cls(config), tmp_path / "adapter").eval()
    torch.testing.assert_close(reloaded(**batch).logits_per_image, expected)
