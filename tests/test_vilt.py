"""ViLT: parity with the original Lightning checkpoints (pretraining, VQA, NLVR2), safe checkpoint loading, the
pretraining objectives (MLM with an untied decoder, ITM, word-patch alignment), trainable retrieval, processor, Auto
classes, LoRA and converter errors."""

import os
import pickle

import pytest
import torch
from conftest import fixture_dir
from safetensors.torch import load_file
from transformers import (
    AutoModelForPreTraining,
    AutoProcessor,
    BertTokenizer,
    ViltConfig,
    ViltImageProcessorPil,
    ViltProcessor,
)

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.conversion import common
from hf_vlp.conversion import vilt as vilt_conversion
from hf_vlp.modeling.vilt import LORA_TARGET_MODULES, ViltForImageTextRetrieval, ViltForPreTraining


def tiny_config(**overrides):
    sizes = dict(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=8,
        image_size=32,
        patch_size=16,
        layer_norm_eps=1e-6,
        ot_iterations=5,
    )
    return ViltConfig(**{**sizes, **overrides})


def tiny_inputs(batch=4, text=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 40, (batch, text), generator=generator)
    input_ids[:, 0] = 1  # [CLS]
    attention_mask = torch.ones(batch, text, dtype=torch.long)
    attention_mask[1:, -2:] = 0
    input_ids[attention_mask == 0] = 0
    input_ids[0, -1] = input_ids[1:, -3] = 2  # [SEP]
    pixel_mask = torch.ones(batch, 32, 32, dtype=torch.long)
    pixel_mask[1, :, 16:] = 0  # a narrower image padded on the right
    pixel_values = torch.randn(batch, 3, 32, 32, generator=generator) * pixel_mask[:, None]
    return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, pixel_mask=pixel_mask)


def _checkpoints(folder):
    checkpoints = sorted(folder.glob("*.ckpt"))
    assert checkpoints, f"no Lightning checkpoints in {folder}"
    return checkpoints


def _pretraining_checkpoint(folder):
    for checkpoint in _checkpoints(folder):
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        if "itm_score.fc.weight" in state:
            return checkpoint
    pytest.skip(f"no pretraining (mlm/itm) checkpoint in {folder}")


# ------------------------------------------------------------------------------------------------------------------
# parity with the original implementation
# ------------------------------------------------------------------------------------------------------------------


def test_fixture_parity_every_output_across_checkpoints():
    folder = fixture_dir("vilt")
    reference = load_file(folder / "outputs.safetensors")
    verified = {}
    for checkpoint in _checkpoints(folder):
        model = vilt_conversion.convert(checkpoint)
        lines = []
        assert common.verify(vilt_conversion, model, folder, atol=1e-4, print_fn=lines.append), "\n".join(lines)
        verified.update({line.split(":")[0]: line for line in lines if line.endswith(" ok")})
    missing = sorted(set(reference) - set(verified))
    assert not missing, f"outputs no checkpoint verified: {missing}"


def test_converted_mlm_decoder_stays_untied_through_save_and_load(tmp_path):
    folder = fixture_dir("vilt")
    checkpoint = _pretraining_checkpoint(folder)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model = vilt_conversion.convert(checkpoint)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path)
    assert type(loaded) is ViltForPreTraining
    for candidate in (model, loaded):
        embeddings = candidate.vilt.embeddings.text_embeddings.word_embeddings.weight
        assert torch.equal(embeddings, state["text_embeddings.word_embeddings.weight"])
        assert torch.equal(candidate.mlm_score.decoder.weight, state["mlm_score.decoder.weight"])


class ForeignConfig(dict):
    """Stands for sacred's ReadOnlyDict in the original checkpoints' hyper_parameters."""

    def __reduce__(self):
        return ForeignConfig, (dict(self),)


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_lightning_checkpoint_with_foreign_objects_loads_without_running_them(tmp_path):
    folder = fixture_dir("vilt")
    checkpoint = _checkpoints(folder)[0]
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["config"] = ForeignConfig(ckpt["hyper_parameters"]["config"])
    marker = tmp_path / "code_ran"
    ckpt["callbacks"] = {"payload": RunsCode(str(marker))}
    torch.save(ckpt, tmp_path / "foreign.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "foreign.ckpt", weights_only=True)
    converted = vilt_conversion.convert(tmp_path / "foreign.ckpt")
    assert not marker.exists()
    reference = vilt_conversion.convert(checkpoint)
    for name, value in reference.state_dict().items():
        assert torch.equal(converted.state_dict()[name], value), name


def test_converter_errors(tmp_path):
    folder = fixture_dir("vilt")
    checkpoint = _checkpoints(folder)[0]
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(4, 3, 2, 2)}}, tmp_path / "clip.ckpt")
    with pytest.raises(common.ConversionError, match="not a ViLT checkpoint"):
        vilt_conversion.convert(tmp_path / "clip.ckpt")
    torch.save(
        {**ckpt, "state_dict": {**ckpt["state_dict"], "mpp_score.surprise": torch.zeros(1)}}, tmp_path / "u.ckpt"
    )
    with pytest.raises(common.ConversionError, match="mpp_score.surprise"):
        vilt_conversion.convert(tmp_path / "u.ckpt")
    torch.save({"state_dict": ckpt["state_dict"]}, tmp_path / "no_config.ckpt")
    with pytest.raises(common.ConversionError, match="num_heads"):
        vilt_conversion.convert(tmp_path / "no_config.ckpt")
    with pytest.raises(ValueError, match="task must be"):
        vilt_conversion.convert(checkpoint, task="captioning")


def test_retrieval_starts_from_the_itm_match_row():
    folder = fixture_dir("vilt")
    checkpoint = _pretraining_checkpoint(folder)
    pretraining = vilt_conversion.convert(checkpoint)
    retrieval = vilt_conversion.convert(checkpoint, task="retrieval")
    assert type(retrieval) is ViltForImageTextRetrieval
    inputs = tiny_inputs(batch=2, text=pretraining.config.max_position_embeddings)
    inputs["input_ids"] = inputs["input_ids"] % pretraining.config.vocab_size
    size = pretraining.config.image_size
    inputs["pixel_values"] = torch.randn(2, 3, size, size)
    inputs["pixel_mask"] = torch.ones(2, size, size, dtype=torch.long)
    torch.manual_seed(0)
    itm = pretraining(**inputs).itm_logits[:, 1]
    torch.manual_seed(0)
    torch.testing.assert_close(retrieval(**inputs).logits[:, 0], itm)


def test_irtr_fine_tuned_files_convert_to_the_retrieval_head(tmp_path):
    """The layout `vilt_irtr_{coco,f30k}.ckpt` have: the backbone, the ITM head trained alongside (weight 0.5) and
    `rank_output` (no MLM head: the irtr runs do not build it)."""
    import torch.nn.functional as F

    folder = fixture_dir("vilt")
    checkpoint = _pretraining_checkpoint(folder)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("mlm_score.")}
    hidden = state["itm_score.fc.weight"].shape[1]
    generator = torch.Generator().manual_seed(0)
    rank = {"rank_output.weight": torch.randn(1, hidden, generator=generator), "rank_output.bias": torch.randn(1)}
    torch.save({**ckpt, "state_dict": {**state, **rank}}, tmp_path / "vilt_irtr_f30k.ckpt")
    retrieval = vilt_conversion.convert(tmp_path / "vilt_irtr_f30k.ckpt")
    assert type(retrieval) is ViltForImageTextRetrieval
    assert torch.equal(retrieval.rank_output.weight, rank["rank_output.weight"])
    pretraining = vilt_conversion.convert(checkpoint)  # the same backbone, verified against the fixture
    inputs = tiny_inputs(batch=2, text=pretraining.config.max_position_embeddings)
    inputs["input_ids"] = inputs["input_ids"] % pretraining.config.vocab_size
    size = pretraining.config.image_size
    inputs["pixel_values"] = torch.randn(2, 3, size, size, generator=generator)
    inputs["pixel_mask"] = torch.ones(2, size, size, dtype=torch.long)
    with torch.no_grad():
        torch.manual_seed(0)
        pooled = pretraining.vilt(**{k: v for k, v in inputs.items() if k != "labels"}).pooler_output
        torch.manual_seed(0)
        scores = retrieval(**inputs).logits
    torch.testing.assert_close(scores, F.linear(pooled, rank["rank_output.weight"], rank["rank_output.bias"]))


# ------------------------------------------------------------------------------------------------------------------
# objectives
# ------------------------------------------------------------------------------------------------------------------


def _train(model, inputs, steps=12, lr=1e-2):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses, output = [], None
    model.train()
    for _ in range(steps):
        output = model(**inputs)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    return losses, output


@pytest.mark.parametrize("objective", ["mlm", "itm"])
def test_each_pretraining_objective_loss_falls(objective):
    torch.manual_seed(0)
    inputs = tiny_inputs()
    if objective == "mlm":
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, 2:4] = inputs["input_ids"][:, 2:4]
        inputs["input_ids"] = inputs["input_ids"].clone()
        inputs["input_ids"][:, 2:4] = 3  # [MASK]
        inputs["labels"] = labels
    else:
        inputs["itm_labels"] = torch.tensor([1, 0, 1, 0])
    losses, output = _train(ViltForPreTraining(tiny_config()), inputs, steps=20)
    assert losses[-1] < 0.5 * losses[0], losses
    if objective == "itm":
        assert output.itm_loss is not None and output.wpa_loss is not None and output.ot_distances.shape == (4,)
        assert output.mlm_loss is None
    else:
        assert output.mlm_logits.shape == (8, 40) and output.itm_loss is None


def test_word_patch_alignment_loss_is_signed_mean_of_distances():
    torch.manual_seed(0)
    model = ViltForPreTraining(tiny_config(wpa_weight=0.1)).eval()
    itm_labels = torch.tensor([1, 0, 0, 1])
    output = model(**tiny_inputs(), itm_labels=itm_labels)
    signs = itm_labels.float() * 2 - 1
    torch.testing.assert_close(output.wpa_loss, 0.1 * (signs * output.ot_distances).sum() / 4)
    assert (output.ot_distances > 0).all()
    without = ViltForPreTraining(tiny_config(wpa_weight=0.0)).eval()(**tiny_inputs(), itm_labels=itm_labels)
    assert without.wpa_loss is None


@pytest.mark.parametrize("grouped", [True, False])
def test_retrieval_trains(grouped):
    torch.manual_seed(0)
    inputs = tiny_inputs()
    inputs["labels"] = torch.tensor([1, 0, 1, 0]) if grouped else torch.tensor([1, 0, 0, 1])
    if grouped:
        inputs["group_size"] = 2
    losses, output = _train(ViltForImageTextRetrieval(tiny_config()), inputs)
    assert output.logits.shape == (4, 1)
    assert losses[-1] < 0.5 * losses[0], losses


def test_retrieval_rejects_bad_groups():
    model = ViltForImageTextRetrieval(tiny_config())
    with pytest.raises(ValueError, match="exactly one 1"):
        model(**tiny_inputs(), labels=torch.tensor([1, 1, 1, 0]), group_size=2)
    with pytest.raises(ValueError, match="multiple of group_size"):
        model(**tiny_inputs(), labels=torch.tensor([1, 0, 0, 0]), group_size=3)


def test_pretraining_rejects_mismatched_labels():
    model = ViltForPreTraining(tiny_config())
    with pytest.raises(ValueError, match="labels must have the shape of input_ids"):
        model(**tiny_inputs(), labels=torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="itm_labels must have shape"):
        model(**tiny_inputs(), itm_labels=torch.tensor([1, 0]))


# ------------------------------------------------------------------------------------------------------------------
# processor, Auto classes, PEFT
# ------------------------------------------------------------------------------------------------------------------


def _tiny_tokenizer():
    tokens = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "a", "red", "circle", "blue", "square", "is", "there", "?"]
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, model_max_length=8)


def test_processor_save_load_and_feeds_the_model(tmp_path):
    from PIL import Image

    processor = ViltProcessor(
        image_processor=ViltImageProcessorPil(size={"shortest_edge": 32}, size_divisor=16), tokenizer=_tiny_tokenizer()
    )
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is ViltProcessor
    images = [Image.new("RGB", (48, 32), "red"), Image.new("RGB", (32, 32), "blue")]
    texts = ["a red circle", "is there a blue square ?"]
    batch = loaded(images=images, text=texts, padding="max_length", max_length=8, return_tensors="pt")
    expected = processor(images=images, text=texts, padding="max_length", max_length=8, return_tensors="pt")
    for key in expected:
        torch.testing.assert_close(batch[key], expected[key])
    assert batch["pixel_mask"][1].sum() < batch["pixel_mask"][0].sum()  # the narrower image is padded
    model = ViltForPreTraining(tiny_config(vocab_size=len(loaded.tokenizer))).eval()
    assert model(**batch, itm_labels=torch.tensor([1, 0])).loss is not None


def test_image_processor_reproduces_original_resize_geometry():
    """pixelbert_transform sizes (shorter side, capped longer side, multiples of 32) for every fixture image; the raw
    pixels are not in the fixture, so only the geometry is compared."""
    import json

    from PIL import Image

    folder = fixture_dir("vilt")
    meta = json.loads((folder / "generation_meta.json").read_text())
    raw, transformed = meta["raw_image_sizes_wh"], meta["transformed_image_sizes_hw"]

    def flatten(sizes):
        return [tuple(s) for s in sizes] if isinstance(sizes[0][0], int) else [tuple(s) for pair in sizes for s in pair]

    pairs = [pair for key in raw for pair in zip(flatten(raw[key]), flatten(transformed[key]))]
    config = vilt_conversion.load_lightning_checkpoint(_checkpoints(folder)[0])["hyper_parameters"]["config"]
    processor = ViltImageProcessorPil(size={"shortest_edge": config["image_size"]}, size_divisor=32)
    for (width, height), expected in pairs:
        mask = processor(images=[Image.new("RGB", (width, height))], return_tensors="pt")["pixel_mask"][0]
        assert (int(mask[:, 0].sum()), int(mask[0].sum())) == expected, (width, height)


def test_auto_class_resolves_pretraining():
    assert type(AutoModelForPreTraining.from_config(tiny_config())) is ViltForPreTraining


def test_lora_preset_trains_with_gradient_checkpointing_and_reloads(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    config = tiny_config()
    base = ViltForImageTextRetrieval(config)
    base.activation_checkpointing_enable()
    base.enable_input_require_grads()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGET_MODULES, modules_to_save=["rank_output"])
    model = get_peft_model(base, lora)
    assert any("patch_embeddings.projection.lora_A" in n for n, _ in model.named_parameters())
    inputs = {**tiny_inputs(), "labels": torch.tensor([1, 0, 1, 0]), "group_size": 2}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    model.eval()
    eval_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "group_size")}
    torch.manual_seed(0)
    expected = model(**eval_inputs).logits
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    reloaded = PeftModel.from_pretrained(ViltForImageTextRetrieval(config), tmp_path).eval()
    torch.manual_seed(0)
    torch.testing.assert_close(reloaded(**eval_inputs).logits, expected)
