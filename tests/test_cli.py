"""`hf-vlp convert --verify` contract, end to end through the console script."""

import shutil
import subprocess
import sys

import torch
from conftest import fixture_dir


def _hf_vlp(*args, cwd=None):
    command = [shutil.which("hf-vlp")] if shutil.which("hf-vlp") else [sys.executable, "-m", "hf_vlp.cli"]
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=600, cwd=cwd)


def test_convert_verify_prints_one_line_per_output_and_saves(tmp_path):
    folder = fixture_dir("uniter")
    config = next(folder.glob("*.json"))
    checkpoint = sorted(folder.glob("*.pt"))[0]
    result = _hf_vlp("convert", "uniter", "--checkpoint", str(checkpoint), "--config", str(config),
                     "--verify", str(folder), "--output", str(tmp_path / "out"))
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
    result = _hf_vlp("convert", "uniter", "--checkpoint", str(tmp_path / "corrupted.pt"), "--config", str(config),
                     "--verify", str(folder), "--output", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "FAIL" in result.stdout and not (tmp_path / "out").exists()
