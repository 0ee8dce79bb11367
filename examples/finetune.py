"""Fine-tune a region VLP model on a shapes-world task: vqa (default), entailment, nlvr2, refexp or retrieval.

    python examples/finetune.py --output_dir runs/vqa --task vqa --model_name_or_path runs/pretrain
    python examples/finetune.py --output_dir runs/nlvr2 --task nlvr2 --arch uniter        # from scratch
    torchrun --nproc_per_node=2 examples/finetune.py --output_dir runs/vqa --task vqa
    accelerate launch --config_file examples/accelerate/fsdp.yaml examples/finetune.py --output_dir runs/vqa
Arguments: the fields below plus every `transformers.TrainingArguments` flag (`--bf16`, `--num_train_epochs`, ...).
Prints the held-out metric next to its controls (`hf_vlp.training.evaluate_task`): VQA per question type with the
question-type prior and shuffled images; entailment / NLVR2 with the majority label and shuffled images; refexp
with a random box and the position prior; retrieval recall@K with chance and a shuffled gallery.
"""

from transformers import HfArgumentParser, TrainingArguments

import hf_vlp  # noqa: F401  (registers the architectures)
from hf_vlp.training import FinetuneArguments, run_finetuning


def main(argv=None):
    parser = HfArgumentParser((FinetuneArguments, TrainingArguments))
    # this example's defaults, each still a flag: lr 5e-4 (1e-3 is unstable for the small models, the Trainer's 5e-5
    # too slow from scratch), batch 32, a budget of minutes on a CPU
    parser.set_defaults(
        learning_rate=5e-4,
        per_device_train_batch_size=32,
        max_steps=3000,
        warmup_steps=60,
        weight_decay=0.01,
        logging_steps=100,
        save_strategy="no",
        report_to="none",
    )
    args, training_args = parser.parse_args_into_dataclasses(argv)
    return run_finetuning(args, training_args)


if __name__ == "__main__":
    main()
