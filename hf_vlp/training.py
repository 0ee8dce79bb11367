"""Training entry points shared by `examples/`, `hf-vlp train` and the demo: pretraining with the original
objectives and fine-tuning on the shapes-world tasks, through `VLPTrainer`.

Both run unchanged under `python`, `torchrun` and `accelerate launch` (the Trainer reads the launcher's environment).
"""

from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoProcessor

from .data import shapes_dataset
from .pretraining.collators import DataCollatorForVLPretraining, DataCollatorForVLTask
from .recipes import (
    SMALL_SIZES,
    build_config,
    build_processor,
    head_class,
    majority_vqa_score,
    shapes_tokenizer,
    vqa_num_labels,
)
from .trainer import VLPTrainer, accuracy, vqa_score


@dataclass
class PretrainArguments:
    arch: str = field(default="uniter", metadata={"help": "registered architecture (hf_vlp.ARCHITECTURES)"})
    num_images: int = field(default=2000, metadata={"help": "shapes-world training scenes"})
    objectives: str = field(default="mlm,mrfr,mrc_kl,itm", metadata={"help": "comma-separated objectives"})
    objective_sampling: str = field(default="joint", metadata={"help": "'joint' or 'per_batch' (UNITER's sampling)"})
    hidden_size: int = SMALL_SIZES["hidden_size"]
    num_hidden_layers: int = SMALL_SIZES["num_hidden_layers"]
    num_attention_heads: int = SMALL_SIZES["num_attention_heads"]
    intermediate_size: int = SMALL_SIZES["intermediate_size"]


def run_pretraining(args, training_args):
    """Pretrain `args.arch` on shapes-world captions; saves model + processor to `training_args.output_dir`."""
    training_args.remove_unused_columns = False  # the collator reads the raw columns

    train = shapes_dataset("captions", num_images=args.num_images, split="train")
    tokenizer = shapes_tokenizer()
    processor = build_processor(args.arch, tokenizer)
    sizes = {k: getattr(args, k) for k in SMALL_SIZES}
    config = build_config(args.arch, tokenizer, len(train[0]["region_features"][0]), sizes)
    model = head_class(args.arch, "pretraining")(config)
    collator = DataCollatorForVLPretraining(
        processor,
        objectives=tuple(args.objectives.split(",")),
        objective_sampling=args.objective_sampling,
        seed=training_args.seed,
    )
    trainer = VLPTrainer(model=model, args=training_args, train_dataset=train, data_collator=collator)
    trainer.train()
    trainer.save_model(training_args.output_dir)
    processor.save_pretrained(training_args.output_dir)
    return trainer



@dataclass
class FinetuneArguments:
    task: str = field(default="vqa", metadata={"help": "vqa, entailment, nlvr2, refexp or retrieval"})
    arch: str = field(default="uniter", metadata={"help": "registered architecture, when training from scratch"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "pretrained model dir or Hub id"})
    num_images: int = 1500
    eval_images: int = 200
    nlvr2_head: str = field(default="paired", metadata={"help": "UNITER NLVR2 variant: paired, triplet, paired-attn"})


def build(args, feature_dim):
    task = args.task
    overrides = {}
    if task == "vqa":
        overrides["num_labels"] = vqa_num_labels()
    elif task == "entailment":
        overrides["num_labels"] = 3
    if task == "nlvr2":
        overrides.update(type_vocab_size=3, nlvr2_head=args.nlvr2_head)
    if args.model_name_or_path:
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
        arch = AutoConfig.from_pretrained(args.model_name_or_path).model_type
        model = head_class(arch, task).from_pretrained(args.model_name_or_path, **overrides)
        if task == "nlvr2" and model.config.type_vocab_size < 3:
            raise ValueError("resize token types first: NLVR2 gives the second image token type 2")
    else:
        tokenizer = shapes_tokenizer()
        processor = build_processor(args.arch, tokenizer)
        config = build_config(args.arch, tokenizer, feature_dim, SMALL_SIZES, **overrides)
        model = head_class(args.arch, task)(config)
    return model, processor


def evaluate_task(model, collator, dataset, task, batch_size=64):
    """Held-out metric: VQA score, accuracy, or recall@1 of the positive in its retrieval group."""
    model.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            if task == "retrieval" and len(rows) < 2:
                continue
            batch = collator(rows)
            labels = batch.pop("labels", None)
            group = batch.pop("group_size", None)
            logits = model(**batch).logits
            if task == "vqa":
                scores.append(vqa_score(logits, labels) * len(rows))
            elif task == "retrieval":
                scores.append(float((logits.view(-1, group).argmax(-1) == 0).float().sum()))
            else:
                scores.append(accuracy(logits, labels) * len(rows))
    return sum(scores) / len(dataset)


def run_finetuning(args, training_args):
    """Fine-tune on a shapes-world task, print the held-out metric, save model + processor."""
    training_args.remove_unused_columns = False

    train = shapes_dataset(args.task, num_images=args.num_images, split="train")
    test = shapes_dataset(args.task, num_images=args.eval_images, split="test")
    model, processor = build(args, len(train[0]["region_features"][0]))
    collator = DataCollatorForVLTask(processor, args.task, num_labels=getattr(model.config, "num_labels", None))
    trainer = VLPTrainer(model=model, args=training_args, train_dataset=train, data_collator=collator)
    trainer.train()

    score = evaluate_task(trainer.model, collator, test, args.task)
    if args.task == "vqa":
        baseline, answer = majority_vqa_score(train, test)
        print(f"held-out VQA score {score:.3f}  (majority answer {answer!r}: {baseline:.3f})")
    else:
        print(f"held-out {args.task} {'recall@1' if args.task == 'retrieval' else 'accuracy'} {score:.3f}")
    trainer.save_model(training_args.output_dir)
    processor.save_pretrained(training_args.output_dir)
    return score

