"""METER: parity with the original code (shared/fixtures/meter and its finetune_heads/), the processor's pixels, the
restricted Lightning loader, objectives, Auto classes, LoRA and METER's own input errors. The common model suite
(tests/test_common_models.py) covers the conventions every architecture shares.

Every size and file name is read from the fixture folders, so another fixture root passes unchanged."""

import io
import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hf_vlp
from hf_vlp.conversion import common
from hf_vlp.conversion import meter as conversion
from hf_vlp.conversion.common import ConversionError
from hf_vlp.recipes import build_config

ROOT = common.fixture_root() / "meter"


def _fixture_dirs():
    """Every folder under the METER fixture with a checkpoint and reference outputs (the main one, finetune_heads)."""
    if not ROOT.is_dir():
        return []
    folders = [ROOT, *sorted(p for p in ROOT.iterdir() if p.is_dir())]
    return [f for f in folders if (f / "outputs.safetensors").is_file() and list(f.glob("*.ckpt"))]


FIXTURES = _fixture_dirs()
needs_fixture = pytest.mark.skipif(not FIXTURES, reason=f"METER fixture not found under {ROOT}")


def _checkpoint(folder):
    (path,) = sorted(folder.glob("*.ckpt"))
    return path


def _text_config(folder):
    path = folder / "text_encoder_config.json"
    return path if path.is_file() else None


def tiny(task="pretraining", **overrides):
    spec = hf_vlp.get_spec("meter")
    values = dict(spec.head(task).config_overrides)
    values.update(overrides)
    torch.manual_seed(0)
    config = build_config("meter", **values)
    return spec.model_class(task)(config)


def tiny_inputs(model, task, batch_size=4, seed=0):
    return hf_vlp.get_spec("meter").example_inputs_for(model.config, task, batch_size=batch_size, seed=seed)


# ------------------------------------------------------------------------------------------------------------------
# parity with the original code
# ------------------------------------------------------------------------------------------------------------------


@needs_fixture
@pytest.mark.parametrize("folder", FIXTURES, ids=lambda f: f.name)
def test_every_fixture_output_is_reproduced_by_some_head_of_its_checkpoint(folder):
    """Each head the checkpoint holds is converted and verified; together they compare every reference output, and
    every comparison is within the README's tolerance (atol 2e-5)."""
    from safetensors import safe_open

    checkpoint = _checkpoint(folder)
    state, _ = conversion.read_checkpoint(checkpoint)
    tasks = conversion.available_tasks(state)
    assert tasks, f"{checkpoint.name} holds no head"
    compared = {}
    for task in tasks:
        model = conversion.convert(checkpoint, task=task, text_config=_text_config(folder))
        report = common.verify(conversion, model, folder, print_fn=lambda line: None)
        assert report.passed, (task, report.summary(), [c.line() for c in report.failed])
        for check in report.compared:
            compared[check.name] = max(compared.get(check.name, 0.0), check.max_abs_diff)
    with safe_open(folder / "outputs.safetensors", "pt") as reference:
        expected = set(reference.keys())
    assert set(compared) == expected, f"never compared: {sorted(expected - set(compared))}"
    assert max(compared.values()) <= conversion.VERIFY_ATOL


@needs_fixture
def test_cli_converts_verifies_and_saves_a_folder_that_auto_classes_load(tmp_path):
    from hf_vlp import cli

    folder = FIXTURES[0]
    options = ["--option", "task=pretraining"]
    if _text_config(folder):
        options += ["--option", f"text_config={_text_config(folder)}"]
    output = tmp_path / "converted"
    code = cli.main(
        ["convert", "meter", "--checkpoint", str(_checkpoint(folder)), "--verify", str(folder), "--output", str(output)]
        + options
    )
    assert code == 0
    from transformers import AutoConfig, AutoModelForPreTraining

    from hf_vlp.modeling.meter import MeterConfig, MeterForPreTraining

    assert isinstance(AutoConfig.from_pretrained(output), MeterConfig)
    model = AutoModelForPreTraining.from_pretrained(output)
    assert type(model) is MeterForPreTraining
    reference = conversion.convert(_checkpoint(folder), task="pretraining", text_config=_text_config(folder))
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, atol=0, rtol=0, msg=name)


@needs_fixture
def test_converter_builds_the_processor_at_the_checkpoints_image_size_and_text_length(tmp_path):
    from hf_vlp.modeling.meter import MeterProcessor

    folder = FIXTURES[0]
    _, original = conversion.read_checkpoint(_checkpoint(folder))
    _tokenizer(tmp_path).save_pretrained(tmp_path / "tokenizer")
    assert conversion.build_processor(_checkpoint(folder)) is None  # nothing to save without a tokenizer
    processor = conversion.build_processor(_checkpoint(folder), tokenizer=tmp_path / "tokenizer")
    assert isinstance(processor, MeterProcessor) and processor.max_text_len == original["max_text_len"]
    size = original["image_size"]
    assert processor.image_processor.size.shortest_edge == size
    assert (processor.image_processor.crop_size.height, processor.image_processor.crop_size.width) == (size, size)


@needs_fixture
def test_config_sizes_come_from_the_checkpoint_and_its_configs():
    folder = FIXTURES[0]
    state, original = conversion.read_checkpoint(_checkpoint(folder))
    config = conversion.config_from_state(state, original, _text_config(folder))
    conv = state["vit_model.visual.conv1.weight"]
    blocks = {k.split(".")[4] for k in state if k.startswith("vit_model.visual.transformer.resblocks.")}
    assert config.vision_config.hidden_size == conv.shape[0]
    assert config.vision_config.num_hidden_layers == len(blocks)  # METER keeps layers - 1 CLIP blocks
    assert config.vision_config.num_attention_heads == conv.shape[0] // 64
    assert config.cross_modal_config.num_attention_heads == original["num_heads"]
    assert config.cross_modal_config.hidden_size == original["hidden_size"]
    assert config.cross_modal_config.layer_norm_eps == 1e-12 and config.vision_config.hidden_act == "quick_gelu"


@needs_fixture
def test_retrieval_from_a_pretraining_file_starts_rank_output_from_the_itm_match_row():
    folder = next(
        (f for f in FIXTURES if "rank_output.weight" not in conversion.read_checkpoint(_checkpoint(f))[0]), None
    )
    if folder is None:
        pytest.skip("no fixture checkpoint without rank_output")
    model = conversion.convert(_checkpoint(folder), task="retrieval", text_config=_text_config(folder))
    torch.testing.assert_close(model.rank_output.weight, model.itm_score.weight[1:2])
    torch.testing.assert_close(model.rank_output.bias, model.itm_score.bias[1:2])


# ------------------------------------------------------------------------------------------------------------------
# the processor
# ------------------------------------------------------------------------------------------------------------------


def _pixel_cases():
    """(folder, pixel key, raw image keys) for every preprocessed batch a fixture stores with its raw pictures."""
    from safetensors import safe_open

    cases = []
    for folder in FIXTURES:
        with safe_open(folder / "inputs.safetensors", "pt") as inputs:
            names = set(inputs.keys())
        for key in sorted(n for n in names if n.startswith("pixel_values")):
            suffix = key[len("pixel_values") :]  # "" or "_0", "_1"
            raws = sorted(
                (n for n in names if n.startswith(f"raw_image{suffix}_") and n[len(f"raw_image{suffix}_") :].isdigit()),
                key=lambda n: int(n.rsplit("_", 1)[1]),
            )
            if raws:
                cases.append(pytest.param(folder, key, raws, id=f"{folder.name}-{key}"))
    return cases


@needs_fixture
@pytest.mark.parametrize("folder, key, raws", _pixel_cases())
def test_image_processor_reproduces_the_original_pixels_exactly(folder, key, raws):
    from safetensors.torch import load_file

    from hf_vlp.modeling.meter import MeterImageProcessor

    inputs = load_file(folder / "inputs.safetensors")
    size = inputs[key].shape[-1]
    processor = MeterImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    # METER's datasets open pictures as RGBA
    images = [Image.fromarray(inputs[name].numpy()).convert("RGBA") for name in raws]
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    assert torch.equal(pixels, inputs[key])


def test_center_crop_rounds_the_offset_as_torchvision():
    from transformers.image_processing_utils import SizeDict

    from hf_vlp.modeling.meter import MeterImageProcessor

    processor = MeterImageProcessor()
    rows = np.arange(11, dtype=np.float32)[None, :, None] * np.ones((3, 11, 5), dtype=np.float32)
    # (11 - 4) / 2 = 3.5 -> round half to even 4 (transformers' floor gives 3); (11 - 6) / 2 = 2.5 -> 2
    assert processor.center_crop(rows, SizeDict(height=4, width=4))[0, 0, 0] == 4
    assert processor.center_crop(rows, SizeDict(height=6, width=4))[0, 0, 0] == 2
    with pytest.raises(ValueError, match="resize it first"):
        processor.center_crop(rows, SizeDict(height=12, width=4))


def _tokenizer(tmp_path):
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "is", "left", "of", "blue", "square"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    return BertTokenizer(str(tmp_path / "vocab.txt"))


def test_processor_returns_the_model_arguments_pairs_for_nlvr2_and_round_trips(tmp_path):
    from transformers import AutoProcessor

    from hf_vlp.modeling.meter import MeterImageProcessor, MeterProcessor

    image_processor = MeterImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = MeterProcessor(image_processor, _tokenizer(tmp_path), max_text_len=9)
    pictures = [Image.fromarray(np.full((40, 50, 3), v, dtype=np.uint8)) for v in (10, 200)]
    batch = processor(images=pictures, text=["a red circle", "a blue square is left of a red circle"])
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    assert batch["input_ids"].shape == (2, 9) and batch["pixel_values"].shape == (2, 3, 32, 32)
    pair = processor(images=[pictures, pictures[::-1]], text=["a red circle", "a blue square"])
    assert pair["pixel_values"].shape == (2, 2, 3, 32, 32)
    torch.testing.assert_close(pair["pixel_values"][1, 0], batch["pixel_values"][1])
    with pytest.raises(ValueError, match="examples but `text`"):
        processor(images=pictures, text=["only one"])
    with pytest.raises(ValueError, match="exactly two images"):
        processor(images=[pictures, pictures[:1]], text=["a", "b"])
    processor.save_pretrained(tmp_path / "saved")
    reloaded = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert type(reloaded) is MeterProcessor and reloaded.max_text_len == 9
    torch.testing.assert_close(reloaded(images=pictures, text=["a", "b"])["pixel_values"], batch["pixel_values"])


# ------------------------------------------------------------------------------------------------------------------
# objectives
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["pretraining", "vqa", "entailment", "nlvr2", "retrieval"])
def test_loss_falls_on_a_tiny_batch(task):
    model = tiny(task).train()
    inputs = tiny_inputs(model, task)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_pretraining_loss_is_the_weighted_sum_and_mlm_logits_cover_the_labelled_positions():
    model = tiny("pretraining", mlm_weight=0.5, itm_weight=2.0).eval()
    inputs = tiny_inputs(model, "pretraining")
    with torch.no_grad():
        out = model(**inputs)
        unlabelled = model(**{k: v for k, v in inputs.items() if k not in ("labels", "itm_labels")})
    assert out.mlm_logits.shape == (int((inputs["labels"] != -100).sum()), model.config.text_config.vocab_size)
    torch.testing.assert_close(out.loss, 0.5 * out.mlm_loss + 2.0 * out.itm_loss)
    assert unlabelled.loss is None and unlabelled.mlm_logits.shape[:2] == inputs["input_ids"].shape
    torch.testing.assert_close(unlabelled.mlm_logits[inputs["labels"] != -100], out.mlm_logits)


def test_retrieval_groups_softmax_over_one_positive_and_its_negatives():
    model = tiny("retrieval").eval()
    inputs = tiny_inputs(model, "retrieval")
    inputs.pop("labels")
    with torch.no_grad():
        out = model(**inputs, group_size=2)
    expected = torch.nn.functional.cross_entropy(out.logits.view(-1, 2), torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(out.loss, expected)


def test_the_two_streams_update_in_parallel_from_the_previous_layer():
    """Changing the image cannot reach the text stream's *first* fusion layer through anything but its
    cross-attention over the image stream's input: a sequential update would feed layer 1's new image states."""
    model = tiny("base").eval()
    inputs = tiny_inputs(model, "base", batch_size=1)
    captured = {}
    layer = model.cross_modal_image_layers[0]
    handle = layer.register_forward_hook(lambda m, args, out: captured.update(context=args[1]))
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    handle.remove()
    fusion_text_input = out.text_hidden_states[model.config.text_config.num_hidden_layers + 1]
    torch.testing.assert_close(captured["context"], fusion_text_input)


def test_a_larger_image_runs_with_interpolated_positions():
    model = tiny("vqa").eval()
    inputs = tiny_inputs(model, "vqa", batch_size=1)
    size, patch = model.config.vision_config.image_size, model.config.vision_config.patch_size
    inputs["pixel_values"] = torch.randn(1, 3, size + 2 * patch, size + 2 * patch)
    with pytest.raises(ValueError, match="doesn't match model"):
        model(**inputs)
    with torch.no_grad():
        out = model(**inputs, interpolate_pos_encoding=True, output_hidden_states=True)
    assert out.visual_hidden_states[-1].shape[1] == 1 + ((size + 2 * patch) // patch) ** 2


# ------------------------------------------------------------------------------------------------------------------
# Auto classes, LoRA
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, auto",
    [
        ("base", "AutoModel"),
        ("pretraining", "AutoModelForPreTraining"),
        ("vqa", "AutoModelForVisualQuestionAnswering"),
    ],
)
def test_auto_classes_return_the_meter_head(task, auto, tmp_path):
    import transformers

    model = tiny(task)
    model.save_pretrained(tmp_path)
    assert type(transformers.AutoConfig.from_pretrained(tmp_path)).__name__ == "MeterConfig"
    assert type(getattr(transformers, auto).from_pretrained(tmp_path)) is type(model)


def test_default_config_is_the_released_meter_clip16_roberta_288():
    from hf_vlp.modeling.meter import MeterConfig

    config = MeterConfig()
    assert config.text_config.model_type == "roberta" and config.text_config.vocab_size == 50265
    assert config.text_config.layer_norm_eps == 1e-5 and config.text_config.max_position_embeddings == 514
    vision = config.vision_config
    assert (vision.image_size, vision.patch_size, vision.num_hidden_layers, vision.hidden_act) == (
        288,
        16,
        11,
        "quick_gelu",
    )
    fusion = config.cross_modal_config
    assert (fusion.hidden_size, fusion.num_hidden_layers, fusion.num_attention_heads, fusion.layer_norm_eps) == (
        768,
        6,
        12,
        1e-12,
    )
    assert config.num_labels == 3129 and config.modality_type_vocab_size == 2


def test_lora_adapts_both_towers_and_the_fusion():
    from peft import LoraConfig, get_peft_model

    spec = hf_vlp.get_spec("meter")
    model = tiny("vqa")
    inputs = tiny_inputs(model, "vqa")
    peft_model = get_peft_model(
        model, LoraConfig(r=2, lora_alpha=4, target_modules=spec.lora_target_modules, modules_to_save=["classifier"])
    )
    names = [name for name, _ in peft_model.named_parameters() if "lora_A" in name]
    for part in ("text_model.", "vision_model.", "cross_modal_text_layers.", "cross_modal_image_layers."):
        assert any(part in name for name in names), part
    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        peft_model(**inputs).loss.backward()
        optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in peft_model.named_parameters() if n in frozen)


# ------------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------------


def test_nlvr2_head_given_one_image_names_pixel_values():
    model = tiny("nlvr2").eval()
    inputs = tiny_inputs(model, "nlvr2")
    inputs["pixel_values"] = inputs["pixel_values"][:, 0]
    with pytest.raises(ValueError, match=r"`pixel_values` must be \(batch, 2, 3, height, width\)"):
        model(**inputs)


def test_nlvr2_head_needs_a_third_token_type():
    with pytest.raises(ValueError, match="modality_type_vocab_size"):
        tiny("nlvr2", modality_type_vocab_size=2)


@pytest.mark.parametrize("task", ["base", "vqa", "pretraining"])
def test_image_and_text_batch_sizes_must_match(task):
    model = tiny(task).eval()
    inputs = tiny_inputs(model, task)
    inputs["pixel_values"] = inputs["pixel_values"][:-1]
    with pytest.raises(ValueError, match="`pixel_values` holds 3 images but `input_ids` 4 texts"):
        model(**inputs)


def test_image_token_type_outside_the_table_is_refused():
    model = tiny("base").eval()
    with pytest.raises(ValueError, match="image_token_type_idx"):
        model(**tiny_inputs(model, "base"), image_token_type_idx=2)


class _Payload:
    """A pickled object whose unpickling would create `path` (what a malicious checkpoint could do instead)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_restricted_unpickler_refuses_an_unexpected_global_without_running_it(tmp_path):
    marker = tmp_path / "executed"
    checkpoint = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": {"x": _Payload(marker)}}, checkpoint)
    with pytest.raises(ConversionError, match=r"pathlib\.Path\.touch|pathlib\._local\.Path\.touch|never needs"):
        conversion.convert(checkpoint)
    assert not marker.exists()


def test_restricted_unpickler_admits_lightning_classes_as_inert_placeholders(tmp_path, monkeypatch):
    from hf_vlp.conversion.meter.lightning import LightningPlaceholder, load_lightning_checkpoint

    # a pickle naming Lightning's ModelCheckpoint class as a dict key, as METER's checkpoints do; written with
    # stand-in modules (pytorch_lightning is not installed), read back with none of them importable
    module = "pytorch_lightning.callbacks.model_checkpoint"
    ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": module})
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules[module].ModelCheckpoint = ModelCheckpoint
    torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": {ModelCheckpoint: {"monitor": "x"}}}, tmp_path / "a")
    monkeypatch.undo()
    loaded = load_lightning_checkpoint(tmp_path / "a")
    (key,) = loaded["callbacks"]
    assert issubclass(key, LightningPlaceholder) and key is not ModelCheckpoint
    assert key.original_global == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert loaded["callbacks"][key] == {"monitor": "x"} and torch.equal(loaded["state_dict"]["w"], torch.ones(2))


def test_a_torchscript_archive_is_not_read_as_a_lightning_checkpoint(tmp_path):
    path = tmp_path / "script.ckpt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(ConversionError, match="TorchScript archive"):
        conversion.convert(path)


def test_unknown_task_is_refused_by_name():
    with pytest.raises(ValueError, match="task must be None or one of"):
        conversion.convert("/nonexistent.ckpt", task="captioning")


def test_pickle_module_refuses_builtins_eval():
    from hf_vlp.conversion.meter.lightning import RestrictedUnpickler

    payload = pickle.dumps(eval)  # a GLOBAL builtins.eval opcode
    with pytest.raises(ConversionError, match="builtins.eval"):
        RestrictedUnpickler(io.BytesIO(payload)).load()
