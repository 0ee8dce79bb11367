"""Pretrain a region VLP model (UNITER by default) on shapes-world captions with its original objectives.

The same script runs on a laptop CPU and on many GPUs:
    python examples/pretrain.py --output_dir runs/pretrain --max_steps 300
    torchrun --nproc_per_node=2 examples/pretrain.py --output_dir runs/pretrain --max_steps 300
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/pretrain.py --output_dir runs/pretrain
Arguments: the fields below plus every `transformers.TrainingArguments` flag (`--bf16`, `--learning_rate`, ...).
"""

from transformers import HfArgumentParser, TrainingArguments

import hf_vlp  # noqa: F401  (registers the architectures)
from hf_vlp.training import PretrainArguments, run_pretraining


def main(argv=None):
    parser = HfArgumentParser((PretrainArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(argv)
    return run_pretraining(args, training_args)


if __name__ == "__main__":
    main()
