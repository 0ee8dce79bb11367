"""Training entry points shared by `examples/`, `hf-vlp train` and the demo: pretraining with the original
objectives and fine-tuning on the shapes-world tasks, through `VLPTrainer`.

Both run unchanged under `python`, `torchrun` and `accelerate launch` (the Trainer reads the launcher's environment).
"""

from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoProcessor

from .data import shapes_dataset
from .pretraining.collators import DataCollatorForVLTask
from .recipes import (
    build_config,
    build_processor,
    head_class,
    majority_vqa_score,
    shapes_tokenizer,
    vqa_num_labels,
)
from .registry import get_spec, spec_for_model, spec_for_model_type
from .spec import resolve
from .trainer import VLPTrainer, accuracy, vqa_score

# label vocabulary of each shapes-world task, set on the head's `num_labels_field`
SHAPES_NUM_LABELS = {"vqa": vqa_num_labels, "entailment": lambda: 3, "nlvr2": lambda: 2}
SIZE_ARGUMENTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


@dataclass
class PretrainArguments:
    arch: str = field(default="uniter", metadata={"help": "registered architecture (hf_vlp.ARCHITECTURES)"})
    num_images: int = field(default=2000, metadata={"help": "shapes-world training scenes"})
    objectives: str | None = field(
        default=None, metadata={"help": "comma-separated objectives (default: the architecture's spec)"}
    )
    objective_sampling: str = field(default="joint", metadata={"help": "'joint' or 'per_batch' (UNITER's sampling)"})
    hidden_size: int | None = field(default=None, metadata={"help": "default: the architecture's small size"})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "default: the architecture's small size"})
    num_attention_heads: int | None = field(default=None, metadata={"help": "default: the architecture's small size"})
    intermediate_size: int | None = field(default=None, metadata={"help": "default: the architecture's small size"})


def run_pretraining(args, training_args):
    """Pretrain `args.arch` on shapes-world captions; saves model + processor to `training_args.output_dir`."""
    training_args.remove_unused_columns = False  # the collator reads the raw columns

    spec = get_spec(args.arch)
    if spec.pretraining_collator is None:
        raise ValueError(f"{args.arch!r} has no shapes-world pretraining recipe (its spec has no pretraining_collator)")
    train = shapes_dataset("captions", num_images=args.num_images, split="train")
    tokenizer = shapes_tokenizer()
    processor = build_processor(args.arch, tokenizer)
    sizes = {name: getattr(args, name) for name in SIZE_ARGUMENTS if getattr(args, name) is not None}
    config = build_config(args.arch, tokenizer, len(train[0]["region_features"][0]), sizes)
    model = head_class(args.arch, "pretraining")(config)
    objectives = tuple(args.objectives.split(",")) if args.objectives else spec.pretraining_objectives
    collator = resolve(spec.pretraining_collator)(
        processor, objectives=objectives, objective_sampling=args.objective_sampling, seed=training_args.seed
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
    nlvr2_head: str | None = field(
        default=None, metadata={"help": "UNITER NLVR2 variant: paired, triplet, paired-attn (default: the config's)"}
    )


def build(args, feature_dim):
    """The `args.task` head (from `args.model_name_or_path`, or a small `args.arch` model) and its processor."""
    arch = AutoConfig.from_pretrained(args.model_name_or_path).model_type if args.model_name_or_path else args.arch
    spec = spec_for_model_type(arch) if args.model_name_or_path else get_spec(arch)
    head = spec.head(args.task)
    overrides = dict(head.config_overrides)
    if head.num_labels_field and args.task in SHAPES_NUM_LABELS:
        overrides[head.num_labels_field] = SHAPES_NUM_LABELS[args.task]()
    if args.nlvr2_head is not None:
        overrides["nlvr2_head"] = args.nlvr2_head
    if args.model_name_or_path:
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
        model = spec.model_class(args.task).from_pretrained(args.model_name_or_path, **overrides)
    else:
        tokenizer = shapes_tokenizer()
        processor = build_processor(spec.name, tokenizer)
        config = build_config(spec.name, tokenizer, feature_dim, **overrides)
        model = spec.model_class(args.task)(config)
    return model, processor


def task_collator(model, processor, task):
    """`DataCollatorForVLTask` for `model`'s `task` head: the head's label count and processor arguments come from
    the spec."""
    head = spec_for_model(model).head(task)
    num_labels = getattr(model.config, head.num_labels_field) if head.num_labels_field else None
    return DataCollatorForVLTask(processor, task, num_labels=num_labels, processor_kwargs=dict(head.processor_kwargs))


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
    collator = task_collator(model, processor, args.task)
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
