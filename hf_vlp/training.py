"""Training entry points shared by `examples/`, `hf-vlp train` and the demo: pretraining with the original
objectives and fine-tuning on the shapes-world tasks, through `VLPTrainer`.

Both run unchanged under `python`, `torchrun` and `accelerate launch` (the Trainer reads the launcher's environment).
"""

import inspect
import os
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoProcessor, enable_full_determinism, set_seed
from transformers.trainer_utils import get_last_checkpoint

from .data import SHAPES_VQA_ANSWERS, shapes_dataset
from .data.shapes import SHAPES_CLASSES
from .evaluation import (
    OVERALL,
    as_rows,
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
from .spec import InputKind, Task, resolve
from .trainer import VLPTrainer, compute_metrics_for_task

# label vocabulary of each shapes-world task, set on the head's `num_labels_field`
SHAPES_NUM_LABELS = {"vqa": vqa_num_labels, "entailment": lambda: 3, "nlvr2": lambda: 2}
# the headline metric of each task's `evaluate_task` report
SHAPES_TASK_METRICS = {
    "vqa": "accuracy",
    "entailment": "accuracy",
    "nlvr2": "accuracy",
    "refexp": "accuracy",
    "retrieval": "recall@K",
}
SIZE_ARGUMENTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
# the fine-tuning tasks with shapes-world data and a collator (`DataCollatorForVLTask`)
SHAPES_FINETUNE_TASKS = ("vqa", "entailment", "nlvr2", "refexp", "retrieval")


def check_trainable(spec, task):
    """ValueError unless `hf-vlp train` can train `spec`'s `task` head on the shapes world: a region model (the
    shapes world's processors and collators feed region features) with a head for `task`, and shapes-world data
    and a collator for it ("pretraining" through the spec's pretraining collator)."""
    where = f"architecture {spec.name!r}, task {str(task)!r}"
    if spec.inputs is not InputKind.REGIONS or spec.processor is None:
        raise ValueError(
            f"hf-vlp train cannot train {where}: {spec.name} takes {spec.inputs.value}, and the shapes-world "
            "recipes feed region features (train it with your own data through VLPTrainer)"
        )
    if task not in spec.tasks:
        raise ValueError(f"hf-vlp train cannot train {where}: {spec.name} has no such head; it has {spec.tasks}")
    if Task(task) is Task.PRETRAINING:
        if spec.pretraining_collator is None:
            raise ValueError(f"hf-vlp train cannot train {where}: its spec has no shapes-world pretraining_collator")
    elif task not in SHAPES_FINETUNE_TASKS:
        raise ValueError(
            f"hf-vlp train cannot train {where}: the shapes world has no data and collator for {str(task)!r} "
            f"(fine-tuning tasks: {SHAPES_FINETUNE_TASKS}, or 'pretraining' with `hf-vlp train pretrain`)"
        )


def trainable_tasks(arch):
    """The tasks of `arch` that `hf-vlp train` trains on the shapes world (`check_trainable` passes)."""
    spec = get_spec(arch)
    tasks = []
    for task in spec.tasks:
        try:
            check_trainable(spec, task)
        except ValueError:
            continue
        tasks.append(task)
    return tasks


def seed_everything(training_args):
    """Seed python, numpy and torch from `training_args.seed` *before* the model is built, so the same seed gives
    the same initial weights (the Trainer seeds only in its own `__init__`, after the model exists);
    `--full_determinism` also switches torch to deterministic algorithms."""
    if training_args.full_determinism:
        enable_full_determinism(training_args.seed)
    else:
        set_seed(training_args.seed)


def resume_checkpoint(training_args):
    """The checkpoint `--resume_from_checkpoint` names: a `checkpoint-N` folder, or "last" / "true" for the newest
    one in `output_dir`; None when not resuming. ValueError for a folder that is not there."""
    value = training_args.resume_from_checkpoint
    if value is None or value is False or str(value).lower() in ("", "false", "none"):
        return None
    if value is True or str(value).lower() in ("last", "true"):
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise ValueError(
                f"--resume_from_checkpoint {value}: no checkpoint-N folder in output_dir {training_args.output_dir!r}"
            )
        return last
    if not os.path.isdir(value):
        raise ValueError(f"--resume_from_checkpoint: {value!r} is not a checkpoint folder")
    return value


def check_train_arguments(args, training_args):
    """The checks `run_pretraining` / `run_finetuning` make before building anything (ValueError): the architecture
    x task pair trains on the shapes world, the checkpoint to resume from exists."""
    if isinstance(args, PretrainArguments):
        check_trainable(get_spec(args.arch), "pretraining")
    else:
        model_type = AutoConfig.from_pretrained(args.model_name_or_path).model_type if args.model_name_or_path else None
        check_trainable(spec_for_model_type(model_type) if model_type else get_spec(args.arch), args.task)
    resume_checkpoint(training_args)


def _evaluates(training_args):
    return str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)) != "no"


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
    """Pretrain `args.arch` on shapes-world captions; saves model + processor to `training_args.output_dir`.

    Resuming restores weights, optimizer, scheduler, data order and the global RNGs, but not the pretraining
    collator's own masking / objective generators (they restart from `seed`), so a resumed pretraining run is close
    to, not bit-equal with, the uninterrupted one; a resumed fine-tuning run is bit-equal."""
    training_args.remove_unused_columns = False  # the collator reads the raw columns

    spec = get_spec(args.arch)
    check_trainable(spec, "pretraining")
    checkpoint = resume_checkpoint(training_args)
    train = shapes_dataset("captions", num_images=args.num_images, split="train")
    tokenizer = shapes_tokenizer()
    processor = build_processor(args.arch, tokenizer)
    sizes = {name: getattr(args, name) for name in SIZE_ARGUMENTS if getattr(args, name) is not None}
    config = build_config(args.arch, tokenizer, len(train[0]["region_features"][0]), sizes)
    # seeded right before the weights are drawn: making the data may draw random numbers, or not when cached
    seed_everything(training_args)
    model = head_class(args.arch, "pretraining")(config)
    objectives = tuple(args.objectives.split(",")) if args.objectives else spec.pretraining_objectives
    collator = resolve(spec.pretraining_collator)(
        processor, objectives=objectives, objective_sampling=args.objective_sampling, seed=training_args.seed
    )
    # evaluation during pretraining: the objectives' loss on validation captions (there is no task metric)
    validation = None
    if _evaluates(training_args):
        validation = shapes_dataset("captions", num_images=max(1, args.num_images // 10), split="validation")
    trainer = VLPTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=collator,
        processing_class=processor,
    )
    if validation is not None and training_args.label_names is None:
        # a batch carries the labels of the objectives it trains, never every label argument of the forward: the
        # Trainer would see "no labels" and report no eval_loss. The pretraining heads return the loss of the
        # objectives whose labels they get.
        trainer.label_names, trainer.can_return_loss = [], True
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(training_args.output_dir)  # model and processor
    return trainer


@dataclass
class FinetuneArguments:
    task: str = field(default="vqa", metadata={"help": "vqa, entailment, nlvr2, refexp or retrieval"})
    arch: str = field(default="uniter", metadata={"help": "registered architecture, when training from scratch"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "pretrained model dir or Hub id"})
    num_images: int = 1500
    eval_images: int = field(
        default=200,
        metadata={"help": "scenes of the validation split (evaluation during training) and of the final test split"},
    )
    nlvr2_head: str | None = field(
        default=None, metadata={"help": "UNITER NLVR2 variant: paired, triplet, paired-attn (default: the config's)"}
    )


def build(args, feature_dim):
    """The `args.task` head (from `args.model_name_or_path`, or a small `args.arch` model) and its processor."""
    arch = AutoConfig.from_pretrained(args.model_name_or_path).model_type if args.model_name_or_path else args.arch
    spec = spec_for_model_type(arch) if args.model_name_or_path else get_spec(arch)
    check_trainable(spec, args.task)
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
        if _takes(processor, "region_labels"):  # object tags (Oscar): the shapes world's region classes name them
            processor.region_class_names = list(SHAPES_CLASSES)
        config = build_config(spec.name, tokenizer, feature_dim, **overrides)
        model = spec.model_class(args.task)(config)
    return model, processor


def _takes(processor, argument):
    return argument in inspect.signature(type(processor).__call__).parameters


class _TaggedTaskCollator(DataCollatorForVLTask):
    """`DataCollatorForVLTask` that also hands the processor each image's region classes (`region_labels`), for
    processors that pair the text with object tags (Oscar)."""

    def _encode(self, rows, texts=None, suffix="", order=None):
        order = range(len(rows)) if order is None else order
        fixed = self.processor_kwargs
        region_labels = [rows[i][self.fields["region_labels"] + suffix] for i in order]
        self.processor_kwargs = {**fixed, "region_labels": region_labels}
        try:
            return super()._encode(rows, texts, suffix, order)
        finally:
            self.processor_kwargs = fixed


def task_collator(model, processor, task):
    """`DataCollatorForVLTask` for `model`'s `task` head: the head's label count and processor arguments come from
    the spec; a processor that takes object tags gets the rows' region classes."""
    head = spec_for_model(model).head(task)
    num_labels = getattr(model.config, head.num_labels_field) if head.num_labels_field else None
    collator_class = _TaggedTaskCollator if _takes(processor, "region_labels") else DataCollatorForVLTask
    return collator_class(processor, task, num_labels=num_labels, processor_kwargs=dict(head.processor_kwargs))


class RetrievalTrainingCollator:
    """`DataCollatorForVLTask`'s retrieval batches (each text with its own image, then in-batch negative images,
    `group_size` rows a group) with `labels` (N,) = 1 on each group's match and 0 on its negatives, so the Trainer
    has label ids to hand `compute_metrics` during evaluation. For a head whose forward takes `group_size` the loss is
    unchanged (the match is still the group's first row); a head without it (Oscar's match classifier) is trained
    pointwise on the 1/0 labels, as the original trains it with sampled negatives."""

    def __init__(self, collator, model):
        self.collator = collator
        self.takes_group_size = "group_size" in inspect.signature(model.forward).parameters

    def __call__(self, rows):
        if len(rows) < 2:
            raise ValueError(f"retrieval batches need at least 2 rows (in-batch negatives), got {len(rows)}")
        batch = self.collator(rows)
        group = batch["group_size"] if self.takes_group_size else batch.pop("group_size")
        labels = torch.zeros(len(rows), group, dtype=torch.long)
        labels[:, 0] = 1
        batch["labels"] = labels.reshape(-1)
        return batch


def _without_lone_tail(dataset, batch_size):
    """`dataset` less its last row when that row would be a batch of one (a retrieval batch needs two)."""
    if len(dataset) % batch_size == 1 and len(dataset) > 1:
        return dataset.select(range(len(dataset) - 1))
    return dataset


def shapes_trainer(args, training_args, train, model, processor):
    """`VLPTrainer` for `args.task` on `train`: the task's collator, the shapes validation split
    (`args.eval_images` scenes) and the task's metric (`compute_metrics_for_task`) when `training_args` evaluates
    (`--eval_strategy steps|epoch`, `--load_best_model_at_end`), and the processor saved into every checkpoint."""
    collator = task_collator(model, processor, args.task)
    validation = None
    if _evaluates(training_args):
        validation = shapes_dataset(args.task, num_images=args.eval_images, split="validation")
    if args.task == "retrieval":
        collator = RetrievalTrainingCollator(collator, model)
        train = _without_lone_tail(train, training_args.per_device_train_batch_size)
        if validation is not None:
            validation = _without_lone_tail(validation, training_args.per_device_eval_batch_size)
    return VLPTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=collator,
        processing_class=processor,
        compute_metrics=compute_metrics_for_task(args.task) if validation is not None else None,
    )


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
                    chunk = pairs[start : start + batch_size]
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
    rows = as_rows(dataset)
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

    checkpoint = resume_checkpoint(training_args)
    train = shapes_dataset(args.task, num_images=args.num_images, split="train")
    test = shapes_dataset(args.task, num_images=args.eval_images, split="test")
    # seeded right before the weights are drawn: making the data may draw random numbers, or not when cached
    seed_everything(training_args)
    model, processor = build(args, len(train[0]["region_features"][0]))
    trainer = shapes_trainer(args, training_args, train, model, processor)
    trainer.train(resume_from_checkpoint=checkpoint)

    collator = task_collator(trainer.model, processor, args.task)
    report = evaluate_task(trainer.model, collator, test, args.task, train=train)
    print(f"held-out {args.task} {SHAPES_TASK_METRICS[args.task]} next to its controls:")
    print(report.format(), flush=True)
    trainer.save_model(training_args.output_dir)  # model and processor
    return report.accuracy[OVERALL if args.task != "retrieval" else "R@1"]
