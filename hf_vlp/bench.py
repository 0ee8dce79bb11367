"""`hf-vlp bench ARCH`: training and inference throughput, peak memory, and achieved GFLOP/s as a fraction of a
plain matmul's GFLOP/s on the same machine (so numbers compare across machines)."""

import resource
import time

import torch

from .registry import get_spec
from .spec import Task


def _matmul_gflops(dtype, device, size=2048, repeats=5):
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def _to(value, device):
    """`value` (tensors inside dicts / tuples / lists) on `device`."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to(v, device) for key, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    return value


def _forward_flops(model, batch):
    """FLOPs of one forward pass, counted by torch's FlopCounterMode (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**batch)
    return counter.get_total_flops()


def bench_config(arch, sizes="base", task=None):
    """The config `hf-vlp bench` builds: the released base model's (`sizes="base"`, the config class defaults) or
    the spec's small sizes (`"small"`), with what the timed head needs (`Head.config_overrides`)."""
    spec = get_spec(arch)
    head = spec.head(task or spec.bench_task)
    if sizes == "base":
        return spec.config_class(**head.config_overrides)
    if sizes == "small":
        from .recipes import build_config

        return build_config(arch, **head.config_overrides)
    raise ValueError(f"`sizes` must be 'base' or 'small', got {sizes!r}")


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
    """Times `steps` training steps of `arch`'s `task` head (default: the spec's `bench_task`; fused AdamW, bf16
    autocast if asked) and inference forwards, on the spec's example inputs (labels included)."""
    spec = get_spec(arch)
    task = task or spec.bench_task
    spec.head(task)  # ValueError naming the heads the architecture has
    task = Task(task)
    config = bench_config(arch, sizes, task)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = spec.model_class(task)(config).to(device)
    batch = _to(
        spec.example_inputs_for(config, task, batch_size=batch_size, text_length=text_length, regions=regions), device
    )
    dtype = torch.bfloat16 if bf16 else torch.float32
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda" or None)
    forward_flops = _forward_flops(model.eval(), batch)  # training ~ 3x forward (backward ~ 2x)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=bf16):
            loss = model(**batch).loss
        if loss is None:
            raise ValueError(f"the {arch} {task.value} head returns no loss for its example inputs: nothing to train")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = (time.perf_counter() - start) / steps

    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=bf16):
        model(**batch)
        start = time.perf_counter()
        for _ in range(steps):
            model(**batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    infer_seconds = (time.perf_counter() - start) / steps

    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    matmul = _matmul_gflops(dtype, device)
    train_gflops = 3 * forward_flops / train_seconds / 1e9
    infer_gflops = forward_flops / infer_seconds / 1e9
    result = {
        "arch": arch,
        "task": task.value,
        "sizes": sizes,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "batch_size": batch_size,
        "train_examples_per_s": batch_size / train_seconds,
        "infer_examples_per_s": batch_size / infer_seconds,
        "train_gflops": train_gflops,
        "infer_gflops": infer_gflops,
        "matmul_gflops": matmul,
        "train_fraction_of_matmul": train_gflops / matmul,
        "infer_fraction_of_matmul": infer_gflops / matmul,
        "peak_memory_mib": peak,
    }
    for key, value in result.items():
        print_fn(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    return result
