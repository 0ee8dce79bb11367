"""FILIP retrieval throughput (text->image late interaction over cached patch embeddings) against CLIP's dot
product over the same gallery, in one run (`hf_vlp.modeling.filip.retrieval_bench.retrieval_throughput`).

    python examples/filip_retrieval_bench.py                      # 10k-image gallery, FILIP-base sizes
    python examples/filip_retrieval_bench.py --gallery_size 2000 --bf16
"""

import argparse

import torch

from hf_vlp.modeling.filip.retrieval_bench import retrieval_throughput


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery_size", type=int, default=10_000)
    parser.add_argument("--query_batch", type=int, default=64)
    parser.add_argument("--query_tokens", type=int, default=16)
    parser.add_argument("--chunk_size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    result = retrieval_throughput(
        gallery_size=args.gallery_size,
        query_batch=args.query_batch,
        query_tokens=args.query_tokens,
        chunk_size=args.chunk_size,
        repeats=args.repeats,
        dtype=torch.bfloat16 if args.bf16 else torch.float32,
        device=args.device,
    )
    for key, value in result.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
