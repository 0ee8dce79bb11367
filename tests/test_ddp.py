"""2-process DDP (gloo, CPU) through the Trainer equals one process on the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_train.py")


def _run(command, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_two_process_ddp_matches_one_process_on_the_global_batch(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    _run([sys.executable, str(SCRIPT), str(single), "4"], tmp_path)
    _run(["torchrun", "--standalone", "--nproc_per_node=2", str(SCRIPT), str(double), "2"], tmp_path)

    reference = torch.load(single / "weights_rank0.pt")
    rank0 = torch.load(double / "weights_rank0.pt")
    rank1 = torch.load(double / "weights_rank1.pt")
    for name, value in reference.items():
        assert torch.equal(rank0[name], rank1[name]), f"ranks differ on {name}"
        torch.testing.assert_close(
            rank0[name], value, atol=2e-5, rtol=1e-4, msg=f"DDP differs from 1 process on {name}"
        )
    single_losses = json.loads((single / "losses.json").read_text())
    double_losses = json.loads((double / "losses.json").read_text())
    assert len(single_losses) == len(double_losses) == 3
    for ours, theirs in zip(double_losses, single_losses):
        assert abs(ours - theirs) <= 1e-4 * max(1.0, abs(theirs)), (double_losses, single_losses)
