"""`hf-vlp bench ARCH`: measured training and inference speed of any registered architecture.

For one architecture head (the spec's `bench_task` unless `--task` names another) on the spec's random example
inputs, the bench reports

* seconds per training step (forward, backward, optimizer) and per inference forward, as the median of the timed
  steps that were not disturbed, with their spread; examples per second;
* FLOPs per example of a training step and of an inference forward, counted by `torch.utils.flop_counter`
  (backward included, not estimated as 2x forward), and the achieved FLOP/s as a fraction of a plain square matmul
  of the same dtype timed in the same run (so figures compare across machines);
* the peak tensor memory of one training step, and its activation part (`torch.distributed._tools.mem_tracker` on
  CPU, the CUDA allocator's peak on a GPU);
* with `compile`, the number of graphs and graph breaks `torch._dynamo.explain` finds in the model's forward.

Disturbed steps. The machine may be shared: another process that takes a core mid-step makes that step slow without
the model being slower. Each timed step records its wall time and the process's CPU time (all threads). A step is
left out when (a) its CPU-per-wall ratio is below `DISTURBED_CPU_FRACTION` of the run's median ratio (the process
lost its share of the cores for part of the step), or (b) its wall time exceeds `OUTLIER_FACTOR` x the median wall
time (a stall the CPU ratio cannot see, e.g. OpenMP threads spinning while a sibling thread is descheduled). On
CUDA only (b) applies. The medians of the kept steps are reported, with `*_steps_disturbed` counting what was left
out and `cpu_per_wall` the median ratio itself (near the thread count on a quiet machine; a run disturbed throughout
shows a low value there rather than in the counts).

Comparisons (`compare=`) build a second variant that differs in one setting and interleave the two variants' timed
steps (A B B A ...), so that machine noise hits both; the ratio is the median over step pairs in which neither step
was disturbed of (baseline step time / our step time): above 1 means ours is faster.

See docs/benchmarks.md for the table and docs/design.md ("The bench contract").
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .registry import ARCHITECTURES, get_spec
from .spec import Task

CONFIG_CHOICES = ("tiny", "base", "large")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ATTENTION = ("sdpa", "eager")
OPTIMIZERS = ("adamw_fused", "adamw_foreach", "adamw_loop", "sgd")
COMPARE = ("eager", "fp32", "no-grad-ckpt", "foreach", "transformers", "original")
DEVICES = ("cpu", "cuda")
# BERT-large sizes (and Switch/T5-large's names for them), applied to every (sub)config field of these names
LARGE_SIZES = {
    **{"hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096, "num_hidden_layers": 24},
    **{"d_model": 1024, "num_heads": 16, "d_ff": 2816, "num_layers": 24},
}
DISTURBED_CPU_FRACTION = 0.8
OUTLIER_FACTOR = 1.5

# every field of a result (`hf-vlp bench --json`); a comparison adds COMPARE_FIELDS, `ddp` adds DDP_FIELDS
FIELDS = (
    "arch", "task", "config", "device", "dtype", "attn", "grad_ckpt", "compile", "optim", "batch", "seq", "regions",
    "image_size", "parameters", "threads", "steps",
    "train_step_s", "train_step_spread", "train_examples_per_s", "train_steps_kept", "train_steps_disturbed",
    "infer_step_s", "infer_step_spread", "infer_examples_per_s", "infer_steps_kept", "infer_steps_disturbed",
    "cpu_per_wall", "train_gflop_per_example", "infer_gflop_per_example", "train_gflops", "infer_gflops",
    "matmul_gflops", "train_fraction_of_matmul", "infer_fraction_of_matmul", "peak_memory_mib",
    "peak_activation_mib", "graphs", "graph_breaks", "graph_break_reasons",
)  # fmt: skip
COMPARE_FIELDS = ("compare", "baseline", "ratio", "baseline_step_s", "pairs_kept", "memory_ratio")
DDP_FIELDS = ("ddp_processes", "ddp_step_s", "single_step_s", "ddp_speedup", "ddp_pairs_kept")


@dataclass
class BenchSettings:
    """What `hf-vlp bench` measures. `config`: "tiny" (the spec's small sizes), "base" (the config class defaults:
    the released base model), "large" (BERT-large widths on every (sub)config that has them) or a config JSON path;
    `seq` / `regions`: text length and region count of the example inputs; `image_size`: overrides every (sub)config's
    `image_size`; `dtype`: "bf16" is autocast mixed precision over fp32 master weights; `attn`: "sdpa" falls back to
    eager (reported in the result) for classes that have no SDPA path; `warmup`: untimed steps first."""

    arch: str = "uniter"
    config: str = "tiny"
    task: str | None = None
    batch: int = 8
    seq: int = 20
    regions: int = 36
    image_size: int | None = None
    dtype: str = "fp32"
    attn: str = "sdpa"
    grad_ckpt: bool = False
    compile: bool = False
    optim: str = "adamw_fused"
    device: str = "cpu"
    steps: int = 10
    warmup: int = 2
    matmul_size: int = 2048
    seed: int = 0

    def __post_init__(self):
        spec = get_spec(self.arch)  # ValueError naming the registered architectures
        if self.task is not None:
            spec.head(self.task)  # ValueError naming the architecture's heads
        if self.config not in CONFIG_CHOICES and not Path(self.config).is_file():
            raise ValueError(f"`config` must be one of {CONFIG_CHOICES} or a config JSON file, got {self.config!r}")
        for name, choices in (("dtype", DTYPES), ("attn", ATTENTION), ("optim", OPTIMIZERS), ("device", DEVICES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {getattr(self, name)!r}")
        for name in ("batch", "seq", "regions", "steps", "matmul_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"`warmup` must be a non-negative integer, got {self.warmup!r}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 1):
            raise ValueError(f"`image_size` must be a positive integer, got {self.image_size!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("`device` is 'cuda' but torch sees no CUDA device")

    @property
    def head_task(self) -> Task:
        return Task(self.task or get_spec(self.arch).bench_task)


# --------------------------------------------------------------------------------------------------------------
# the model under test


def _update_fields(values: dict, updates: dict) -> int:
    """Set `updates` on every dict level of `values` (a config's `to_dict()`, sub-configs included) that already has
    the field; the number of fields set."""
    count = 0
    for key, value in list(values.items()):
        if isinstance(value, dict):
            count += _update_fields(value, updates)
        elif key in updates:
            values[key] = updates[key]
            count += 1
    return count


def bench_config(arch, config="tiny", task=None, image_size=None):
    """The config `hf-vlp bench` builds (see `BenchSettings`), with what the timed head needs
    (`Head.config_overrides`)."""
    from .recipes import build_config

    spec = get_spec(arch)
    head = spec.head(task or spec.bench_task)
    if config == "tiny":
        built = build_config(arch, **head.config_overrides)
    elif config in ("base", "large"):
        built = spec.config_class(**head.config_overrides)
    elif Path(str(config)).is_file():
        built = spec.config_class.from_json_file(str(config))
        for key, value in head.config_overrides.items():
            setattr(built, key, value)
    else:
        raise ValueError(f"`config` must be one of {CONFIG_CHOICES} or a config JSON file, got {config!r}")
    updates = dict(LARGE_SIZES) if config == "large" else {}
    if image_size is not None:
        updates["image_size"] = image_size
    if updates:
        values = built.to_dict()
        if image_size is not None and not _update_fields(copy.deepcopy(values), {"image_size": image_size}):
            raise ValueError(f"`image_size` was given but no {arch} config field is named image_size")
        _update_fields(values, updates)
        try:
            built = spec.config_class.from_dict(values)
        except ValueError as error:  # e.g. a layer schedule written for 12 layers
            raise ValueError(
                f"`config`={config!r}: {arch}'s config refuses {updates} ({error}); pass a config JSON file instead"
            ) from None
    return built


def _to(value, device):
    """`value` (tensors inside dicts / tuples / lists) on `device`."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to(v, device) for key, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    return value


def _set_attention(model, attn):
    """Use `attn` where the class supports it; the implementation in use (a class without an SDPA path stays eager)."""
    try:
        model.set_attn_implementation(attn)
    except (ValueError, ImportError, AttributeError):
        pass
    return model.config._attn_implementation or "eager"


def make_optimizer(name, parameters, lr=1e-4):
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9)
    options = {"adamw_fused": {"fused": True}, "adamw_foreach": {"foreach": True}, "adamw_loop": {"foreach": False}}
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01, **options[name])


@dataclass
class Variant:
    """A model, its optimizer and its inputs, with one training step and one inference forward to time."""

    settings: BenchSettings
    model: torch.nn.Module
    batch: dict
    optimizer: torch.optim.Optimizer
    attn: str
    forward: object = None  # the (possibly compiled) callable

    def __post_init__(self):
        self.forward = torch.compile(self.model) if self.settings.compile else self.model
        self.device = torch.device(self.settings.device)
        self.autocast = dict(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.settings.dtype == "bf16")

    def train_step(self):
        self.model.train()
        with torch.autocast(**self.autocast):
            loss = self.forward(**self.batch).loss
        if loss is None:
            raise ValueError(
                f"the {self.settings.arch} {self.settings.head_task.value} head returns no loss for its example "
                "inputs: nothing to train"
            )
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _synchronize(self.device)

    def infer_step(self):
        self.model.eval()
        with torch.no_grad(), torch.autocast(**self.autocast):
            self.forward(**self.batch)
        _synchronize(self.device)


def build_variant(settings: BenchSettings, model_class=None, state_dict=None) -> Variant:
    """The model of `settings` (or `model_class` built from the same config, loaded with `state_dict`), on its
    device, with its optimizer and the spec's example inputs."""
    spec = get_spec(settings.arch)
    task = settings.head_task
    config = bench_config(settings.arch, settings.config, task, settings.image_size)
    torch.manual_seed(settings.seed)
    model = (model_class or spec.model_class(task))(config)
    if state_dict is not None:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{type(model).__name__} does not take {settings.arch}'s weights: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
    device = torch.device(settings.device)
    model.to(device)
    attn = _set_attention(model, settings.attn)
    if settings.grad_ckpt:
        if not model.supports_gradient_checkpointing:
            raise ValueError(f"`grad_ckpt`: {type(model).__name__} does not support gradient checkpointing")
        # transformers 5 renamed gradient_checkpointing_enable (kept, deprecated) to activation_checkpointing_enable
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    inputs = spec.example_inputs_for(
        config, task, batch_size=settings.batch, text_length=settings.seq, regions=settings.regions, seed=settings.seed
    )
    optimizer = make_optimizer(settings.optim, [p for p in model.parameters() if p.requires_grad])
    return Variant(settings, model, _to(inputs, device), optimizer, attn)


# --------------------------------------------------------------------------------------------------------------
# measuring


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Wall and process-CPU seconds of each timed step, and which steps were disturbed (module docstring)."""

    wall: list = field(default_factory=list)
    cpu: list = field(default_factory=list)
    use_cpu_time: bool = True

    def record(self, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)

    def disturbed(self) -> list[bool]:
        if not self.wall:
            return []
        median_wall = statistics.median(self.wall)
        ratios = [c / w if w > 0 else 0.0 for c, w in zip(self.cpu, self.wall)]
        median_ratio = statistics.median(ratios)
        return [
            wall > OUTLIER_FACTOR * median_wall or (self.use_cpu_time and ratio < DISTURBED_CPU_FRACTION * median_ratio)
            for wall, ratio in zip(self.wall, ratios)
        ]

    def kept(self) -> list[float]:
        return [wall for wall, bad in zip(self.wall, self.disturbed()) if not bad]

    def median(self) -> float:
        return statistics.median(self.kept())

    def spread(self) -> float:
        """Interquartile range of the kept steps over their median (0 with fewer than 2 kept steps)."""
        kept = sorted(self.kept())
        if len(kept) < 2:
            return 0.0
        low, _, high = statistics.quantiles(kept, n=4, method="inclusive")
        return (high - low) / statistics.median(kept)

    def cpu_per_wall(self) -> float:
        return statistics.median(c / w for c, w in zip(self.cpu, self.wall) if w > 0)


def _timings(device):
    return Timings(use_cpu_time=torch.device(device).type == "cpu")


def _matmul_gflops(dtype, device, size=2048, repeats=7):
    """GFLOP/s of a plain `size` x `size` matmul in `dtype` on `device`: the median of `repeats` undisturbed runs."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    timings = _timings(device)
    for _ in range(repeats):
        timings.record(lambda: (a @ b, _synchronize(device)))
    return 2 * size**3 / timings.median() / 1e9


def count_flops(fn) -> int:
    """FLOPs of calling `fn()`, counted by torch's FlopCounterMode (matmuls, convolutions, attention; forward and
    whatever backward `fn` runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def _flops_per_example(variant: Variant):
    """(training-step FLOPs, inference-forward FLOPs) per example, counted on the uncompiled model."""
    eager = copy.copy(variant)
    eager.forward = variant.model

    def train():
        eager.model.train()
        with torch.autocast(**eager.autocast):
            eager.model(**eager.batch).loss.backward()
        eager.model.zero_grad(set_to_none=True)

    batch = variant.settings.batch
    return count_flops(train) / batch, count_flops(eager.infer_step) / batch


def _tensor_bytes(tensors) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors if torch.is_tensor(tensor))


def peak_memory_mib(variant: Variant) -> tuple[float, float]:
    """(peak tensor memory of one training step, its activation memory) in MiB. The activation memory is what is
    alive at the end of the forward pass above the weights, buffers and optimizer state (gradients are not allocated
    yet): the tensors saved for backward, which gradient checkpointing lowers. CPU: MemTracker, which follows every
    tensor's storage; CUDA: the allocator's counters."""
    device = torch.device(variant.settings.device)
    model, optimizer = variant.model, variant.optimizer
    state = [value for per_parameter in optimizer.state.values() for value in per_parameter.values()]
    persistent = _tensor_bytes([*model.parameters(), *model.buffers(), *state])
    after_forward = {}

    def step(read_memory):
        model.train()
        with torch.autocast(**variant.autocast):
            loss = model(**variant.batch).loss
        after_forward["bytes"] = read_memory()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step(lambda: torch.cuda.memory_allocated(device))
        peak = torch.cuda.max_memory_allocated(device)
    else:
        from torch.distributed._tools.mem_tracker import MemTracker

        def tracked_step():
            tracker = MemTracker()
            tracker.track_external(model, optimizer)
            with tracker:
                step(lambda: tracker.get_tracker_snapshot("current")[device]["Total"])
            return tracker.get_tracker_snapshot("peak")[device]["Total"]

        try:
            peak = tracked_step()
        except RuntimeError as error:
            if "cannot register a hook" not in str(error):
                raise
            # MemTracker hooks every module output; a frozen sub-module (a frozen CNN stem) returns tensors without
            # grad, which it cannot hook. Measured with every parameter trainable instead: an upper bound (the
            # frozen part's activations are counted too).
            frozen = [p for p in model.parameters() if not p.requires_grad]
            for parameter in frozen:
                parameter.requires_grad_(True)
            try:
                peak = tracked_step()
            finally:
                for parameter in frozen:
                    parameter.requires_grad_(False)
                    parameter.grad = None
    return peak / 2**20, max(0, after_forward["bytes"] - persistent) / 2**20


def graph_breaks(variant: Variant):
    """(graphs, graph breaks, first reasons) that torch._dynamo.explain finds in the model's training forward."""
    import torch._dynamo

    variant.model.train()
    with torch.autocast(**variant.autocast):
        explained = torch._dynamo.explain(variant.model)(**variant.batch)
    torch._dynamo.reset()
    reasons = [getattr(reason, "reason", str(reason)).splitlines()[0] for reason in explained.break_reasons[:3]]
    return explained.graph_count, explained.graph_break_count, reasons


def _time_steps(settings, steps_of):
    """Warm up, then record the timed steps of every (name, variant, timings) in `steps_of` interleaved A B B A."""
    for _ in range(settings.warmup):
        for _, step, _ in steps_of:
            step()
    for index in range(settings.steps):
        order = steps_of if index % 2 == 0 else steps_of[::-1]
        for _, step, timings in order:
            timings.record(step)


# --------------------------------------------------------------------------------------------------------------
# one run


def benchmark(settings: BenchSettings, compare: str | None = None, ddp: int | None = None) -> dict:
    """Measure `settings` (every key of FIELDS); with `compare`, also the named baseline in the same run
    (COMPARE_FIELDS); with `ddp`, a `ddp`-process DDP step against this process on the same global batch."""
    if compare is not None and compare not in COMPARE:
        raise ValueError(f"`compare` must be one of {COMPARE}, got {compare!r}")
    if compare == "original":
        raise ValueError(ORIGINAL_MESSAGE)
    threads = torch.get_num_threads()
    variant = build_variant(settings)
    baseline = _baseline_variant(settings, variant, compare) if compare else None
    device = settings.device
    train, infer = _timings(device), _timings(device)
    timed = [("train", variant.train_step, train)]
    if baseline is not None:
        baseline_train = _timings(device)
        timed.append(("baseline", baseline.train_step, baseline_train))
    _time_steps(settings, timed)
    _time_steps(settings, [("infer", variant.infer_step, infer)])

    train_flops, infer_flops = _flops_per_example(variant)
    # (the size keyword only when it differs from the default: callers may replace _matmul_gflops(dtype, device))
    size = {} if settings.matmul_size == 2048 else {"size": settings.matmul_size}
    matmul = _matmul_gflops(DTYPES[settings.dtype], device, **size)
    peak, activation = peak_memory_mib(variant)
    graphs = breaks = None
    reasons = []
    if settings.compile:
        graphs, breaks, reasons = graph_breaks(variant)
    train_s, infer_s = train.median(), infer.median()
    train_gflops = train_flops * settings.batch / train_s / 1e9
    infer_gflops = infer_flops * settings.batch / infer_s / 1e9
    result = {
        **{key: value for key, value in asdict(settings).items() if key in FIELDS},
        "task": settings.head_task.value,
        "attn": variant.attn,
        "parameters": sum(p.numel() for p in variant.model.parameters()),
        "threads": threads,
        "train_step_s": train_s,
        "train_step_spread": train.spread(),
        "train_examples_per_s": settings.batch / train_s,
        "train_steps_kept": len(train.kept()),
        "train_steps_disturbed": len(train.wall) - len(train.kept()),
        "infer_step_s": infer_s,
        "infer_step_spread": infer.spread(),
        "infer_examples_per_s": settings.batch / infer_s,
        "infer_steps_kept": len(infer.kept()),
        "infer_steps_disturbed": len(infer.wall) - len(infer.kept()),
        "cpu_per_wall": train.cpu_per_wall(),
        "train_gflop_per_example": train_flops / 1e9,
        "infer_gflop_per_example": infer_flops / 1e9,
        "train_gflops": train_gflops,
        "infer_gflops": infer_gflops,
        "matmul_gflops": matmul,
        "train_fraction_of_matmul": train_gflops / matmul,
        "infer_fraction_of_matmul": infer_gflops / matmul,
        "peak_memory_mib": peak,
        "peak_activation_mib": activation,
        "graphs": graphs,
        "graph_breaks": breaks,
        "graph_break_reasons": reasons,
    }
    result = {key: result[key] for key in FIELDS}
    if baseline is not None:
        result.update(_comparison(compare, variant, baseline, train, baseline_train))
    if ddp:
        del variant, baseline
        result.update(ddp_benchmark(settings, ddp))
    return result


# --------------------------------------------------------------------------------------------------------------
# comparisons

ORIGINAL_MESSAGE = (
    "`--compare original` times the original research code next to hf_vlp, and needs that code importable: clone "
    "the original repository (e.g. ChenRocks/UNITER for UNITER; its `model/` package needs only a CPU shim for apex's "
    "FusedLayerNorm: `apex.normalization.FusedLayerNorm = torch.nn.LayerNorm`), put it on PYTHONPATH and convert its "
    "checkpoint with `hf-vlp convert`. The original code is not importable in this environment, so no ratio can be "
    "measured; the fixtures in tests/ hold the original's outputs for parity instead (docs/benchmarks.md)."
)


def transformers_counterpart(model_class):
    """transformers' own class that `model_class` refines (hf_vlp keeps transformers' class for VisualBERT, LXMERT,
    ViLT, BLIP, CLIP, ViT and Switch Transformers and subclasses it to fix or extend it); None for hf_vlp's own
    architectures."""
    from transformers import PreTrainedModel

    for cls in model_class.__mro__:
        if (
            cls.__module__.startswith("transformers.models.")
            and issubclass(cls, PreTrainedModel)
            and not cls.__name__.endswith("PreTrainedModel")
        ):
            return cls
    return None


def _baseline_variant(settings, variant, compare):
    def needs(condition, flag):
        if not condition:
            raise ValueError(f"`--compare {compare}` compares against {flag}: run with a setting that differs")

    if compare == "eager":
        needs(variant.attn != "eager", "eager attention, but this model runs eager attention already (--attn sdpa)")
        return build_variant(BenchSettings(**{**asdict(settings), "attn": "eager"}))
    if compare == "fp32":
        needs(settings.dtype != "fp32", "fp32 (pass --dtype bf16)")
        return build_variant(BenchSettings(**{**asdict(settings), "dtype": "fp32"}))
    if compare == "no-grad-ckpt":
        needs(settings.grad_ckpt, "no gradient checkpointing (pass --grad-ckpt)")
        return build_variant(BenchSettings(**{**asdict(settings), "grad_ckpt": False}))
    if compare == "foreach":
        needs(settings.optim != "adamw_foreach", "the foreach AdamW (pass another --optim)")
        return build_variant(BenchSettings(**{**asdict(settings), "optim": "adamw_foreach"}))
    counterpart = transformers_counterpart(type(variant.model))
    if counterpart is None:
        have = sorted(
            name
            for name, spec in ARCHITECTURES.items()
            if transformers_counterpart(spec.model_class(spec.bench_task)) is not None
        )
        raise ValueError(
            f"`--compare transformers`: {settings.arch} is hf_vlp's own architecture; transformers has no class for "
            f"it (transformers also has: {have})"
        )
    return build_variant(settings, model_class=counterpart, state_dict=variant.model.state_dict())


def _pair_ratios(ours: Timings, theirs: Timings):
    bad_ours, bad_theirs = ours.disturbed(), theirs.disturbed()
    return [
        their / our
        for our, their, bad_a, bad_b in zip(ours.wall, theirs.wall, bad_ours, bad_theirs)
        if not (bad_a or bad_b)
    ]


def _comparison(compare, variant, baseline, train, baseline_train):
    ratios = _pair_ratios(train, baseline_train)
    ratio = statistics.median(ratios) if ratios else baseline_train.median() / train.median()
    memory_ratio = None
    if compare == "no-grad-ckpt":
        peak, activation = peak_memory_mib(variant)
        baseline_peak, baseline_activation = peak_memory_mib(baseline)
        memory_ratio = (baseline_activation / activation) if activation else baseline_peak / peak
    names = {
        "eager": "eager attention",
        "fp32": "fp32",
        "no-grad-ckpt": "no gradient checkpointing",
        "foreach": "foreach (unfused) AdamW",
        "transformers": f"transformers.{type(baseline.model).__name__}, same weights",
    }
    return {
        "compare": compare,
        "baseline": names[compare],
        "ratio": ratio,
        "baseline_step_s": baseline_train.median(),
        "pairs_kept": len(ratios),
        "memory_ratio": memory_ratio,
    }


# --------------------------------------------------------------------------------------------------------------
# DDP: N processes on the same global batch, interleaved with this process's single-process step


def _ddp_worker(rank, world_size, settings_dict, port, barrier, queue):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, settings_dict.pop("threads") // world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        settings = BenchSettings(**settings_dict)
        variant = build_variant(settings)
        # each rank holds its shard of the global batch (the example inputs are drawn with one seed per rank);
        # heads may leave modules unused for a task (a pooler, another head's layers), which DDP must be told
        variant.model = torch.nn.parallel.DistributedDataParallel(variant.model, find_unused_parameters=True)
        variant.forward = variant.model
        walls = []
        for _ in range(settings.warmup + settings.steps):
            barrier.wait()
            start = time.perf_counter()
            variant.train_step()
            dist.barrier()
            walls.append(time.perf_counter() - start)
            barrier.wait()
        if rank == 0:
            queue.put(walls[settings.warmup :])
    except BaseException:
        barrier.abort()  # the parent's wait fails at once instead of timing out
        raise
    finally:
        dist.destroy_process_group()


def ddp_benchmark(settings: BenchSettings, processes: int) -> dict:
    """Seconds per training step of `processes` DDP processes (gloo), each on batch / processes examples, against
    this process alone on the whole batch; the single-process steps run while the DDP ranks wait, alternating."""
    import socket

    import torch.multiprocessing as mp

    if processes < 2 or settings.batch % processes:
        raise ValueError(f"`ddp` must be >= 2 and divide the batch ({settings.batch}), got {processes}")
    if settings.device != "cpu":
        raise ValueError("`ddp` is measured on CPU (gloo) here; on GPUs use accelerate launch (docs/benchmarks.md)")
    single = build_variant(settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    barrier, queue = context.Barrier(processes + 1), context.SimpleQueue()
    shard = {**asdict(settings), "batch": settings.batch // processes, "threads": torch.get_num_threads()}
    workers = [
        context.Process(target=_ddp_worker, args=(rank, processes, {**shard, "seed": settings.seed + rank}, port,
                                                  barrier, queue))
        for rank in range(processes)
    ]  # fmt: skip
    for worker in workers:
        worker.start()
    single_timings = _timings("cpu")
    try:
        for index in range(settings.warmup + settings.steps):
            barrier.wait(timeout=600)  # the ranks run one step
            barrier.wait(timeout=600)
            if index >= settings.warmup:
                single_timings.record(single.train_step)
            else:
                single.train_step()
        ddp_walls = queue.get()
    except threading.BrokenBarrierError:
        ddp_walls = None
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.terminate()
    failed = [worker.exitcode for worker in workers if worker.exitcode != 0]
    if failed or ddp_walls is None:
        raise RuntimeError(f"a DDP rank exited with status {failed}")
    ddp_timings = Timings(wall=ddp_walls, cpu=[0.0] * len(ddp_walls), use_cpu_time=False)
    ratios = _pair_ratios(ddp_timings, single_timings)
    return {
        "ddp_processes": processes,
        "ddp_step_s": ddp_timings.median(),
        "single_step_s": single_timings.median(),
        "ddp_speedup": statistics.median(ratios) if ratios else single_timings.median() / ddp_timings.median(),
        "ddp_pairs_kept": len(ratios),
    }


# --------------------------------------------------------------------------------------------------------------
# reporting


def machine_description() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    from . import __version__ as hf_vlp_version

    description = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hf_vlp": hf_vlp_version,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        description["gpu"] = torch.cuda.get_device_name()
    return description


def format_result(result: dict) -> str:
    """A few human-readable lines."""
    lines = [
        f"{result['arch']} {result['task']} ({result['config']}, {result['parameters'] / 1e6:.1f}M parameters, "
        f"batch {result['batch']}, {result['dtype']}, {result['attn']}, {result['optim']}"
        f"{', grad-ckpt' if result['grad_ckpt'] else ''}{', compiled' if result['compile'] else ''}, "
        f"{result['device']}, {result['threads']} threads)",
        f"  train: {result['train_step_s'] * 1e3:.1f} ms/step (spread {result['train_step_spread']:.0%}, "
        f"{result['train_steps_disturbed']} of {result['steps']} steps disturbed), "
        f"{result['train_examples_per_s']:.1f} examples/s, {result['train_gflop_per_example']:.3f} GFLOP/example, "
        f"{result['train_gflops']:.1f} GFLOP/s = {result['train_fraction_of_matmul']:.0%} of a "
        f"{result['dtype']} matmul ({result['matmul_gflops']:.0f} GFLOP/s)",
        f"  infer: {result['infer_step_s'] * 1e3:.1f} ms/step, {result['infer_examples_per_s']:.1f} examples/s, "
        f"{result['infer_gflops']:.1f} GFLOP/s = {result['infer_fraction_of_matmul']:.0%} of matmul",
        f"  peak tensor memory {result['peak_memory_mib']:.1f} MiB"
        + (f" (activations {result['peak_activation_mib']:.1f} MiB)" if result["peak_activation_mib"] else ""),
    ]
    if result["graph_breaks"] is not None:
        lines.append(f"  torch.compile: {result['graphs']} graph(s), {result['graph_breaks']} graph break(s)")
        lines.extend(f"    break: {reason}" for reason in result["graph_break_reasons"])
    if "ratio" in result:
        line = (
            f"  vs {result['baseline']}: {result['ratio']:.2f}x "
            f"(baseline {result['baseline_step_s'] * 1e3:.1f} ms/step; median of {result['pairs_kept']} "
            "interleaved step pairs)"
        )
        if result["memory_ratio"] is not None:
            line += f"; peak activation memory {result['memory_ratio']:.2f}x lower"
        lines.append(line)
    if "ddp_speedup" in result:
        lines.append(
            f"  {result['ddp_processes']}-process DDP: {result['ddp_step_s'] * 1e3:.1f} ms/step vs 1 process "
            f"{result['single_step_s'] * 1e3:.1f} ms/step on the same global batch: {result['ddp_speedup']:.2f}x"
        )
    return "\n".join(lines)


MARKDOWN_COLUMNS = (
    ("arch", "architecture", "{}"),
    ("task", "head", "{}"),
    ("config", "config", "{}"),
    ("parameters", "params (M)", "{:.1f}"),
    ("dtype", "dtype", "{}"),
    ("attn", "attention", "{}"),
    ("train_step_s", "train ms/step", "{:.1f}"),
    ("train_step_spread", "spread", "{:.0%}"),
    ("train_examples_per_s", "train ex/s", "{:.1f}"),
    ("train_gflop_per_example", "GFLOP/ex (train)", "{:.3f}"),
    ("train_fraction_of_matmul", "train % of matmul", "{:.0%}"),
    ("infer_examples_per_s", "infer ex/s", "{:.1f}"),
    ("peak_memory_mib", "peak MiB", "{:.0f}"),
    ("train_steps_disturbed", "disturbed steps", "{}"),
    ("cpu_per_wall", "CPU/wall", "{:.2f}"),
)


MARKDOWN_NOTES = """
## Reading the table

* **train ms/step**: median wall time of one training step (forward, backward, optimizer) over the timed steps that
  were not disturbed; **spread**: their interquartile range over the median. **disturbed steps**: steps left out
  because the process got less than 80% of its usual CPU time per wall second (another process took a core) or took
  more than 1.5x the median (hf_vlp/bench.py, `Timings`). **CPU/wall**: the run's median process CPU seconds per wall
  second, near `torch_threads` on a quiet machine; a run disturbed throughout shows a low value here rather than
  disturbed steps. Timings on a shared machine are indicative only.
* **GFLOP/ex (train)**: FLOPs of one training step per example, counted by `torch.utils.flop_counter` (matmuls,
  convolutions, attention; backward counted, not estimated). **train % of matmul**: achieved FLOP/s over the FLOP/s of
  a plain 2048x2048 matmul of the same dtype, timed in the same run.
* **peak MiB**: peak tensor memory of one training step (weights, gradients, optimizer state, activations,
  temporaries), followed tensor by tensor with `torch.distributed._tools.mem_tracker` (CUDA: the allocator's peak);
  `peak_activation_mib` in the JSON: what is alive at the end of the forward pass above weights and optimizer state.
* **attention**: the implementation in use; classes transformers writes without an SDPA path (VisualBERT, LXMERT,
  ViLT, BLIP, Switch Transformers) run eager attention whatever `--attn` asks.

## Ratios measured in one run

`hf-vlp bench ARCH --compare eager|fp32|no-grad-ckpt|foreach|transformers` builds a second variant differing in one
setting and interleaves the two variants' steps (A B B A ...); the ratio is the median, over step pairs where neither step was
disturbed, of baseline time / our time. `--compare transformers` loads our weights into transformers' own class (the
architectures hf_vlp keeps from transformers and refines). `--ddp 2` times a 2-process DDP step (gloo, each rank on half
of the batch) alternating with this process alone on the whole batch.

`--compare original` needs the original research code importable: clone it (e.g. ChenRocks/UNITER), put it on
PYTHONPATH (UNITER's `model/` needs only `apex.normalization.FusedLayerNorm = torch.nn.LayerNorm` on a CPU), and
convert its checkpoint with `hf-vlp convert`. Without it the command says so; parity with the originals is checked
by the fixture tests instead.

## Scaling out

The configs in `examples/accelerate` launch with `accelerate launch --config_file ... --num_processes N`. On a CPU-only
machine run them with `CUDA_VISIBLE_DEVICES=` and `--use_cpu` in the TrainingArguments (accelerate's `--cpu` flag
means one process); `tests/test_accelerate_launch.py` launches DDP and FSDP that way with 2 processes. accelerate shards
with FSDP only on accelerators, so on CPU the FSDP config trains as DDP. DeepSpeed ZeRO-2 (`deepspeed_zero2.yaml`) is
for GPU machines: on CPU DeepSpeed needs Intel's oneCCL bindings, which are not installed here, so it is not launched
in the tests.
"""


def markdown_table(results, machine=None, command=None) -> str:
    """docs/benchmarks.md: the machine, the command, and one row per result."""
    machine = machine or machine_description()
    scale = {"parameters": 1e-6, "train_step_s": 1e3}
    lines = [
        "# Benchmarks",
        "",
        "Generated by `hf-vlp bench --all --json --markdown docs/benchmarks.md` (hf_vlp/bench.py; the fields are "
        'described there and in docs/design.md, "The bench contract"). Regenerate it rather than editing it.',
        "",
        f"Command: `{command}`" if command else "",
        "",
        "Machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()),
        "",
        "| " + " | ".join(title for _, title, _ in MARKDOWN_COLUMNS) + " |",
        "|" + "---|" * len(MARKDOWN_COLUMNS),
    ]
    for result in results:
        cells = []
        for key, _, form in MARKDOWN_COLUMNS:
            value = result[key]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = value * scale.get(key, 1)
            cells.append(form.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + MARKDOWN_NOTES


def run_benchmark(
    arch="uniter",
    batch_size=32,
    steps=10,
    bf16=False,
    sizes="base",
    task=None,
    text_length=40,
    regions=36,
    print_fn=print,
):
    """The earlier keyword API (`sizes` "base" / "small"): `benchmark(BenchSettings(...))`, one `print_fn` line per
    field."""
    if sizes not in ("base", "small"):
        raise ValueError(f"`sizes` must be 'base' or 'small', got {sizes!r}")
    settings = BenchSettings(
        arch=arch,
        config="tiny" if sizes == "small" else "base",
        task=task,
        batch=batch_size,
        seq=text_length,
        regions=regions,
        dtype="bf16" if bf16 else "fp32",
        steps=steps,
        warmup=1,
    )
    result = benchmark(settings)
    for key, value in result.items():
        print_fn(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    return result


def to_json(results) -> str:
    return json.dumps(results, indent=1, default=str)
