"""`hf-vlp` end to end: the `convert --verify` contract through the console script; every expected error reads as one
line (`hf-vlp <cmd>: error: ...`), exits non-zero, and shows its traceback only under `--debug`."""

import subprocess
import sys
from pathlib import Path

import torch
from conftest import fixture_dir


def _hf_vlp(*args, cwd=None):
    # the console script of this interpreter's environment (one found on PATH may belong to another install)
    script = Path(sys.executable).with_name("hf-vlp")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "hf_vlp.cli"]
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=600, cwd=cwd)


def test_convert_verify_prints_one_line_per_output_and_saves(tmp_path):
    folder = fixture_dir("uniter")
    config = next(folder.glob("*.json"))
    checkpoint = sorted(folder.glob("*.pt"))[0]
    result = _hf_vlp(
        "convert",
        "uniter",
        "--checkpoint",
        str(checkpoint),
        "--config",
        str(config),
        "--verify",
        str(folder),
        "--output",
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if ": max_abs_diff=" in line or ": skipped (" in line]
    from safetensors import safe_open

    with safe_open(folder / "outputs.safetensors", "pt") as reference:
        assert sorted(line.split(":")[0] for line in lines) == sorted(reference.keys())
    assert all(line.endswith(" ok") or ": skipped (" in line for line in lines)
    assert (tmp_path / "out" / "model.safetensors").exists() and (tmp_path / "out" / "README.md").exists()


def test_convert_verify_fails_on_a_corrupted_checkpoint(tmp_path):
    folder = fixture_dir("uniter")
    config = next(folder.glob("*.json"))
    checkpoint = sorted(folder.glob("*.pt"))[0]
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["uniter.encoder.layer.0.output.LayerNorm.bias"] += 0.01
    torch.save(state, tmp_path / "corrupted.pt")
    result = _hf_vlp(
        "convert",
        "uniter",
        "--checkpoint",
        str(tmp_path / "corrupted.pt"),
        "--config",
        str(config),
        "--verify",
        str(folder),
        "--output",
        str(tmp_path / "out"),
    )
    assert result.returncode != 0
    assert "FAIL" in result.stdout and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------------
# errors read as messages: one line `hf-vlp <cmd>: error: ...`, non-zero exit, the traceback only under --debug
# ---------------------------------------------------------------------------------------------------------------------


def _bad_folders(tmp_path):
    """Folders and files the bad invocations below point at."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "config.json").write_text("{not json")
    (tmp_path / "unknown").mkdir()
    (tmp_path / "unknown" / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    (tmp_path / "garbage.pt").write_bytes(b"this is no checkpoint")
    (tmp_path / "bad.json").write_text("{not json")


def _bad_invocations(tmp_path):
    """(name, argv, what stderr must name): expected errors of every subcommand."""
    folder = fixture_dir("uniter")
    config, checkpoint = str(next(folder.glob("*.json"))), str(sorted(folder.glob("*.pt"))[0])
    t = str(tmp_path)
    return [
        ("unknown command", ["bogus"], "invalid choice"),
        ("push: missing --repo_id", ["push", "--model", f"{t}/empty"], "--repo_id"),
        ("push: no such folder", ["push", "--model", f"{t}/nowhere", "--repo_id", "a/b"], "nowhere"),
        ("push: folder without config", ["push", "--model", f"{t}/empty", "--repo_id", "a/b"], "config.json"),
        ("push: bad JSON config", ["push", "--model", f"{t}/badjson", "--repo_id", "a/b"], "config.json"),
        ("push: unknown architecture", ["push", "--model", f"{t}/unknown", "--repo_id", "a/b"], "'bert'"),
        ("push: bad timeout", ["push", "--model", f"{t}/empty", "--repo_id", "a/b", "--timeout", "-1"], "timeout"),
        (
            "push: bad timeout type",
            ["push", "--model", f"{t}/empty", "--repo_id", "a/b", "--timeout", "soon"],
            "--timeout",
        ),
        ("convert: unknown architecture", ["convert", "nosucharch", "--checkpoint", checkpoint], "nosucharch"),
        (
            "convert: bad checkpoint file",
            ["convert", "uniter", "--checkpoint", f"{t}/garbage.pt", "--config", config],
            "garbage.pt",
        ),
        (
            "convert: bad JSON config",
            ["convert", "uniter", "--checkpoint", checkpoint, "--config", f"{t}/bad.json"],
            "JSON",
        ),
        (
            "convert: missing config",
            ["convert", "uniter", "--checkpoint", checkpoint, "--config", f"{t}/none.json"],
            "none.json",
        ),
        (
            "convert: unknown --option",
            ["convert", "uniter", "--checkpoint", checkpoint, "--option", "nosuch=1"],
            "nosuch",
        ),
        ("eval: no such model folder", ["eval", "--model", f"{t}/nowhere"], "nowhere"),
        ("eval: bad --num_images", ["eval", "--model", f"{t}/empty", "--num_images", "many"], "--num_images"),
        ("bench: unknown architecture", ["bench", "nosucharch"], "nosucharch"),
        ("bench: bad --sizes", ["bench", "uniter", "--sizes", "huge"], "--sizes"),
        ("cpt ground: missing --image", ["cpt", "ground", "--model", "x", "--boxes", "[]", "--text", "a"], "--image"),
    ]


# one misspelt flag per subcommand: argparse must refuse each (train's flags go to HfArgumentParser, which must too)
TYPOS = [
    ["convert", "uniter", "--checkpoint", "x.pt", "--verfy", "dir"],
    ["train", "pretrain", "--output_dri", "x"],
    ["eval", "--model", "m", "--tsak", "vqa"],
    ["demo", "--minuts", "1"],
    ["bench", "uniter", "--stpes", "1"],
    ["bench", "nosucharch", "--step", "1"],  # an abbreviation of --steps: refused too (allow_abbrev=False)
    ["push", "--model", "m", "--repo_id", "a/b", "--privat"],
    ["cpt", "ground", "--model", "m", "--image", "i", "--boxes", "[]", "--text", "a", "--colour", "red"],
]


def _run_main(argv, capsys):
    from hf_vlp import cli

    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr()


def test_expected_errors_print_one_line_and_exit_nonzero(tmp_path, capsys):
    _bad_folders(tmp_path)
    outcomes = []
    for name, argv, named in _bad_invocations(tmp_path):
        code, captured = _run_main(argv, capsys)
        lines = [line for line in captured.err.splitlines() if line.strip()]
        outcomes.append((name, code, lines))
        assert code not in (0, None), (name, captured)
        assert len(lines) == 1, (name, lines)
        assert "Traceback" not in captured.err, name
        command = {"bogus": "", "cpt": "cpt ground"}.get(argv[0], argv[0])
        assert lines[0].startswith(f"hf-vlp {command}".rstrip() + ": error: "), (name, lines)
        assert named in lines[0], (name, named, lines[0])
    assert len(outcomes) >= 8


def test_option_typos_are_errors_in_every_subcommand(capsys):
    for argv in TYPOS:
        code, captured = _run_main(argv, capsys)
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert code not in (0, None), argv
        assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in captured.err, (argv, captured.err)
        typo = [arg for arg in argv if arg.startswith("--")][-1]  # each list ends with its misspelt flag
        assert typo in lines[0], (argv, lines)


def test_debug_shows_the_traceback_and_the_console_script_prints_one_line(tmp_path):
    result = _hf_vlp("push", "--model", str(tmp_path / "nowhere"), "--repo_id", "a/b")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"hf-vlp push: error: --model {tmp_path / 'nowhere'}: no such folder (--debug shows the traceback)"
    ]
    debug = _hf_vlp("push", "--model", str(tmp_path / "nowhere"), "--repo_id", "a/b", "--debug")
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr and "ValueError" in debug.stderr
