"""Each accelerate config in examples/accelerate launches a real 2-process run (CPU, gloo; a tiny UNITER, 2 steps).

On a machine without GPUs the configs run as they are with `--num_processes 2` (not `--cpu`: accelerate's `--cpu`
flag means one process) and `use_cpu=True` in the TrainingArguments. accelerate shards with FSDP only on
accelerators: on CPU the FSDP config trains as 2-process DDP, which the test states so that a change shows. DeepSpeed
needs a compiled extension and, on CPU, Intel's oneCCL bindings, which this environment lacks: its config is
documented in docs/benchmarks.md, not launched here.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "accelerate"

SCRIPT = """
import json, sys
import torch
import hf_vlp  # noqa: F401
from hf_vlp.modeling.uniter import UniterConfig, UniterForVisualQuestionAnswering
from hf_vlp.recipes import training_arguments
from hf_vlp.trainer import VLPTrainer

output_dir = sys.argv[1]
generator = torch.Generator().manual_seed(0)
rows = [
    dict(input_ids=torch.randint(5, 50, (6,), generator=generator), visual_feats=torch.rand(4, 12, generator=generator),
         visual_pos=torch.tensor([[0.1, 0.1, 0.5, 0.6]] * 4), labels=(torch.rand(7, generator=generator) > 0.7).float())
    for _ in range(16)
]
torch.manual_seed(0)
config = UniterConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                      max_position_embeddings=16, visual_feat_dim=12, num_labels=7)
model = UniterForVisualQuestionAnswering(config)
args = training_arguments(output_dir, per_device_train_batch_size=2, max_steps=2, logging_steps=1, use_cpu=True,
                          disable_tqdm=True, ddp_backend="gloo")
trainer = VLPTrainer(model=model, args=args, train_dataset=rows)
result = trainer.train()
report = dict(world_size=trainer.args.world_size, distributed_type=str(trainer.accelerator.distributed_type),
              wrapped=type(trainer.model_wrapped).__name__, mixed_precision=str(trainer.accelerator.mixed_precision),
              steps=result.global_step, loss=result.training_loss,
              weights={name: value.tolist() for name, value in model.classifier.state_dict().items()})
with open(f"{output_dir}/rank{trainer.args.process_index}.json", "w") as handle:
    json.dump(report, handle)
# tear the gloo group down before the interpreter exits: left to exit, its threads can abort the process
# ("terminate called without an active exception") after a successful run
trainer.accelerator.wait_for_everyone()
torch.distributed.destroy_process_group()
"""


def _launch(config, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config)]
    with socket.socket() as sock:  # a free port: tests may run beside other launches
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command += ["--num_processes", "2", "--main_process_port", str(port), str(script), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "terminate called without an active exception" in result.stderr:
        # a native abort of a gloo worker thread, seen about once in five launches on this 2-core machine, with
        # or without an explicit destroy_process_group; launched once more, a second abort fails the test
        for report in tmp_path.glob("rank*.json"):
            report.unlink()
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp.yaml"])
def test_accelerate_config_launches_a_two_process_cpu_run(config, tmp_path):
    ranks = _launch(config, tmp_path)
    for report in ranks:
        assert report["world_size"] == 2 and report["steps"] == 2
        # accelerate's FSDP needs an accelerator; on CPU both configs train as DDP over gloo
        assert report["distributed_type"] == "DistributedType.MULTI_CPU"
        assert report["wrapped"] == "DistributedDataParallel"
        assert report["mixed_precision"] == "bf16"  # the configs' bf16 autocast, on CPU too
    # DDP keeps the replicas identical
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["loss"] == pytest.approx(ranks[1]["loss"])


def test_deepspeed_config_is_documented_where_it_cannot_launch():
    text = (CONFIGS / "deepspeed_zero2.yaml").read_text()
    assert "distributed_type: DEEPSPEED" in text and "zero_stage: 2" in text
    docs = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    assert "DeepSpeed" in docs.read_text()
