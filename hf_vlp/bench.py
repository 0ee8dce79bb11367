"""`hf-vlp bench ARCH`: training and inference throughput, peak memory, and achieved GFLOP/s as a fraction of a
plain matmul's GFLOP/s on the same machine (so numbers compare across machines)."""

import resource
import time

import torch

from .registry import ARCHITECTURES


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


def _batch(config, batch_size, text_len=40, regions=36, device="cpu"):
    return dict(
        input_ids=torch.randint(1, config.vocab_size, (batch_size, text_len), device=device),
        attention_mask=torch.ones(batch_size, text_len, dtype=torch.long, device=device),
        visual_feats=torch.rand(batch_size, regions, config.visual_feat_dim, device=device),
        visual_pos=torch.tensor([0.1, 0.1, 0.6, 0.7], device=device).expand(batch_size, regions, 4).contiguous(),
    )


def run_benchmark(arch="uniter", batch_size=32, steps=10, bf16=False, sizes="base", print_fn=print):
    """Times `steps` VQA training steps (fused AdamW, bf16 autocast if asked) and inference forwards."""
    info = ARCHITECTURES[arch]
    config = info["config"]() if sizes == "base" else info["config"](
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = info["heads"]["vqa"](config).to(device)
    batch = _batch(config, batch_size, device=device)
    labels = torch.zeros(batch_size, config.num_labels, device=device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda" or None)
    # forward FLOPs ~ 2 * parameters * tokens (matmuls) + attention; training ~ 3x forward
    tokens = batch_size * (batch["input_ids"].shape[1] + batch["visual_feats"].shape[1])
    parameters = sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)
    forward_flops = 2 * parameters * tokens

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=bf16):
            loss = model(**batch, labels=labels).loss
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

    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    matmul = _matmul_gflops(dtype, device)
    train_gflops = 3 * forward_flops / train_seconds / 1e9
    infer_gflops = forward_flops / infer_seconds / 1e9
    result = {
        "arch": arch, "device": str(device), "dtype": str(dtype).replace("torch.", ""), "batch_size": batch_size,
        "train_examples_per_s": batch_size / train_seconds, "infer_examples_per_s": batch_size / infer_seconds,
        "train_gflops": train_gflops, "infer_gflops": infer_gflops, "matmul_gflops": matmul,
        "train_fraction_of_matmul": train_gflops / matmul, "infer_fraction_of_matmul": infer_gflops / matmul,
        "peak_memory_mib": peak,
    }
    for key, value in result.items():
        print_fn(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    return result
