"""SOHO on the shapes world: pretrain (MLM + masked visual modelling + ITM) from pixels, then fine-tune VQA.

    python examples/soho_shapes_vqa.py --output_dir runs/soho --num_images 300 --num_train_epochs 4 \
        --per_device_train_batch_size 32 --learning_rate 5e-4 --report_to none
Arguments: the fields below plus every `transformers.TrainingArguments` flag (used by both stages).

Pretraining follows the original's objectives (docs/soho.md): each caption row is matched with its scene or, with
probability 1/2, with another scene's caption (ITM label 0); 15% of the words of every row are masked (MLM); the model
masks visual tokens itself (MVM, `--visual_mask_prob`, 0.15 here instead of the original's 0.015 so that a short run
sees the objective). Before and after pretraining it prints held-out ITM accuracy (chance 0.5). Fine-tuning starts
`SohoForVisualQuestionAnswering` from the pretrained folder (the dictionary is dropped and the answer head is new,
as the original) and prints held-out VQA accuracy by question type next to its controls (hf_vlp.evaluation): the
per-type training prior and the same model on shuffled images.

From scratch: a ResNet-18 a quarter as wide (stem and layer1 16 channels, nothing frozen: there is no ImageNet
initialisation to keep), a 128-wide 3-layer encoder, 64 dictionary entries, width-matched init (0.08), 256 px scenes
(a 4 x 4 grid of visual tokens at SOHO's stride 64), `square_mask_canvas=False` (the quirk only matters for
converted checkpoints; the scenes are square anyway).
"""

from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, TrainingArguments

import hf_vlp  # noqa: F401  (registers the architectures)
from hf_vlp.data import SHAPES_VQA_ANSWERS, shapes_dataset
from hf_vlp.evaluation import classification_controls, classifier_predict
from hf_vlp.modeling.soho import (
    SohoConfig,
    SohoForPreTraining,
    SohoForVisualQuestionAnswering,
    SohoImageProcessor,
    SohoProcessor,
)
from hf_vlp.recipes import shapes_tokenizer
from hf_vlp.trainer import VLPTrainer


@dataclass
class SohoShapesArguments:
    num_images: int = field(default=300, metadata={"help": "training scenes (both stages)"})
    eval_images: int = field(default=64, metadata={"help": "held-out test scenes"})
    image_size: int = field(default=256, metadata={"help": "scene side in pixels (a multiple of 64)"})
    hidden_size: int = 128
    num_layers: int = 3
    num_visual_tokens: int = 64
    visual_mask_prob: float = 0.15
    mlm_probability: float = 0.15
    initializer_range: float = 0.08
    pretrain_epochs: float = field(default=-1, metadata={"help": "< 0: --num_train_epochs"})


def build_processor(args):
    image_processor = SohoImageProcessor(size={"shortest_edge": args.image_size, "longest_edge": args.image_size})
    return SohoProcessor(image_processor=image_processor, tokenizer=shapes_tokenizer())


def rows_of(data):
    return [data[i] for i in range(len(data))]


def pretraining_collator(processor, mlm_probability, seed=0):
    tokenizer = processor.tokenizer
    generator = torch.Generator().manual_seed(seed)

    def collate(rows, shuffle_captions=True):
        captions = [row["text"] for row in rows]
        itm_labels = torch.ones(len(rows), dtype=torch.long)
        if shuffle_captions and len(rows) > 1:
            for index in range(len(rows)):
                if torch.rand(1, generator=generator) < 0.5:
                    other = (index + int(torch.randint(1, len(rows), (1,), generator=generator))) % len(rows)
                    if rows[other]["image_id"] != rows[index]["image_id"]:
                        captions[index], itm_labels[index] = rows[other]["text"], 0
        batch = processor(images=[row["image"] for row in rows], text=captions, max_length=40)
        input_ids = batch["input_ids"].clone()
        special = torch.tensor(
            [[token in tokenizer.all_special_ids for token in row] for row in input_ids.tolist()], dtype=torch.bool
        )
        chosen = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~special
        labels = input_ids.masked_fill(~chosen, -100)
        input_ids[chosen] = tokenizer.mask_token_id
        return dict(
            input_ids=input_ids,
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            pixel_mask=batch["pixel_mask"],
            labels=labels,
            itm_labels=itm_labels,
        )

    return collate


def itm_accuracy(model, rows, collate, batch_size=64):
    """Held-out ITM accuracy on matched / mismatched pairs (about half each)."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start : start + batch_size])
            predicted = model(**{k: v for k, v in batch.items() if k != "labels"}).itm_logits.argmax(-1)
            correct += int((predicted == batch["itm_labels"]).sum())
            total += len(predicted)
    return correct / total


def vqa_collator(processor):
    answers = {answer: index for index, answer in enumerate(SHAPES_VQA_ANSWERS)}

    def collate(rows):
        batch = processor(images=[row["image"] for row in rows], text=[row["question"] for row in rows], max_length=40)
        labels = torch.zeros(len(rows), len(SHAPES_VQA_ANSWERS))
        for index, row in enumerate(rows):
            for answer, score in zip(row["answers"], row["answer_scores"]):
                labels[index, answers[answer]] = max(labels[index, answers[answer]], score)
        return dict(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            pixel_mask=batch["pixel_mask"],
            labels=labels,
        )

    return collate


def main(argv=None):
    parser = HfArgumentParser((SohoShapesArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(argv)
    training_args.remove_unused_columns = False  # the collators read the raw columns
    torch.manual_seed(training_args.seed)
    processor = build_processor(args)
    scenes = dict(with_region_features=False, image_size=args.image_size)

    # pretraining
    captions = shapes_dataset("captions", num_images=args.num_images, split="train", **scenes)
    held_out = rows_of(shapes_dataset("captions", num_images=args.eval_images, split="test", **scenes))
    config = SohoConfig(
        vocab_size=len(processor.tokenizer),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.hidden_size // 32,
        intermediate_size=2 * args.hidden_size,
        max_position_embeddings=40,
        backbone_stem_channels=16,
        backbone_base_channels=16,
        backbone_frozen_stages=-1,
        num_visual_tokens=args.num_visual_tokens,
        visual_mask_prob=args.visual_mask_prob,
        square_mask_canvas=False,
        initializer_range=args.initializer_range,
        num_labels=len(SHAPES_VQA_ANSWERS),
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    model = SohoForPreTraining(config)
    collate = pretraining_collator(processor, args.mlm_probability, seed=training_args.seed)
    evaluate = pretraining_collator(processor, args.mlm_probability, seed=training_args.seed + 1)
    before = itm_accuracy(model, held_out, evaluate)
    pretrain_args = training_args
    if args.pretrain_epochs >= 0:
        pretrain_args = TrainingArguments(**{**training_args.to_dict(), "num_train_epochs": args.pretrain_epochs})
        pretrain_args.remove_unused_columns = False
    if pretrain_args.num_train_epochs > 0:
        VLPTrainer(model=model, args=pretrain_args, train_dataset=captions, data_collator=collate).train()
    evaluate = pretraining_collator(processor, args.mlm_probability, seed=training_args.seed + 1)
    after = itm_accuracy(model, held_out, evaluate)
    print(f"pretraining: held-out ITM accuracy {before:.3f} before, {after:.3f} after (chance 0.5)", flush=True)
    pretrained_dir = f"{training_args.output_dir}/pretrained"
    model.save_pretrained(pretrained_dir)

    # VQA fine-tuning
    train_rows = shapes_dataset("vqa", num_images=args.num_images, split="train", **scenes)
    test_rows = shapes_dataset("vqa", num_images=args.eval_images, split="test", **scenes)
    vqa = SohoForVisualQuestionAnswering.from_pretrained(pretrained_dir)
    collate = vqa_collator(processor)
    VLPTrainer(model=vqa, args=training_args, train_dataset=train_rows, data_collator=collate).train()
    report = classification_controls(
        classifier_predict(vqa, collate, SHAPES_VQA_ANSWERS), train_rows, test_rows, task="soho_vqa"
    )
    print("SOHO VQA, held-out accuracy by question type")
    print("  prior = most frequent training answer of the type; shuffled = same model, another scene's image")
    print("\n".join("  " + line for line in report.format().splitlines()), flush=True)
    if training_args.process_index == 0:
        vqa.save_pretrained(training_args.output_dir)
        processor.save_pretrained(training_args.output_dir)
    return dict(itm_before=before, itm_after=after, vqa=report)


if __name__ == "__main__":
    main()
