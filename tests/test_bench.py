"""`hf-vlp bench`: every registered architecture runs and reports every field; FLOPs match a hand count; each
comparison prints a ratio. Timings are never asserted (the machine is shared)."""

import json

import pytest
import torch

import hf_vlp
from hf_vlp import bench, cli

# small shapes: the tests check that the bench runs and reports, not how fast anything is
FAST = ["--config", "tiny", "--steps", "2", "--warmup", "1", "--batch", "2", "--seq", "8", "--matmul-size", "64"]


def _bench(capsys, *argv):
    status = cli.main(["bench", *argv])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


@pytest.mark.parametrize("arch", sorted(hf_vlp.ARCHITECTURES))
def test_bench_json_reports_every_field_for_every_architecture(arch, capsys):
    spec = hf_vlp.get_spec(arch)
    regions = ["--regions", "4"] if spec.inputs.value == "regions" else []
    result = json.loads(_bench(capsys, arch, *FAST, *regions, "--json"))
    assert set(result) == set(bench.FIELDS)
    assert result["arch"] == arch and result["task"] == spec.bench_task.value
    assert result["train_steps_kept"] + result["train_steps_disturbed"] == 2
    assert result["train_steps_kept"] >= 1 and result["infer_steps_kept"] >= 1
    for key in ("train_step_s", "infer_step_s", "train_examples_per_s", "train_gflops", "matmul_gflops"):
        assert result[key] > 0, key
    # a training step (forward + backward) costs more than the forward alone
    assert result["train_gflop_per_example"] > result["infer_gflop_per_example"] > 0
    assert result["peak_memory_mib"] > result["peak_activation_mib"] > 0
    assert result["parameters"] > 0 and result["graph_breaks"] is None


def test_flop_count_of_one_linear_layer_equals_the_hand_count():
    batch, features_in, features_out = 4, 16, 32
    layer = torch.nn.Linear(features_in, features_out)
    inputs = torch.randn(batch, features_in)
    matmul = 2 * batch * features_in * features_out  # one multiply and one add per weight per example
    assert bench.count_flops(lambda: layer(inputs)) == matmul
    # backward: the weight gradient only (the input needs none), another matmul of the same size
    assert bench.count_flops(lambda: layer(inputs).sum().backward()) == 2 * matmul


def test_disturbed_steps_are_left_out():
    timings = bench.Timings(wall=[1.0, 1.0, 1.05, 1.0, 3.0, 1.0], cpu=[2.0, 2.0, 2.1, 1.0, 6.0, 2.0])
    # step 3 got half the run's usual CPU per wall second (another process took a core); step 4 is a stall
    assert timings.disturbed() == [False, False, False, True, True, False]
    assert timings.median() == 1.0 and len(timings.kept()) == 4


@pytest.mark.parametrize(
    "arch, compare, extra",
    [
        ("uniter", "eager", []),
        ("uniter", "fp32", ["--dtype", "bf16"]),
        ("uniter", "no-grad-ckpt", ["--grad-ckpt"]),
        ("uniter", "foreach", []),
        ("vit", "transformers", []),
    ],
)
def test_each_comparison_prints_a_ratio(arch, compare, extra, capsys):
    text = _bench(capsys, arch, *FAST, "--regions", "4", "--compare", compare, *extra)
    line = next(line for line in text.splitlines() if line.strip().startswith("vs "))
    assert float(line.split(": ")[1].split("x")[0]) > 0
    if compare == "no-grad-ckpt":
        assert "peak activation memory" in line


def test_compare_transformers_loads_our_weights_into_transformers_class():
    settings = bench.BenchSettings(arch="visual_bert", batch=2, seq=8, regions=4)
    ours = bench.build_variant(settings)
    counterpart = bench.transformers_counterpart(type(ours.model))
    assert counterpart.__module__.startswith("transformers.models.visual_bert")
    theirs = bench.build_variant(settings, model_class=counterpart, state_dict=ours.model.state_dict())
    for name, value in ours.model.state_dict().items():
        assert torch.equal(value, theirs.model.state_dict()[name]), name


def test_compare_refusals_name_what_is_missing(capsys):
    assert cli.main(["bench", "uniter", *FAST, "--compare", "transformers"]) == 1
    assert "hf_vlp's own architecture" in capsys.readouterr().err
    assert cli.main(["bench", "uniter", *FAST, "--compare", "original"]) == 1
    assert "PYTHONPATH" in capsys.readouterr().err
    assert cli.main(["bench", "uniter", *FAST, "--compare", "fp32"]) == 1
    assert "--dtype bf16" in capsys.readouterr().err


@pytest.mark.parametrize("arch", sorted(hf_vlp.ARCHITECTURES))
def test_large_config_builds_or_says_why_not(arch):
    try:
        config = bench.bench_config(arch, "large")
    except ValueError as error:  # a config whose layer schedule is fixed (ERNIE-ViL) refuses 24 layers, by name
        assert "`config`='large'" in str(error) and "config JSON file" in str(error)
        return
    values = json.dumps(config.to_dict())
    assert '"hidden_size": 1024' in values or '"d_model": 1024' in values


def test_bad_settings_are_value_errors_naming_the_argument():
    with pytest.raises(ValueError, match="`dtype`"):
        bench.BenchSettings(arch="uniter", dtype="fp16")
    with pytest.raises(ValueError, match="`config`"):
        bench.BenchSettings(arch="uniter", config="huge")
    with pytest.raises(ValueError, match="`steps`"):
        bench.BenchSettings(arch="uniter", steps=0)
    with pytest.raises(ValueError, match="image_size"):
        bench.bench_config("uniter", "tiny", image_size=64)


def test_markdown_table_has_the_machine_and_one_row_per_result(capsys, tmp_path):
    path = tmp_path / "benchmarks.md"
    results = json.loads(_bench(capsys, "--all", *FAST, "--regions", "4", "--json", "--markdown", str(path)))
    text = path.read_text()
    assert "Machine: cpu " in text and f"torch {torch.__version__}" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0][2:] for row in rows] == [result["arch"] for result in results]
    assert sorted(result["arch"] for result in results) == sorted(hf_vlp.ARCHITECTURES)


def test_ddp_reports_two_processes_against_one_on_the_same_global_batch():
    settings = bench.BenchSettings(arch="uniter", batch=4, seq=8, regions=4, steps=2, warmup=1, matmul_size=64)
    result = bench.ddp_benchmark(settings, 2)
    assert set(result) == set(bench.DDP_FIELDS)
    assert result["ddp_step_s"] > 0 and result["single_step_s"] > 0 and result["ddp_speedup"] > 0


# --- the demo's budget (hf_vlp/budget.py) --------------------------------------------------------------------


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _drive(callback, clock, step_seconds, first_step_seconds=10.0, max_steps=10_000):
    """Run `callback` as a Trainer would, with steps that take `step_seconds(step)`; the steps taken."""
    from types import SimpleNamespace

    from transformers import TrainingArguments

    args = TrainingArguments("unused", max_steps=max_steps, warmup_steps=5, report_to=[])
    state, control = SimpleNamespace(global_step=0), SimpleNamespace(should_training_stop=False)
    callback.on_train_begin(args, state, control)
    while not control.should_training_stop and state.global_step < max_steps:
        clock.now += first_step_seconds if state.global_step == 0 else step_seconds(state.global_step)
        state.global_step += 1
        callback.on_step_end(args, state, control)
    return state.global_step


def test_deadline_ignores_start_up_and_ends_within_one_step_of_the_deadline():
    from hf_vlp.budget import DeadlineCallback

    clock = _Clock()
    callback = DeadlineCallback(deadline=110.0, clock=clock)
    steps = _drive(callback, clock, lambda step: 1.0)
    # a 10 s first step (start-up) would plan 11 steps in all; the steady 1 s steps fill the 100 s left after it
    assert clock.now <= 110.0 and steps == 1 + 100 and callback.estimate() == 1.0


def test_deadline_holds_when_another_process_slows_steps_tenfold_midway():
    from hf_vlp.budget import DeadlineCallback

    clock = _Clock()
    callback = DeadlineCallback(deadline=110.0, clock=clock)
    _drive(callback, clock, lambda step: 1.0 if step < 40 else 10.0)
    assert clock.now <= 110.0 + 10.0  # at most one slow step past the deadline


def test_learning_rate_decay_is_planned_to_end_at_the_deadline():
    from hf_vlp.budget import DeadlineCallback

    clock = _Clock()
    callback = DeadlineCallback(deadline=110.0, clock=clock)
    steps = _drive(callback, clock, lambda step: 1.0)
    assert callback.planned_steps == steps
    assert callback._factor(0) == 0.0 and callback._factor(5) == 1.0  # linear warm-up over warmup_steps=5
    assert callback._factor(steps) == 0.0 and 0.0 < callback._factor(steps // 2) < 1.0


def test_budget_phases_share_what_is_left_after_the_reserve():
    from hf_vlp.budget import Budget

    clock = _Clock()
    budget = Budget(100.0, reserve=0.1, clock=clock)
    clock.now = 30.0  # feature extraction took 30 s: the phases share the 60 s left before the 10 s reserve
    assert budget.deadline(share=1 / 3) == pytest.approx(50.0)
    clock.now = 50.0
    assert budget.deadline() == pytest.approx(90.0)
    with pytest.raises(ValueError, match="share"):
        budget.deadline(share=0)


def test_budget_can_count_from_the_process_start():
    import time

    from hf_vlp.budget import Budget, process_start

    started = process_start()
    assert started <= time.perf_counter()
    budget = Budget(60.0, started=started)  # the imports of this test session already used part of it
    assert budget.elapsed() >= time.perf_counter() - started - 1.0


def test_bench_times_filip_retrieval_and_bottom_up_extraction(tmp_path, capsys):
    import json

    from conftest import fixture_dir

    from hf_vlp.cli import main
    from hf_vlp.conversion import bottom_up as conversion

    assert main(["bench", "filip", "--retrieval-gallery", "64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["gallery_size"] == 64 and result["filip_over_clip"] > 0
    frcnn = fixture_dir("frcnn")
    detector = conversion.convert(frcnn / "pytorch_model.bin", frcnn / "config.yaml")
    detector.save_pretrained(tmp_path / "detector")
    images = str(next(frcnn.glob("*.png")))
    assert main(["bench", "bottom_up", "--detector", str(tmp_path / "detector"), "--images", images, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["dtype"] for row in rows} == {"float32", "bfloat16"} and all(row["images_per_s"] > 0 for row in rows)
    assert main(["bench", "bottom_up"]) != 0  # no images: a clear error
    assert "--images" in capsys.readouterr().err
