"""Retrieval throughput of FILIP's late interaction against CLIP's dot product over one cached gallery (issue 14,
item 9; `examples/filip_retrieval_bench.py`, and for `hf-vlp bench`).

Both scorers rank a gallery of `gallery_size` images for a batch of text queries from cached, L2-normalised
embeddings: FILIP scores with the text->image late interaction s^T over (patches x D) per image, CLIP with one
(D,) vector per image. Encoding is not timed (it is the same two towers for both); only what a retrieval service
does per query batch: score the gallery and take the top k. Sizes default to FILIP-base (ViT-B/32 at 224 px: 49
patches, 256-d joint space; CLIP ViT-B/32's joint space is 512-d).
"""

import time

import torch
import torch.nn.functional as F

from .late_interaction import late_interaction_similarity


def _time(function, repeats, device):
    function()  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def retrieval_throughput(
    gallery_size=10_000,
    patches=49,
    filip_dim=256,
    clip_dim=512,
    query_tokens=16,
    query_batch=64,
    chunk_size=1024,
    top_k=5,
    repeats=5,
    dtype=torch.float32,
    device=None,
    seed=0,
):
    """Queries per second of FILIP (late interaction, `chunk_size` gallery images per similarity block) and of CLIP
    (one matmul) over the same gallery size, and their ratio."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def embeds(*shape):
        return F.normalize(torch.randn(*shape, generator=generator), dim=-1).to(device=device, dtype=dtype)

    gallery_tokens = embeds(gallery_size, patches, filip_dim)
    query_tokens_ = embeds(query_batch, query_tokens, filip_dim)
    query_mask = torch.ones(query_batch, query_tokens, dtype=torch.bool, device=device)
    query_mask[:, query_tokens // 2 + 1 :] = (
        torch.rand(query_batch, query_tokens - query_tokens // 2 - 1, generator=generator).to(device) < 0.5
    )  # ragged lengths
    gallery_vectors = embeds(gallery_size, clip_dim)
    query_vectors = embeds(query_batch, clip_dim)

    @torch.no_grad()
    def filip():
        scores = late_interaction_similarity(query_tokens_, gallery_tokens, query_mask, None, chunk_size)
        return scores.topk(top_k, dim=1).indices

    @torch.no_grad()
    def clip():
        return (query_vectors @ gallery_vectors.t()).topk(top_k, dim=1).indices

    filip_seconds, clip_seconds = _time(filip, repeats, device), _time(clip, repeats, device)
    return {
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "gallery_size": gallery_size,
        "query_batch": query_batch,
        "filip_queries_per_s": query_batch / filip_seconds,
        "clip_queries_per_s": query_batch / clip_seconds,
        "filip_over_clip": clip_seconds / filip_seconds,
        "filip_gallery_mib": gallery_tokens.numel() * gallery_tokens.element_size() / 2**20,
        "clip_gallery_mib": gallery_vectors.numel() * gallery_vectors.element_size() / 2**20,
    }


__all__ = ["retrieval_throughput"]
