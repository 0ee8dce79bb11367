"""Train a small METER from scratch on shapes-world VQA (or NLVR2) and print accuracy next to its controls.

    python examples/meter_shapes_vqa.py --output_dir runs/meter_vqa --num_images 400 --num_train_epochs 6 \
        --per_device_train_batch_size 16 --learning_rate 5e-4
    python examples/meter_shapes_vqa.py --output_dir runs/meter_nlvr2 --task nlvr2 --num_images 400
    python examples/meter_shapes_vqa.py --output_dir runs/x --model_name_or_path CONVERTED_DIR   # a converted METER

Arguments: the fields below plus every `transformers.TrainingArguments` flag (`--bf16`, `--num_train_epochs`, ...).

`MeterForVisualQuestionAnswering` (a RoBERTa text encoder, a CLIP ViT, two fusion stacks; each 128 wide with 2
layers), trained with METER's VQA loss (soft scores, BCE x number of answers). The processor is METER's
(`MeterImageProcessor`: bicubic shorter side, torchvision centre crop, CLIP mean/std) around the shapes world's
word-level tokenizer; images are 64 px with 8 px patches (a shape is 7-19 px there). The report
(`hf_vlp.evaluation.classification_controls`) gives held-out accuracy per question type next to the per-type
training prior (the most frequent training answer of the type) and the same model on shuffled images (each question
with another scene's picture): accuracy above "shuffled" is what the model reads from the image.

`--task nlvr2`: `MeterForVisualReasoning` on statements about a pair of scenes (each image fused with the statement,
token types 1 and 2); accuracy overall next to the majority label and shuffled image pairs.
"""

from dataclasses import dataclass, field

import torch
from transformers import AutoProcessor, HfArgumentParser, TrainingArguments

import hf_vlp  # noqa: F401  (registers the architectures)
from hf_vlp.data import SHAPES_VQA_ANSWERS, shapes_dataset
from hf_vlp.evaluation import OVERALL, classification_controls, classifier_predict
from hf_vlp.modeling.meter import (
    MeterConfig,
    MeterForVisualQuestionAnswering,
    MeterForVisualReasoning,
    MeterImageProcessor,
    MeterProcessor,
)
from hf_vlp.recipes import shapes_tokenizer
from hf_vlp.trainer import VLPTrainer

MAX_TEXT_LEN = 24


@dataclass
class ShapesArguments:
    task: str = field(default="vqa", metadata={"help": "vqa or nlvr2"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "a converted / Hub METER directory"})
    num_images: int = field(default=400, metadata={"help": "training scenes"})
    eval_images: int = field(default=100, metadata={"help": "held-out test scenes"})
    image_size: int = 64
    patch_size: int = field(default=8, metadata={"help": "8 px keeps a small shape inside one patch"})
    hidden_size: int = 128
    num_layers: int = 2
    num_attention_heads: int = 4
    initializer_range: float = field(default=0.08, metadata={"help": "~1/sqrt(hidden_size) (docs/data.md)"})


def build(args):
    if args.task == "vqa":
        model_class = MeterForVisualQuestionAnswering
        labels = dict(num_labels=len(SHAPES_VQA_ANSWERS), id2label=dict(enumerate(SHAPES_VQA_ANSWERS)))
    else:  # NLVR2: a third token type for the second image
        model_class = MeterForVisualReasoning
        labels = dict(num_labels=2, id2label={0: "false", 1: "true"}, modality_type_vocab_size=3)
    if args.model_name_or_path:
        model = model_class.from_pretrained(args.model_name_or_path, ignore_mismatched_sizes=True, **labels)
        return model, AutoProcessor.from_pretrained(args.model_name_or_path)
    tokenizer = shapes_tokenizer()
    size = args.image_size
    image_processor = MeterImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = MeterProcessor(image_processor, tokenizer, max_text_len=MAX_TEXT_LEN)
    width = dict(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=2 * args.hidden_size,
    )
    config = MeterConfig(
        # RoBERTa numbering positions from pad + 1, with the shapes tokenizer's specials
        text_config=dict(
            width,
            model_type="roberta",
            vocab_size=len(tokenizer),
            max_position_embeddings=MAX_TEXT_LEN + tokenizer.pad_token_id + 2,
            type_vocab_size=1,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            initializer_range=args.initializer_range,
        ),
        # CLIP's init scales with the width; factor 2 at 128 wide matches initializer_range 0.08 (modeling/meter SPECS)
        vision_config=dict(
            width, image_size=size, patch_size=args.patch_size, initializer_factor=args.initializer_range / 0.04
        ),
        cross_modal_config=width,
        initializer_range=args.initializer_range,
        **labels,
    )
    return model_class(config), processor


def main(argv=None):
    parser = HfArgumentParser((ShapesArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(argv)
    training_args.remove_unused_columns = False  # the collator reads the raw columns
    if args.task not in ("vqa", "nlvr2"):
        raise ValueError(f"--task must be 'vqa' or 'nlvr2', got {args.task!r}")
    # NLVR2 rows pair scene i with scene i + 1: num_images counts pairs
    train_rows = shapes_dataset(args.task, num_images=args.num_images, split="train", with_region_features=False)
    test_rows = shapes_dataset(args.task, num_images=args.eval_images, split="test", with_region_features=False)
    model, processor = build(args)
    num_labels = model.config.num_labels

    def encode(rows):
        if args.task == "nlvr2":  # (left, right) pairs -> pixel_values (B, 2, 3, S, S)
            images = [[row["image"], row["image_2"]] for row in rows]
            return dict(processor(images=images, text=[row["text"] for row in rows]))
        return dict(processor(images=[row["image"] for row in rows], text=[row["question"] for row in rows]))

    def collate(rows):
        if args.task == "nlvr2":
            return {**encode(rows), "labels": torch.tensor([row["label"] for row in rows])}
        labels = torch.zeros(len(rows), num_labels)
        for i, row in enumerate(rows):  # soft VQA scores, as METER's compute_vqa targets
            labels[i, row["answer_ids"]] = torch.tensor(row["answer_scores"])
        return {**encode(rows), "labels": labels}

    trainer = VLPTrainer(model=model, args=training_args, train_dataset=train_rows, data_collator=collate)
    trainer.train()
    model = trainer.model.eval()
    if args.task == "nlvr2":
        report = classification_controls(
            classifier_predict(model, encode), train_rows, test_rows, label_key="label", group_key=None, task="nlvr2"
        )
        title, note = "METER NLVR2, held-out accuracy", "prior = the majority training label"
    else:
        report = classification_controls(
            classifier_predict(model, encode, SHAPES_VQA_ANSWERS), train_rows, test_rows, task="meter_vqa"
        )
        title, note = (
            "METER VQA, held-out accuracy by question type",
            "prior = most frequent training answer of the type",
        )
    print(f"{title}\n  {note}; shuffled = same model, another scene's image")
    print("\n".join("  " + line for line in report.format().splitlines()), flush=True)
    if training_args.process_index == 0:
        model.save_pretrained(training_args.output_dir)
        processor.save_pretrained(training_args.output_dir)
    print(f"meter_{args.task}: {report.accuracy[OVERALL]:.3f}")
    return report


if __name__ == "__main__":
    main()
