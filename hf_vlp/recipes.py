"""Recipes shared by `examples/`, the demo and the CLI: a tokenizer for the shapes world, processors, small
configs, and the Trainer wiring for pretraining and fine-tuning any registered region model. Everything
architecture-specific is read from the architecture's spec (`hf_vlp.get_spec(arch)`)."""

import copy
import re
from pathlib import Path

import numpy as np

from .registry import get_spec
from .spec import InputKind

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# sizes of the "small" single-stream models the demo and examples train in minutes on a CPU (UNITER's small sizes;
# every architecture's own small sizes are `get_spec(arch).small_sizes`). The weight init scale follows the width:
# BERT's 0.02 suits 768 wide layers, but at 128 wide it leaves the attention logits near zero, every region gets the
# same weight and training sits for thousands of steps on the question-only prior (docs/data.md, "Does the model
# look at the image?"). 0.08 ~ 1 / sqrt(128).
SMALL_SIZES = dict(
    hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256, initializer_range=0.08
)


def shapes_tokenizer(save_dir=None, num_images=200):
    """A BERT WordPiece tokenizer whose vocabulary is every word of the shapes world (plus BERT's specials).

    The shapes world is synthetic, so a from-scratch model needs no 30k-word vocabulary; a real checkpoint brings
    its own tokenizer instead.
    """
    from transformers import BertTokenizer

    from .data.shapes import SHAPES_TASKS, shapes_dataset

    words = set()
    for task in SHAPES_TASKS:
        data = shapes_dataset(
            task, num_images=num_images if task != "nlvr2" else num_images // 2, seed=12345, with_region_features=False
        )
        for column in ("text", "question", "answer"):
            if column in data.column_names:
                for text in data[column]:
                    words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + sorted(words))}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def build_processor(arch, tokenizer, **region_options):
    """The architecture's processor around `tokenizer` and a `RegionFeatureProcessor` (region models only)."""
    from .processing.region import RegionFeatureProcessor

    spec = get_spec(arch)
    if spec.inputs is not InputKind.REGIONS or spec.processor is None:
        raise ValueError(f"build_processor makes region-feature processors; {arch!r} takes {spec.inputs.value}")
    return spec.processor_class(RegionFeatureProcessor(**region_options), tokenizer)


def _set_field(values, dotted, value):
    """values["a"]["b"] = value for dotted "a.b" (a sub-config given as a dict)."""
    *parents, name = dotted.split(".")
    for parent in parents:
        values = values.setdefault(parent, {})
    values[name] = value


def _check_fields(spec, names):
    """ValueError for fields the config would store without using: the silent mismatch this builder exists to avoid
    (e.g. `visual_feat_dim` on a VisualBertConfig, which reads `visual_embedding_dim`)."""
    default = spec.config_class()
    unknown = sorted(name for name in names if name not in spec.small_sizes and not hasattr(default, name))
    if unknown:
        raise ValueError(f"{type(default).__name__} ({spec.name}) has no field(s) {unknown}")


def build_config(arch, tokenizer=None, visual_feat_dim=None, sizes=None, **overrides):
    """A config of `arch`: the spec's small sizes, then `sizes`, the tokenizer's vocabulary size, the region feature
    size and the shapes world's region classes (each set on the config's own field, from the spec), then
    `overrides`. `tokenizer` / `visual_feat_dim` None keep the small sizes' values."""
    from .data.shapes import SHAPES_CLASSES

    spec = get_spec(arch)
    _check_fields(spec, [*(sizes or {}), *overrides])
    values = copy.deepcopy(dict(spec.small_sizes))
    values.update(copy.deepcopy(sizes or {}))
    if tokenizer is not None and spec.vocab_size_field:
        _set_field(values, spec.vocab_size_field, len(tokenizer))
    if visual_feat_dim is not None:
        if not spec.feature_size_field:
            raise ValueError(f"`visual_feat_dim` was given but {arch!r} takes {spec.inputs.value}, not region features")
        values[spec.feature_size_field] = visual_feat_dim
    if spec.region_classes_field:
        values[spec.region_classes_field] = len(SHAPES_CLASSES)
    values.update(overrides)
    return spec.config_class(**values)


def head_class(arch, task):
    """The model class of `arch`'s `task` head (ValueError naming the heads it has)."""
    return get_spec(arch).model_class(task)


def majority_vqa_score(train, evaluation):
    """VQA score of always answering the most frequent training answer: the baseline a model must beat."""
    answers, counts = np.unique(np.asarray(train["answer"]), return_counts=True)
    majority = answers[counts.argmax()]
    return float(np.mean([a == majority for a in evaluation["answer"]])), str(majority)


def vqa_num_labels():
    from .data.shapes import SHAPES_VQA_ANSWERS

    return len(SHAPES_VQA_ANSWERS)


def training_arguments(output_dir, **overrides):
    """TrainingArguments with the defaults the examples share (CPU-friendly, no reporting, bf16 by flag)."""
    from transformers import TrainingArguments

    defaults = dict(
        output_dir=str(Path(output_dir)),
        per_device_train_batch_size=32,
        learning_rate=5e-4,
        warmup_steps=20,
        weight_decay=0.01,
        logging_steps=20,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,  # the collators read raw dataset columns
        dataloader_num_workers=0,
        seed=0,
    )
    return TrainingArguments(**{**defaults, **overrides})
