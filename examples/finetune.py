"""Fine-tune a region VLP model on a shapes-world task: vqa (default), entailment, nlvr2, refexp or retrieval.

    python examples/finetune.py --output_dir runs/vqa --task vqa --model_name_or_path runs/pretrain
    python examples/finetune.py --output_dir runs/nlvr2 --task nlvr2 --arch uniter        # from scratch
    torchrun --nproc_per_node=2 examples/finetune.py --output_dir runs/vqa --task vqa
    accelerate launch --config_file examples/accelerate/fsdp.yaml examples/finetune.py --output_dir runs/vqa
Arguments: the fields below plus every `transformers.TrainingArguments` flag (`--bf16`, `--num_train_epochs`, ...).
Prints the held-out metric next to the majority baseline (VQA) or chance.
"""

from transformers import HfArgumentParser, TrainingArguments

import hf_vlp  # noqa: F401  (registers the architectures)
from hf_vlp.training import FinetuneArguments, run_finetuning


def main(argv=None):
    parser = HfArgumentParser((FinetuneArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(argv)
    return run_finetuning(args, training_args)


if __name__ == "__main__":
    main()
