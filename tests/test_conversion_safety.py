"""Conversion is safe by default: `--verify` passes only when something was compared and says exactly what, `--output`
never loses files, TorchScript archives are read without running them, and options / architectures are checked the
same way by every converter."""

import hashlib
import importlib
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import fixture_dir
from safetensors.torch import load_file, save_file

from hf_vlp import cli
from hf_vlp.conversion import clip as clip_conversion
from hf_vlp.conversion import common
from hf_vlp.conversion.common import ConversionError, Masked, Skipped


def quiet(_line):
    pass


def tree_hashes(folder) -> dict:
    """{relative path: sha256} of every file under `folder`."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def tiny_model():
    from hf_vlp.modeling.uniter import UniterConfig, UniterForPreTraining

    config = UniterConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        visual_feat_dim=12,
        num_region_classes=5,
    )
    return UniterForPreTraining(config).eval()


# ------------------------------------------------------------------------------------------------------------------
# 1. --verify passes only when at least one output was compared and none failed
# ------------------------------------------------------------------------------------------------------------------


def test_a_verification_that_compared_nothing_fails():
    reference = {"a": torch.ones(3), "b": torch.ones(2)}
    skipped = common.compare_outputs(
        {"a": Skipped("other checkpoint"), "b": Skipped("other")}, reference, print_fn=quiet
    )
    assert not skipped and not skipped.compared and "no output was compared" in skipped.summary()
    empty = common.compare_outputs({"a": torch.ones(3)}, {}, print_fn=quiet)
    assert not empty and "has no outputs" in empty.summary()
    with pytest.raises(ValueError, match="does not go into a model card"):
        skipped.card_text()


def test_a_mask_without_valid_entries_is_not_a_comparison():
    reference = {"a": torch.ones(2, 3)}
    report = common.compare_outputs({"a": Masked(torch.zeros(2, 3), torch.zeros(2))}, reference, print_fn=quiet)
    assert not report and report.checks[0].status == "skipped"
    partly = common.compare_outputs({"a": Masked(torch.ones(2, 3), torch.tensor([1, 0]))}, reference, print_fn=quiet)
    assert partly and partly.compared[0].elements == 3


def test_one_failure_fails_the_whole_verification():
    reference = {"a": torch.ones(3), "b": torch.ones(3), "c": torch.ones(3)}
    ours = {"a": torch.ones(3), "b": torch.ones(3) + 1e-3, "c": Skipped("n/a")}
    lines = []
    report = common.compare_outputs(ours, reference, atol=1e-4, print_fn=lines.append)
    assert not report and [c.name for c in report.failed] == ["b"]
    assert lines == ["a: max_abs_diff=0.000e+00 ok", "b: max_abs_diff=1.000e-03 FAIL", "c: skipped (n/a)"]
    missing = common.compare_outputs({"a": torch.ones(3)}, {"a": torch.ones(3), "z": torch.ones(1)}, print_fn=quiet)
    assert not missing and missing.failed[0].name == "z"
    nan = common.compare_outputs({"a": torch.tensor([1.0, float("nan"), 1.0])}, {"a": torch.ones(3)}, print_fn=quiet)
    assert not nan


def test_relative_tolerance_scales_with_the_reference_magnitude():
    """fp32 rounding alone moves an output of magnitude 2,500 by ~2.4e-4: atol 1e-4 alone rejects it, atol + rtol
    accepts it, and the same absolute error on a small output still fails."""
    reference = {"large": torch.tensor([2500.0, -2500.0]), "small": torch.tensor([0.5, -0.5])}
    rounded = {"large": reference["large"] + 2.4e-4, "small": reference["small"]}
    assert not common.compare_outputs(rounded, reference, atol=1e-4, rtol=0.0, print_fn=quiet)
    assert common.compare_outputs(rounded, reference, atol=1e-4, rtol=1e-5, print_fn=quiet)
    wrong = {"large": reference["large"], "small": reference["small"] + 2.4e-4}
    assert not common.compare_outputs(wrong, reference, atol=1e-4, rtol=1e-5, print_fn=quiet)


def test_verify_reads_tolerances_from_the_module_and_reports_the_fixture_name(tmp_path):
    class Module:
        VERIFY_ATOL, VERIFY_RTOL = 1e-6, 1e-5

        @staticmethod
        def fixture_outputs(model, folder):
            return {"x": torch.tensor([1000.0 + 5e-3])}

    folder = tmp_path / "my_fixture"
    folder.mkdir()
    save_file({"x": torch.tensor([1000.0])}, folder / "outputs.safetensors")
    lines = []
    report = common.verify(Module, torch.nn.Linear(1, 1), folder, print_fn=lines.append)
    assert report and (report.atol, report.rtol, report.fixture) == (1e-6, 1e-5, "my_fixture")
    assert lines[-1].startswith("verification ok: 1 of 1 outputs compared")
    assert not common.verify(Module, torch.nn.Linear(1, 1), folder, rtol=0.0, print_fn=lines.append)
    card = report.card_text()
    assert "`my_fixture`" in card and str(tmp_path) not in card and "| `x` |" in card and "rtol=1e-05" in card


@pytest.mark.parametrize("kept", ["nothing", "other_checkpoint_only"])
def test_cli_verify_that_compares_nothing_fails_and_saves_nothing(tmp_path, capsys, kept):
    """An empty outputs.safetensors, or one whose every output the converted checkpoint skips, is a failure."""
    source = fixture_dir("clip")
    fixture = tmp_path / "clip_fixture"
    fixture.mkdir()
    shutil.copy(source / "inputs.safetensors", fixture)
    reference = load_file(source / "outputs.safetensors")
    # the ViT checkpoint skips every `rn.*` output: they need the ResNet checkpoint
    kept_outputs = {k: v for k, v in reference.items() if kept != "nothing" and k.startswith("rn.")}
    save_file(kept_outputs, fixture / "outputs.safetensors")
    code = cli.main(
        [
            "convert",
            "clip",
            "--checkpoint",
            str(source / "clip_vit_tiny_state_dict.pt"),
            "--verify",
            str(fixture),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "verification FAILED" in out and " ok" not in out.replace("verification FAILED", "")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_fixture"]  # no staging folder left behind


def test_cli_card_states_what_was_compared_and_inputs_stay_unchanged(tmp_path, capsys):
    """A passing conversion: the card names the fixture folder (no local path), every compared output with its max
    abs diff, the skipped ones and the tolerances; no file outside the output folder changes."""
    checkpoints = tmp_path / "original"
    shutil.copytree(fixture_dir("vit"), checkpoints)
    before = tree_hashes(checkpoints)
    output = tmp_path / "converted"
    code = cli.main(
        [
            "convert",
            "vit",
            "--checkpoint",
            str(checkpoints / "vit_tiny_norep.npz"),
            "--verify",
            str(checkpoints),
            "--output",
            str(output),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert tree_hashes(checkpoints) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "original"]
    card = (output / "README.md").read_text()
    assert str(tmp_path) not in card and "`original`" in card and "`vit_tiny_norep.npz`" in card
    assert "atol=0.0001, rtol=0" in card
    ok = [line.split(": max_abs_diff=") for line in out.splitlines() if ": max_abs_diff=" in line]
    assert ok and all(value.endswith(" ok") for _, value in ok)
    for name, value in ok:
        assert f"| `{name}` | {float(value.split()[0]):.2e} |" in card
    skipped = [line.split(":")[0] for line in out.splitlines() if ": skipped (" in line]
    assert all(f"`{name}`" in card for name in skipped)


def test_lxmert_tolerances_absorb_rounding_at_large_magnitude_but_not_a_porting_mistake():
    """shared/fixtures/lxmert/README.md: fp32 rounding moves an output near 2,500 by 2.4e-4; the smallest typical
    mistake it lists (tanh-approximate GELU) moves `lang_feats` (values of order 1) by 8.8e-4."""
    from hf_vlp.conversion import lxmert

    def check(ours, reference):
        return common.compare_outputs(
            {"x": ours}, {"x": reference}, atol=lxmert.VERIFY_ATOL, rtol=lxmert.VERIFY_RTOL, print_fn=quiet
        )

    large = torch.tensor([2500.0, -2480.0, 1999.0])
    assert check(large + 2.4e-4, large)
    features = torch.linspace(-3.0, 3.0, 11)
    assert not check(features + 8.8e-4, features)


# ------------------------------------------------------------------------------------------------------------------
# 2. --output never loses files
# ------------------------------------------------------------------------------------------------------------------


def test_output_that_is_in_or_around_an_input_folder_is_refused_even_with_overwrite(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    for output, relation in (
        (checkpoint, "is the input"),
        (checkpoint / "hf", "is inside the input"),
        (tmp_path / "run", "contains the input"),
    ):
        for overwrite in (False, True):
            with pytest.raises(ValueError, match=relation):
                common.check_output_folder(output, [checkpoint], overwrite=overwrite)
    single = tmp_path / "weights" / "model.pt"
    single.parent.mkdir()
    single.write_bytes(b"x")
    with pytest.raises(ValueError, match="contains the input file"):
        common.check_output_folder(single.parent, [single], overwrite=True)
    # a new folder beside a single-file checkpoint holds none of its files
    assert common.check_output_folder(single.parent / "hf", [single]) == (single.parent / "hf").resolve()
    with pytest.raises(ValueError, match="existing file"):
        common.check_output_folder(single, [])


def test_cli_refuses_to_convert_a_checkpoint_folder_into_itself(tmp_path, capsys):
    folder = tmp_path / "pretrain"
    shutil.copytree(fixture_dir("oscar") / "pretrain", folder)
    before = tree_hashes(tmp_path)
    for output in (folder, folder / "hf", tmp_path):
        for extra in ([], ["--overwrite"]):
            code = cli.main(["convert", "oscar", "--checkpoint", str(folder), "--output", str(output), *extra])
            assert code == 2 and "input folder" in capsys.readouterr().err
    assert tree_hashes(tmp_path) == before


def test_non_empty_output_is_refused_without_overwrite(tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "README.md").write_text("my notes")
    before = tree_hashes(tmp_path)
    with pytest.raises(ValueError, match="not empty.*--overwrite"):
        common.save_converted(tiny_model(), None, output)
    checkpoint = fixture_dir("vit") / "vit_tiny_norep.npz"
    code = cli.main(["convert", "vit", "--checkpoint", str(checkpoint), "--output", str(output)])
    assert code == 2 and "is not empty" in capsys.readouterr().err
    assert tree_hashes(tmp_path) == before


def test_save_into_a_new_folder_writes_a_manifest_of_its_files(tmp_path):
    output = common.save_converted(tiny_model(), None, tmp_path / "a" / "out", conversion="test")
    manifest = json.loads((output / common.MANIFEST_NAME).read_text())
    assert manifest["files"] == {k: v for k, v in tree_hashes(output).items() if k != common.MANIFEST_NAME}
    assert {"model.safetensors", "config.json", "README.md"} <= set(manifest["files"])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["out"]


def test_overwrite_replaces_only_what_the_conversion_writes(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "README.md").write_text("old card")
    (output / "config.json").write_text("{}")
    (output / "tokenizer.json").write_text("{}")  # not written by this conversion: stays
    (output / "notes").mkdir()
    (output / "notes" / "todo.txt").write_text("mine")
    messages = []
    common.save_converted(tiny_model(), None, output, overwrite=True, print_fn=messages.append, conversion="test")
    assert "old card" not in (output / "README.md").read_text()
    assert json.loads((output / "config.json").read_text())["model_type"] == "uniter"
    assert (output / "tokenizer.json").read_text() == "{}" and (output / "notes" / "todo.txt").read_text() == "mine"
    assert any("tokenizer.json" in m for m in messages)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_refuses_foreign_weight_files_it_would_not_replace(tmp_path):
    """Shards of an unknown earlier save next to a new single-file save would mix: refuse, change nothing."""
    output = tmp_path / "out"
    output.mkdir()
    (output / "model-00001-of-00002.safetensors").write_bytes(b"someone else's shard")
    (output / "model.safetensors.index.json").write_text("{}")
    before = tree_hashes(tmp_path)
    with pytest.raises(ValueError, match="no earlier hf_vlp conversion recorded"):
        common.save_converted(tiny_model(), None, output, overwrite=True)
    assert tree_hashes(tmp_path) == before


def test_overwrite_removes_only_unchanged_stale_shards_of_an_earlier_hf_vlp_save(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    shards = {
        "model-00001-of-00002.safetensors": b"shard 1",
        "model-00002-of-00002.safetensors": b"shard 2",
        "model.safetensors.index.json": b"{}",
    }
    for name, data in shards.items():
        (output / name).write_bytes(data)
    recorded = {name: hashlib.sha256(data).hexdigest() for name, data in shards.items()}
    (output / common.MANIFEST_NAME).write_text(json.dumps({"files": recorded}))
    (output / "model-00002-of-00002.safetensors").write_bytes(b"edited since")  # no longer what hf_vlp wrote
    before = tree_hashes(tmp_path)
    with pytest.raises(ValueError, match="model-00002-of-00002"):
        common.save_converted(tiny_model(), None, output, overwrite=True)
    assert tree_hashes(tmp_path) == before
    (output / "model-00002-of-00002.safetensors").write_bytes(b"shard 2")
    common.save_converted(tiny_model(), None, output, overwrite=True, print_fn=quiet, conversion="test")
    assert not any(name in os.listdir(output) for name in shards)
    assert (output / "model.safetensors").exists()


def test_a_failing_save_leaves_the_output_folder_as_it_was(tmp_path, monkeypatch):
    import hf_vlp.hub

    def broken(model, processor, directory, **card):
        (Path(directory) / "README.md").write_text("half")
        raise OSError("disk full")

    output = tmp_path / "out"
    output.mkdir()
    (output / "README.md").write_text("kept")
    before = tree_hashes(tmp_path)
    monkeypatch.setattr(hf_vlp.hub, "save_for_hub", broken)
    with pytest.raises(OSError, match="disk full"):
        common.save_converted(tiny_model(), None, output, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        common.save_converted(tiny_model(), None, tmp_path / "new")
    assert tree_hashes(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["out"]


# ------------------------------------------------------------------------------------------------------------------
# 3. TorchScript archives are read as data, never run
# ------------------------------------------------------------------------------------------------------------------


class _LeakyLayerNorm(torch.nn.Module):
    """A LayerNorm whose TorchScript `__setstate__` replaces its weight by the bytes of a local file."""

    def __init__(self, weight, bias, path: str):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)
        self.bias = torch.nn.Parameter(bias)
        self.path = path

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, self.weight.shape, self.weight, self.bias)

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, torch.Tensor, str, bool]:
        return (self.weight, self.bias, self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, torch.Tensor, str, bool]) -> None:
        self.weight = torch.from_file(state[2], False, state[0].numel(), dtype=torch.float32)
        self.bias = state[1]
        self.path = state[2]
        self.training = state[3]


class _CLIPShell(torch.nn.Module):
    """The released CLIP archive's modules and tensors under a new top module: the same keys, one crafted child."""

    def __init__(self, original, ln_final):
        super().__init__()
        for name in ("visual", "transformer", "token_embedding"):
            setattr(self, name, getattr(original, name))
        self.ln_final = ln_final
        for name in ("positional_embedding", "text_projection", "logit_scale"):
            self.register_parameter(name, torch.nn.Parameter(getattr(original, name).detach().clone()))
        for name in clip_conversion.ARCHIVE_EXTRAS:
            self.register_buffer(name, getattr(original, name).clone())

    def forward(self, text):
        return self.ln_final(self.token_embedding(text).float())


@pytest.fixture
def crafted_clip_archive(tmp_path):
    """A CLIP TorchScript archive (the fixture's) whose `ln_final.__setstate__` reads `secret.bin` into the weight."""
    original = torch.jit.load(str(fixture_dir("clip") / "clip_vit_tiny_jit_fp16.pt"), map_location="cpu")
    width = original.ln_final.weight.shape[0]
    secret = tmp_path / "secret.bin"
    secret.write_bytes(torch.arange(1, width + 1, dtype=torch.float32).numpy().tobytes())
    weight, bias = original.ln_final.weight.detach().float(), original.ln_final.bias.detach().float()
    ln_final = _LeakyLayerNorm(weight, bias, str(secret))
    path = tmp_path / "ViT-crafted.pt"
    torch.jit.script(_CLIPShell(original, ln_final)).save(str(path))
    return path, torch.arange(1, width + 1, dtype=torch.float32)


def test_crafted_archive_really_runs_code_under_torch_jit_load(crafted_clip_archive):
    """The control: what the converter must not do. torch.jit.load executes the `__setstate__`, and the file's bytes
    become a weight that `--push-to-hub` would publish."""
    path, secret = crafted_clip_archive
    leaked = torch.jit.load(str(path), map_location="cpu").state_dict()["ln_final.weight"]
    assert torch.equal(leaked.float(), secret)
    model = clip_conversion.convert(path, trust_torchscript=True)  # the explicit opt-in does exactly that
    assert torch.equal(model.text_model.final_layer_norm.weight.detach(), secret)


def test_crafted_archive_is_refused_without_running_anything(crafted_clip_archive, monkeypatch):
    path, _ = crafted_clip_archive

    def forbidden(*args, **kwargs):
        raise AssertionError("the converter handed the archive to the TorchScript loader")

    for name in ("import_ir_module", "import_ir_module_from_buffer"):
        monkeypatch.setattr(torch._C, name, forbidden)
    monkeypatch.setattr(torch.jit, "load", forbidden)
    with pytest.raises(ConversionError, match=r"_LeakyLayerNorm restores itself with a custom __setstate__"):
        clip_conversion.convert(path)
    with pytest.raises(ConversionError, match="trust_torchscript"):
        common.load_torchscript_state(path)


def test_cli_refuses_the_crafted_archive_and_writes_nothing(crafted_clip_archive, tmp_path, capsys):
    path, _ = crafted_clip_archive
    before = tree_hashes(tmp_path)
    argv = [
        "convert",
        "clip",
        "--checkpoint",
        str(path),
        "--verify",
        str(fixture_dir("clip")),
        "--output",
        str(tmp_path / "out"),
    ]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("hf-vlp convert: error: ") and "__setstate__" in last
    with pytest.raises(ConversionError, match="__setstate__"):
        cli.main(argv + ["--debug"])
    assert tree_hashes(tmp_path) == before and not (tmp_path / "out").exists()


def test_archive_reader_matches_torch_jit_load_on_the_released_layout():
    """On the fixture's release-style archives the data-only reader returns torch.jit.load's state dict exactly:
    same keys in the same order, dtypes and values."""
    for name in ("clip_vit_tiny_jit_fp16.pt", "clip_rn_tiny_jit_fp16.pt"):
        path = fixture_dir("clip") / name
        ours = common.load_torchscript_state(path)
        reference = torch.jit.load(str(path), map_location="cpu").state_dict()
        assert list(ours) == list(reference)
        for key, value in reference.items():
            assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


def test_released_archive_verifies_through_the_data_only_reader(monkeypatch):
    folder = fixture_dir("clip")
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load was called"))
    model = clip_conversion.convert(folder / "clip_vit_tiny_jit_fp16.pt")
    assert common.verify(clip_conversion, model, folder, print_fn=quiet)


def _archive(path, data_pkl: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("archive/version", "4\n")
        archive.writestr("archive/code/__torch__.py", "class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n")


class _MakeDirectory:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_archive_naming_any_other_global_is_refused_before_it_is_called(tmp_path):
    marker = tmp_path / "created-by-the-pickle"
    path = tmp_path / "hostile.pt"
    _archive(path, pickle.dumps(_MakeDirectory(str(marker)), protocol=2))
    assert common.is_torchscript_archive(path)
    with pytest.raises(ConversionError, match=r"refers to (posix|nt|os)\.mkdir"):
        common.load_torchscript_state(path)
    assert not marker.exists()


def test_state_dict_loaders_refuse_torchscript_archives(tmp_path):
    from hf_vlp.conversion import vilt

    path = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(ConversionError, match="TorchScript archive"):
        common.load_checkpoint(path)
    with pytest.raises(ConversionError, match="TorchScript archive"):
        vilt.load_lightning_checkpoint(path)
    assert set(common.load_torchscript_state(path)) == {"weight", "bias"}


# ------------------------------------------------------------------------------------------------------------------
# options and architectures
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", common.converter_names())
def test_every_converter_rejects_an_unknown_option_by_name_before_reading_anything(arch):
    module = importlib.import_module(f"hf_vlp.conversion.{arch}")
    valid = common._declared_options(module.convert)
    with pytest.raises(ValueError) as error:
        module.convert("/nonexistent/checkpoint", None, bogus_option=1)
    message = str(error.value)
    assert not isinstance(error.value, FileNotFoundError)
    assert f"unknown option 'bogus_option' for the {arch} converter" in message
    assert all(name in message for name in valid) and (valid or "takes no options" in message)


@pytest.mark.parametrize(
    "arch, typo, suggestion",
    [
        ("lxmert", "hiden_size", "hidden_size"),
        ("vilt", "tsk", "task"),
        ("vilbert", "drop_task_head", "drop_task_heads"),
    ],
)
def test_cli_option_typo_is_an_error_naming_it_and_the_valid_options(arch, typo, suggestion, capsys):
    code = cli.main(["convert", arch, "--checkpoint", "/nonexistent", "--option", f"{typo}=1"])
    error = capsys.readouterr().err
    assert code == 2 and f"unknown option {typo!r}" in error and f"did you mean {suggestion!r}" in error
    assert "valid options:" in error


def test_cli_unknown_architecture_lists_the_known_ones(capsys):
    assert cli.main(["convert", "unitr", "--checkpoint", "/nonexistent"]) == 2
    error = capsys.readouterr().err
    assert "unknown architecture 'unitr'" in error and "did you mean 'uniter'" in error
    assert all(arch in error for arch in common.converter_names())
    for name in ("common", "paddle_format", "../hub"):
        with pytest.raises(ValueError, match="unknown architecture"):
            common.load_converter(name)


def test_option_strings_parse_as_json_values():
    assert common.parse_option_strings(["momentum=false", "image_size=384", "task=vqa", "box_feature_kind=null"]) == {
        "momentum": False,
        "image_size": 384,
        "task": "vqa",
        "box_feature_kind": None,
    }
    for bad in (["momentum"], ["=1"], ["a=1", "a=2"]):
        with pytest.raises(ValueError, match="--option"):
            common.parse_option_strings(bad)


def test_config_overrides_are_checked_against_the_config_fields():
    from hf_vlp.conversion import lxmert

    assert common.check_options(lxmert.convert, {"hidden_dropout_prob": "0.2"}, lxmert.CONFIG_OVERRIDES) == {
        "hidden_dropout_prob": 0.2
    }
    with pytest.raises(ValueError, match="did you mean 'hidden_dropout_prob'"):
        common.check_options(lxmert.convert, {"hidden_dropout": 0.2}, lxmert.CONFIG_OVERRIDES)
