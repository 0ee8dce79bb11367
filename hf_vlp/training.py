"""Training entry points shared by `examples/`, `hf-vlp train` and the demo: pretraining with the original
objectives and fine-tuning on the shapes-world tasks, through `VLPTrainer`.

Both run unchanged under `python`, `torchrun` and `accelerate launch` (the Trainer reads the launcher's environment).
"""

from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoProcessor

from .data import SHAPES_VQA_ANSWERS, shapes_dataset
from .evaluation import (
    OVERALL,
    classification_controls,
    classifier_predict,
    grounding_controls,
    ranking_controls,
    region_predict,
)
from .pretraining.collators import DataCollatorForVLTask
from .recipes import (
    build_config,
    build_processor,
    head_class,
    shapes_tokenizer,
    vqa_num_labels,
)
from .registry import get_spec, spec_for_model, spec_for_model_type
from .spec import resolve
from .trainer import VLPTrainer

# label vocabulary of each shapes-world task, set on the head's `num_labels_field`
SHAPES_NUM_LABELS = {"vqa": vqa_num_labels, "entailment": lambda: 3, "nlvr2": lambda: 2}
# the headline metric of each task's `evaluate_task` report
SHAPES_TASK_METRICS = {"vqa": "accuracy", "entailment": "accuracy", "nlvr2": "accuracy", "refexp": "accuracy",
                       "retrieval": "recall@K"}
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


def _rows(dataset):
    return dataset if isinstance(dataset, list) else [dataset[i] for i in range(len(dataset))]


def retrieval_score(model, collator, batch_size=64):
    """`score(rows)` for `hf_vlp.evaluation.ranking_controls`: the model's match score of every text with every
    image of `rows`, an (N texts, N images) matrix, through the task collator's processor call."""

    def score(rows):
        was_training = model.training
        model.eval()
        text_field = collator.fields["text"]
        pairs = [(t, i) for t in range(len(rows)) for i in range(len(rows))]
        scores = []
        try:
            with torch.no_grad():
                for start in range(0, len(pairs), batch_size):
                    chunk = pairs[start:start + batch_size]
                    batch = collator._encode(rows, [rows[t][text_field] for t, _ in chunk], order=[i for _, i in chunk])
                    scores.append(model(**batch).logits.float().reshape(len(chunk), -1)[:, -1])
        finally:
            model.train(was_training)
        return torch.cat(scores).view(len(rows), len(rows))

    return score


def evaluate_task(model, collator, dataset, task, batch_size=64, train=None, retrieval_gallery=100, seed=0):
    """The held-out metric next to its controls (`hf_vlp.evaluation.ControlReport`; `.format()` prints the table):

      * vqa: accuracy per question type, the question-type prior, the same model with shuffled images;
      * entailment / nlvr2: accuracy, the majority label, shuffled images;
      * refexp: accuracy of the predicted region, a random box, the most frequent target position;
      * retrieval: text-to-image recall@1/5 over a gallery of the first `retrieval_gallery` rows, chance, the
        same model against a shuffled gallery.

    The priors come from `train`; without it, from `dataset` itself (an optimistic prior: the held-out majority).
    """
    if task not in SHAPES_TASK_METRICS:
        raise ValueError(f"`task` must be one of {sorted(SHAPES_TASK_METRICS)}, got {task!r}")
    rows = _rows(dataset)
    if not rows:
        raise ValueError("`dataset` is empty.")
    train = rows if train is None else train
    if task == "retrieval":
        return ranking_controls(retrieval_score(model, collator, batch_size), rows[:retrieval_gallery], seed=seed)
    if task == "refexp":
        offset = int(getattr(collator.processor.image_processor, "add_global_region", False))
        return grounding_controls(region_predict(model, collator, offset, batch_size), train, rows)
    if task == "vqa":
        # the collator puts answer `SHAPES_VQA_ANSWERS[i]` at class i (the rows' `answer_ids`)
        predict = classifier_predict(model, collator, SHAPES_VQA_ANSWERS, batch_size)
        return classification_controls(predict, train, rows, task="vqa", seed=seed)
    predict = classifier_predict(model, collator, batch_size=batch_size)
    return classification_controls(predict, train, rows, label_key="label", group_key=None, task=task, seed=seed)


def run_finetuning(args, training_args):
    """Fine-tune on a shapes-world task, print the held-out metric next to its controls (`evaluate_task`), save
    model + processor. Returns the overall metric (accuracy, or recall@1 for retrieval)."""
    training_args.remove_unused_columns = False

    train = shapes_dataset(args.task, num_images=args.num_images, split="train")
    test = shapes_dataset(args.task, num_images=args.eval_images, split="test")
    model, processor = build(args, len(train[0]["region_features"][0]))
    collator = task_collator(model, processor, args.task)
    trainer = VLPTrainer(model=model, args=training_args, train_dataset=train, data_collator=collator)
    trainer.train()

    report = evaluate_task(trainer.model, collator, test, args.task, train=train)
    print(f"held-out {args.task} {SHAPES_TASK_METRICS[args.task]} next to its controls:")
    print(report.format(), flush=True)
    trainer.save_model(training_args.output_dir)
    processor.save_pretrained(training_args.output_dir)
    return report.accuracy[OVERALL if args.task != "retrieval" else "R@1"]
