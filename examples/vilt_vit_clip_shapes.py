"""Fine-tune ViLT, CLIP and ViT on the matching task of the shapes world, and print the metric next to its controls.

    python examples/vilt_vit_clip_shapes.py --output_dir runs/vilt_vqa --task vilt_vqa --num_images 300 \
        --num_train_epochs 6 --per_device_train_batch_size 8 --learning_rate 5e-4
    python examples/vilt_vit_clip_shapes.py --output_dir runs/clip --task clip_retrieval \
        --num_train_epochs 15 --per_device_train_batch_size 64 --learning_rate 5e-4
    python examples/vilt_vit_clip_shapes.py --output_dir runs/vit --task vit_classification \
        --num_train_epochs 8 --per_device_train_batch_size 32 --learning_rate 5e-4
    torchrun --nproc_per_node=2 examples/vilt_vit_clip_shapes.py --output_dir runs/clip --task clip_retrieval
    python examples/vilt_vit_clip_shapes.py --output_dir runs/x --task vilt_vqa --model_name_or_path CONVERTED_DIR
Arguments: the fields below plus every `transformers.TrainingArguments` flag (`--bf16`, `--num_train_epochs`, ...).

  vilt_vqa            `ViltForQuestionAnswering` on VQA: soft answer scores, BCE x num_labels (original compute_vqa);
                      reports accuracy per question type next to the question-type prior and the same model on
                      shuffled images (`hf_vlp.evaluation.classification_controls`).
  clip_retrieval      `CLIPForPreTraining` on image-caption pairs with hf_vlp's contrastive loss (the global-batch
                      loss under DDP); reports text->image recall@1/5 over the held-out scenes next to chance and a
                      shuffled gallery (`ranking_controls`).
  vit_classification  `ViTForImageClassification` on "what colour is the largest object?" (a label derived from the
                      scene's boxes and colours); reports accuracy next to the majority colour and shuffled images.
From scratch the models are small (hidden 128, 2 layers, 64 px input, 8 px patches: a shape is 7-19 px there, so a
16 px patch would hold a quarter of the scene), use the shapes world's word-level vocabulary and a width-matched init
(`--initializer_range 0.08`; BERT's 0.02 leaves a 128-wide model's attention near uniform). With
--model_name_or_path a converted model (and its saved processor) is fine-tuned instead.
Measured results and tables: docs/data.md, "Does the model look at the image? (examples)".
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import (
    AutoProcessor,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPProcessor,
    HfArgumentParser,
    TrainingArguments,
    ViltConfig,
    ViltForQuestionAnswering,
    ViltImageProcessorPil,
    ViltProcessor,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

import hf_vlp  # noqa: F401  (registers the architectures)
from hf_vlp.data import SHAPES_COLORS, SHAPES_VQA_ANSWERS, shapes_dataset
from hf_vlp.evaluation import (
    OVERALL,
    classification_controls,
    classifier_predict,
    ranking_controls,
)
from hf_vlp.modeling.clip import LORA_TARGET_MODULES as CLIP_LORA
from hf_vlp.modeling.clip import CLIPForPreTraining
from hf_vlp.modeling.vilt import LORA_TARGET_MODULES as VILT_LORA
from hf_vlp.modeling.vit import LORA_MODULES_TO_SAVE as VIT_MODULES_TO_SAVE
from hf_vlp.modeling.vit import LORA_TARGET_MODULES as VIT_LORA
from hf_vlp.recipes import shapes_tokenizer
from hf_vlp.trainer import VLPTrainer


@dataclass
class ShapesArguments:
    task: str = field(default="vilt_vqa", metadata={"help": "vilt_vqa, clip_retrieval or vit_classification"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "a converted / Hub model directory"})
    num_images: int = field(default=400, metadata={"help": "training scenes"})
    eval_images: int = field(default=64, metadata={"help": "held-out test scenes"})
    image_size: int = field(default=64, metadata={"help": "from scratch: input resolution"})
    patch_size: int = field(default=8, metadata={"help": "from scratch: patch size (8 px keeps a small shape whole)"})
    hidden_size: int = 128
    num_layers: int = 2
    num_attention_heads: int = 4
    initializer_range: float = field(
        default=0.08,
        metadata={
            "help": "from scratch: init std of ViLT / ViT (~1/sqrt(hidden_size); BERT's 0.02 suits 768 wide); "
            "CLIP gets initializer_factor = initializer_range / 0.04 (its init already scales with the width)"
        },
    )
    lora_r: int = field(default=0, metadata={"help": "> 0: train LoRA adapters (the architecture's preset) only"})


def sizes(args):
    return dict(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=2 * args.hidden_size,
    )


def print_report(title, report, note):
    print(f"{title}\n  {note}")
    print("\n".join("  " + line for line in report.format().splitlines()), flush=True)


def with_lora(model, args, targets, modules_to_save=None):
    if args.lora_r <= 0:
        return model
    import peft

    config = peft.LoraConfig(
        r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=targets, modules_to_save=modules_to_save
    )
    model = peft.get_peft_model(model, config)
    model.print_trainable_parameters()
    return model


def train(model, training_args, data, collate):
    trainer = VLPTrainer(model=model, args=training_args, train_dataset=data, data_collator=collate)
    trainer.train()
    model = trainer.model
    return (model.merge_and_unload() if hasattr(model, "merge_and_unload") else model).eval()


def batches(rows, size=32):
    for start in range(0, len(rows), size):
        yield [rows[i] for i in range(start, min(start + size, len(rows)))]


# ------------------------------------------------------------------------------------------------------------------
# ViLT: VQA
# ------------------------------------------------------------------------------------------------------------------


def run_vilt_vqa(args, training_args):
    train_rows = shapes_dataset("vqa", num_images=args.num_images, split="train", with_region_features=False)
    test_rows = shapes_dataset("vqa", num_images=args.eval_images, split="test", with_region_features=False)
    num_labels = len(SHAPES_VQA_ANSWERS)
    if args.model_name_or_path:
        model = ViltForQuestionAnswering.from_pretrained(
            args.model_name_or_path, num_labels=num_labels, ignore_mismatched_sizes=True
        )
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    else:
        tokenizer = shapes_tokenizer()
        processor = ViltProcessor(
            ViltImageProcessorPil(size={"shortest_edge": args.image_size}, size_divisor=args.patch_size), tokenizer
        )
        config = ViltConfig(
            **sizes(args),
            vocab_size=len(tokenizer),
            max_position_embeddings=40,
            image_size=args.image_size,
            patch_size=args.patch_size,
            num_labels=num_labels,
            id2label=dict(enumerate(SHAPES_VQA_ANSWERS)),
            layer_norm_eps=1e-6,
            initializer_range=args.initializer_range,
        )
        model = ViltForQuestionAnswering(config)
    model = with_lora(model, args, VILT_LORA, modules_to_save=["classifier"])

    def encode(rows):
        return processor(
            images=[row["image"] for row in rows],
            text=[row["question"] for row in rows],
            padding="longest",
            truncation=True,
            max_length=40,
            return_tensors="pt",
        )

    def collate(rows):
        batch = encode(rows)
        labels = torch.zeros(len(rows), num_labels)
        for i, row in enumerate(rows):  # soft VQA scores, as the original compute_vqa targets
            labels[i, row["answer_ids"]] = torch.tensor(row["answer_scores"])
        return {**batch, "labels": labels}

    model = train(model, training_args, train_rows, collate)
    report = classification_controls(
        classifier_predict(model, encode, SHAPES_VQA_ANSWERS), train_rows, test_rows, task="vilt_vqa"
    )
    print_report(
        "ViLT VQA, held-out accuracy by question type",
        report,
        "prior = most frequent training answer of the type; shuffled = same model, another scene's image",
    )
    return model, processor, report


# ------------------------------------------------------------------------------------------------------------------
# CLIP: image-text retrieval
# ------------------------------------------------------------------------------------------------------------------


def run_clip_retrieval(args, training_args):
    train_rows = shapes_dataset("retrieval", num_images=args.num_images, split="train", with_region_features=False)
    test_rows = shapes_dataset("retrieval", num_images=args.eval_images, split="test", with_region_features=False)
    if args.model_name_or_path:
        model = CLIPForPreTraining.from_pretrained(args.model_name_or_path)
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    else:
        tokenizer = shapes_tokenizer()
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": args.image_size}, crop_size={"height": args.image_size, "width": args.image_size}
        )
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
        # [CLS] text [SEP] [PAD]...: CLIP pools at the first eos_token_id, here [SEP]
        text = dict(
            sizes(args),
            vocab_size=len(tokenizer),
            max_position_embeddings=40,
            eos_token_id=tokenizer.sep_token_id,
            bos_token_id=tokenizer.cls_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        vision = dict(sizes(args), image_size=args.image_size, patch_size=args.patch_size)
        # CLIP's attention / MLP init is hidden**-0.5 x initializer_factor: factor 2 at width 128 matches the other
        # models' initializer_range 0.08 (modeling/clip SPECS small_sizes)
        factor = args.initializer_range / 0.04
        model = CLIPForPreTraining(
            CLIPConfig(text_config=text, vision_config=vision, projection_dim=64, initializer_factor=factor)
        )
    model = with_lora(model, args, CLIP_LORA)
    context = model.config.text_config.max_position_embeddings

    def encode(rows):
        batch = processor(
            images=[row["image"] for row in rows],
            text=[row["text"] for row in rows],
            padding="longest",
            truncation=True,
            max_length=context,
            return_tensors="pt",
        )
        batch.pop("token_type_ids", None)  # a BERT tokenizer's: CLIP's text tower has no segments
        return batch

    model = train(model, training_args, train_rows, lambda rows: dict(encode(rows)))

    def score(rows):  # (texts, images) cosine similarities
        image_embeds, text_embeds = [], []
        with torch.no_grad():
            for chunk in batches(rows):
                out = model(**encode(chunk), return_loss=False)
                image_embeds.append(out.image_embeds)
                text_embeds.append(out.text_embeds)
        return torch.cat(text_embeds) @ torch.cat(image_embeds).t()

    report = ranking_controls(score, test_rows, task="clip_retrieval")
    print_report(
        f"CLIP text->image retrieval over {len(test_rows)} held-out scenes",
        report,
        "chance = K / N; shuffled = same model, the gallery's images shuffled (the true image is gone)",
    )
    return model, processor, report


# ------------------------------------------------------------------------------------------------------------------
# ViT: classification
# ------------------------------------------------------------------------------------------------------------------


def largest_shape_label(row) -> int:
    """Colour (index into SHAPES_COLORS) of the largest drawn shape."""
    boxes = np.asarray(row["boxes"])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return int(row["region_colors"][int(areas.argmax())])


def run_vit_classification(args, training_args):
    train_rows = shapes_dataset("retrieval", num_images=args.num_images, split="train", with_region_features=False)
    test_rows = shapes_dataset("retrieval", num_images=args.eval_images, split="test", with_region_features=False)
    names = SHAPES_COLORS
    if args.model_name_or_path:
        model = ViTForImageClassification.from_pretrained(
            args.model_name_or_path,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            ignore_mismatched_sizes=True,
        )
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    else:
        processor = ViTImageProcessorPil(size={"height": args.image_size, "width": args.image_size})
        config = ViTConfig(
            **sizes(args),
            image_size=args.image_size,
            patch_size=args.patch_size,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
            initializer_range=args.initializer_range,
        )
        model = ViTForImageClassification(config)
    model = with_lora(model, args, VIT_LORA, modules_to_save=VIT_MODULES_TO_SAVE)

    def pixels(rows):
        return processor(images=[row["image"] for row in rows], return_tensors="pt")["pixel_values"]

    def collate(rows):
        return {"pixel_values": pixels(rows), "labels": torch.tensor([largest_shape_label(r) for r in rows])}

    model = train(model, training_args, train_rows, collate)

    def labelled(data):  # the label is a text column: it stays with its row when the images are shuffled
        return [{**row, "label": names[largest_shape_label(row)]} for row in (data[i] for i in range(len(data)))]

    report = classification_controls(
        classifier_predict(model, lambda rows: {"pixel_values": pixels(rows)}, names),
        labelled(train_rows),
        labelled(test_rows),
        label_key="label",
        group_key=None,
        task="vit_classification",
    )
    print_report(
        "ViT, colour of the largest shape, held-out accuracy",
        report,
        "prior = the majority training colour; shuffled = same model, another scene's image",
    )
    return model, processor, report


def main(argv=None):
    parser = HfArgumentParser((ShapesArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(argv)
    training_args.remove_unused_columns = False  # the collators read the raw columns
    runs = {
        "vilt_vqa": run_vilt_vqa,
        "clip_retrieval": run_clip_retrieval,
        "vit_classification": run_vit_classification,
    }
    if args.task not in runs:
        raise ValueError(f"--task must be one of {sorted(runs)}, got {args.task!r}")
    model, processor, result = runs[args.task](args, training_args)
    if training_args.process_index == 0:
        model.save_pretrained(training_args.output_dir)
        processor.save_pretrained(training_args.output_dir)
    print(f"{args.task}: {result.accuracy[OVERALL] if OVERALL in result.accuracy else result.accuracy}")
    return result


if __name__ == "__main__":
    main()
