"""Recipes shared by `examples/`, the demo and the CLI: a tokenizer for the shapes world, processors, small
configs, and the Trainer wiring for pretraining and fine-tuning any registered region model."""

import re
from pathlib import Path

import numpy as np

from .registry import ARCHITECTURES

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# sizes of the "small" models the demo and examples train in minutes on a CPU. The weight init scale follows the
# width: BERT's 0.02 suits 768 wide layers, but at 128 wide it leaves the attention logits near zero, every region
# gets the same weight and training sits for thousands of steps on the question-only prior (docs/data.md,
# "Does the model look at the image?"). 0.08 ~ 1 / sqrt(128).
SMALL_SIZES = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256,
                   initializer_range=0.08)
# two-stream models also size their visual stream and co-attention
SMALL_STREAM_SIZES = {
    "vilbert": dict(v_hidden_size=128, v_num_hidden_layers=3, v_num_attention_heads=4, v_intermediate_size=256,
                    bi_hidden_size=128, bi_num_attention_heads=4),
    "ernie_vil": dict(v_hidden_size=128, v_num_hidden_layers=3, v_num_attention_heads=4, v_intermediate_size=256,
                      co_hidden_size=128, co_num_attention_heads=4, co_intermediate_size=256),
}


def shapes_tokenizer(save_dir=None, num_images=200):
    """A BERT WordPiece tokenizer whose vocabulary is every word of the shapes world (plus BERT's specials).

    The shapes world is synthetic, so a from-scratch model needs no 30k-word vocabulary; a real checkpoint brings
    its own tokenizer instead.
    """
    from transformers import BertTokenizer

    from .data.shapes import SHAPES_TASKS, shapes_dataset

    words = set()
    for task in SHAPES_TASKS:
        data = shapes_dataset(task, num_images=num_images if task != "nlvr2" else num_images // 2, seed=12345,
                              with_region_features=False)
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
    """The architecture's registered processor around `tokenizer` and a `RegionFeatureProcessor`."""
    from .processing.region import RegionFeatureProcessor

    info = ARCHITECTURES[arch]
    if info["processor"] is None:
        raise ValueError(f"architecture {arch!r} registers no processor")
    return info["processor"](RegionFeatureProcessor(**region_options), tokenizer)


def build_config(arch, tokenizer, visual_feat_dim, sizes=None, **overrides):
    """A config of `arch` with the given sizes, the tokenizer's vocabulary and the shapes world's feature size and
    region classes."""
    from .data.shapes import SHAPES_CLASSES

    config_class = ARCHITECTURES[arch]["config"]
    sizes = {**(SMALL_SIZES if sizes is None else sizes), **SMALL_STREAM_SIZES.get(arch, {})}
    defaults = dict(vocab_size=len(tokenizer), visual_feat_dim=visual_feat_dim, num_region_classes=len(SHAPES_CLASSES))
    return config_class(**{**defaults, **sizes, **overrides})


def head_class(arch, task):
    heads = ARCHITECTURES[arch]["heads"]
    if task not in heads:
        raise ValueError(f"{arch} has no {task!r} head; it has {sorted(heads)}")
    return heads[task]


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
