"""Extraction speed of the bottom-up detector: images/s of `extract_regions` (preprocessing included) with the
vectorised NMS / RoIPool against the same detector running them as straightforward per-box loops, in one run, in
float32 and under bfloat16 autocast. The loop baseline is the control: the same weights, images and pipeline, only
the two operations differ, and the detections of both paths are compared.
"""

from __future__ import annotations

import contextlib
import time

import torch


def _autocast(dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")


@contextlib.contextmanager
def _timing(detector, spent: dict):
    """Add the seconds spent in the detector's NMS and RoIPool calls to `spent` (instance attributes shadow the
    methods for the duration; the warm-up call is counted out by the caller's reset)."""
    nms, pool = detector._nms, detector.pool_regions

    def timed(function, key):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start

        return wrapper

    detector._nms, detector.pool_regions = timed(nms, "nms"), timed(pool, "roi_pool")
    try:
        yield
    finally:
        del detector._nms, detector.pool_regions


def _same_detections(first: list[dict], second: list[dict]) -> bool:
    return all(
        torch.equal(a["object_ids"], b["object_ids"]) and torch.allclose(a["boxes"], b["boxes"], atol=0.02)
        for a, b in zip(first, second)
    )


def benchmark_extraction(
    detector,
    images,
    *,
    dtypes=("float32", "bfloat16"),
    repeats: int = 1,
    loop_baseline: bool = True,
    batch_size: int = 1,
    warmup: bool = True,
    print_fn=print,
) -> list[dict]:
    """Time `detector.extract_regions(images)` (after one untimed warm-up call unless `warmup=False`) for each dtype, vectorised and, with
    `loop_baseline`, with per-box loops. Returns one row per (dtype, path): `images_per_s`, `seconds_per_image`,
    `speedup` (vectorised over loops, on the vectorised rows) and `same_detections` (loop path equals the vectorised
    one: ids exact, boxes within 0.02 px). Prints a table unless `print_fn` is None."""
    if not images:
        raise ValueError("images is empty: pass at least one image")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    detector.eval()
    rows = []
    for dtype in dtypes:
        timings, results = {}, {}
        paths = ("vectorised", "per-box loops") if loop_baseline else ("vectorised",)
        spent = {}
        for path in paths:
            spent[path] = {"nms": 0.0, "roi_pool": 0.0}
            with (
                torch.no_grad(),
                _autocast(dtype),
                detector.reference_loops(path != "vectorised"),
                _timing(detector, spent[path]),
            ):
                if warmup:
                    detector.extract_regions(images[:1], batch_size=batch_size)  # allocator, kernel selection
                    spent[path].update(nms=0.0, roi_pool=0.0)
                start = time.perf_counter()
                for _ in range(repeats):
                    results[path] = detector.extract_regions(images, batch_size=batch_size)
                timings[path] = (time.perf_counter() - start) / (repeats * len(images))
        for path in paths:
            row = dict(
                dtype=dtype,
                path=path,
                images=len(images),
                repeats=repeats,
                seconds_per_image=timings[path],
                images_per_s=1.0 / timings[path],
                mean_regions=sum(len(r["boxes"]) for r in results[path]) / len(images),
                nms_seconds_per_image=spent[path]["nms"] / (repeats * len(images)),
                roi_pool_seconds_per_image=spent[path]["roi_pool"] / (repeats * len(images)),
            )
            if loop_baseline:
                row["speedup"] = timings["per-box loops"] / timings[path]
                row["same_detections"] = _same_detections(results["vectorised"], results["per-box loops"])
            rows.append(row)
    if print_fn is not None:
        print_fn(format_benchmark(rows))
    return rows


def format_benchmark(rows: list[dict]) -> str:
    lines = [
        "| dtype | NMS / RoIPool | images/s | s/image | of which NMS s | of which RoIPool s | regions/image | vs loops "
        "| same detections |"
    ]
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        lines.append(
            f"| {row['dtype']} | {row['path']} | {row['images_per_s']:.3f} | {row['seconds_per_image']:.3f} | "
            f"{row['nms_seconds_per_image']:.3f} | {row['roi_pool_seconds_per_image']:.3f} | "
            f"{row['mean_regions']:.1f} | {row.get('speedup', float('nan')):.2f}x | {row.get('same_detections', '-')} |"
        )
    return "\n".join(lines)


__all__ = ["benchmark_extraction", "format_benchmark"]
