"""Fine-tune Oscar / VinVL on shapes-world VQA and captioning (region features from `hf_vlp.data.shapes_dataset`).

    python examples/oscar_shapes.py --output_dir runs/oscar_shapes                       # both tasks, small, from scratch
    python examples/oscar_shapes.py --output_dir runs/oscar_caption --task captioning --num_beams 3
    python examples/oscar_shapes.py --output_dir runs/oscar_vqa --task vqa --lora_r 8 \
        --model_name_or_path runs/converted_vinvl                                        # LoRA on a converted model
    torchrun --nproc_per_node=2 examples/oscar_shapes.py --output_dir runs/oscar_shapes --task vqa
Arguments: the fields below plus every `transformers.TrainingArguments` flag (`--bf16`, `--num_train_epochs`, ...).

Inputs follow the original scripts: the text is `[CLS] question-or-caption [SEP] object tags [SEP]`, the tags being
the detector classes of the regions (here the shapes world's gold region classes, `region_labels`).
VQA (`run_vqa.py`): answer classification on the pooled output, BCE on soft scores x num_answers.
Captioning (`run_captioning.py`): the caption part padded to `--caption_length`, tags after it; up to 3 caption
tokens ([SEP] included) are masked (80 % [MASK], 10 % random, 10 % kept) and predicted under the causal caption
mask; decoding with `generate()` (greedy or beam search, tags at their training positions).
Prints the held-out VQA accuracy per question type next to its controls (`hf_vlp.evaluation`: the question-type
prior and the same model on shuffled images), and caption exact-match / word precision.
"""

import random
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import AutoProcessor, HfArgumentParser, TrainingArguments

import hf_vlp  # noqa: F401  (registers the architectures)
from hf_vlp.data import SHAPES_CLASSES, SHAPES_VQA_ANSWERS, shapes_dataset
from hf_vlp.evaluation import OVERALL, classification_controls, classifier_predict
from hf_vlp.modeling.oscar import (
    LORA_TARGET_MODULES,
    OscarConfig,
    OscarForConditionalGeneration,
    OscarForVisualQuestionAnswering,
    OscarProcessor,
)
from hf_vlp.processing.region import RegionFeatureProcessor
from hf_vlp.recipes import shapes_tokenizer
from hf_vlp.trainer import VLPTrainer


@dataclass
class OscarShapesArguments:
    task: str = field(default="both", metadata={"help": "vqa, captioning or both"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "a saved / converted Oscar model dir"})
    vinvl: bool = field(default=True, metadata={"help": "from scratch: VinVL settings (image LayerNorm) or Oscar v1"})
    num_images: int = field(default=600, metadata={"help": "training scenes (3 questions / captions each)"})
    eval_images: int = field(default=100, metadata={"help": "held-out test scenes"})
    hidden_size: int = 128
    num_layers: int = 3
    num_attention_heads: int = 4
    caption_length: int = field(default=32, metadata={"help": "caption part [CLS] ... [SEP] (max_seq_a_length)"})
    num_beams: int = field(default=1, metadata={"help": "captioning: 1 = greedy, > 1 = beam search"})
    lora_r: int = field(default=0, metadata={"help": "> 0: train LoRA adapters (LORA_TARGET_MODULES) + the head"})


def build(model_class, args, tokenizer_vocab_size, feature_dim, **head):
    config = (OscarConfig.vinvl if args.vinvl else OscarConfig)(
        vocab_size=tokenizer_vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=2 * args.hidden_size,
        max_position_embeddings=128,
        visual_feat_dim=feature_dim,
        initializer_range=0.08,  # width-matched (~1/sqrt(128)): BERT's 0.02 leaves a small model on the text prior
        **head,
    )
    return model_class(config)


def load(model_class, args, feature_dim, **head):
    if args.model_name_or_path:  # a converted model brings its tokenizer; the shapes classes name the tags
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
        processor.region_class_names = list(SHAPES_CLASSES)
        model = model_class.from_pretrained(args.model_name_or_path, ignore_mismatched_sizes=True, **head)
        if model.config.visual_feat_dim != feature_dim:
            raise ValueError(
                f"the model takes {model.config.visual_feat_dim}-d region features, the shapes world has {feature_dim}"
            )
        return model, processor
    tokenizer = shapes_tokenizer()
    processor = OscarProcessor(RegionFeatureProcessor(), tokenizer, region_class_names=SHAPES_CLASSES)
    special = dict(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id, mask_token_id=tokenizer.mask_token_id,
    )  # fmt: skip
    return build(model_class, args, len(tokenizer), feature_dim, **special, **head), processor


def with_lora(model, args, head_module):
    if args.lora_r <= 0:
        return model
    import peft

    lora = peft.LoraConfig(
        r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=LORA_TARGET_MODULES, modules_to_save=[head_module]
    )
    model = peft.get_peft_model(model, lora)
    model.print_trainable_parameters()
    return model


def region_inputs(rows):
    return dict(
        visual_feats=[row["region_features"] for row in rows],
        boxes=[row["boxes"] for row in rows],
        image_sizes=[(row["image_width"], row["image_height"]) for row in rows],
        region_labels=[row["region_labels"] for row in rows],
    )


# ------------------------------------------------------------------------------------------------------------------
# VQA
# ------------------------------------------------------------------------------------------------------------------


class VQACollator:
    """Shapes VQA rows -> `[CLS] question [SEP] tags [SEP]` + regions + soft answer scores `labels`."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, rows):
        batch = dict(self.processor(text=[row["question"] for row in rows], **region_inputs(rows)))
        labels = torch.zeros(len(rows), len(SHAPES_VQA_ANSWERS))
        for i, row in enumerate(rows):
            for answer, score in zip(row["answer_ids"], row["answer_scores"]):
                labels[i, answer] = max(labels[i, answer].item(), score)
        batch["labels"] = labels
        return batch


def run_vqa(args, training_args):
    train = shapes_dataset("vqa", num_images=args.num_images, split="train")
    test = shapes_dataset("vqa", num_images=args.eval_images, split="test")
    answers = dict(id2label=dict(enumerate(SHAPES_VQA_ANSWERS)), vqa_loss="bce")
    model, processor = load(OscarForVisualQuestionAnswering, args, len(train[0]["region_features"][0]), **answers)
    model = with_lora(model, args, "classifier")
    collator = VQACollator(processor)
    trainer = VLPTrainer(model=model, args=training_args, train_dataset=train, data_collator=collator)
    trainer.train()
    report = classification_controls(
        classifier_predict(trainer.model, collator, SHAPES_VQA_ANSWERS), train, test, task="oscar vqa"
    )
    trainer.save_model(training_args.output_dir)
    processor.save_pretrained(training_args.output_dir)
    return (
        f"held-out VQA accuracy {report.accuracy[OVERALL]:.3f} by question type (prior = the most frequent "
        f"training answer of the type, shuffled = the same model with another image's regions and tags):\n"
        + report.format()
    )


# ------------------------------------------------------------------------------------------------------------------
# Captioning
# ------------------------------------------------------------------------------------------------------------------


class CaptionCollator:
    """Shapes caption rows -> the captioning layout with masked caption tokens and their `labels`
    (`CaptionTensorizer` of `run_captioning.py`: mask probability 0.15, 1 to 3 tokens, [SEP] may be masked)."""

    def __init__(self, processor, caption_length, mask_probability=0.15, max_masked=3, seed=0):
        self.processor, self.caption_length = processor, caption_length
        self.mask_probability, self.max_masked = mask_probability, max_masked
        self.random = random.Random(seed)

    def __call__(self, rows):
        batch = dict(
            self.processor(
                text=[row["text"] for row in rows], caption_length=self.caption_length, **region_inputs(rows)
            )
        )
        tokenizer = self.processor.tokenizer
        input_ids = batch["input_ids"].clone()
        labels = torch.full_like(input_ids, -100)
        caption_tokens = (batch["attention_mask"][:, : self.caption_length]).sum(1)  # [CLS] words [SEP]
        for i, length in enumerate(caption_tokens.tolist()):
            candidates = list(range(1, length))  # words and [SEP], never [CLS]
            count = min(max(round(self.mask_probability * length), 1), self.max_masked, len(candidates))
            for position in self.random.sample(candidates, count):
                labels[i, position] = input_ids[i, position]
                draw = self.random.random()
                if draw < 0.8:
                    input_ids[i, position] = tokenizer.mask_token_id
                elif draw < 0.9:
                    input_ids[i, position] = self.random.randrange(len(tokenizer))
        batch.update(input_ids=input_ids, labels=labels)
        return batch


def caption_metrics(model, processor, test, num_beams, batch_size=32):
    """Exact match with one of the image's reference captions, and the share of generated words found in them."""
    references = {}
    for row in test:
        references.setdefault(row["image_id"], {"row": row, "captions": set()})["captions"].add(row["text"].lower())
    images = list(references.values())
    tokenizer = processor.tokenizer
    exact, precision = [], []
    model.eval()
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = processor(**region_inputs([image["row"] for image in chunk]))  # tags alone: the generation input
        with torch.no_grad():
            generated = model.generate(**batch, num_beams=num_beams)
        for image, ids in zip(chunk, generated.tolist()):
            caption = tokenizer.decode(ids, skip_special_tokens=True).strip()
            exact.append(caption in image["captions"])
            words = set(" ".join(image["captions"]).replace(",", " ").split())
            produced = caption.replace(",", " ").split()
            precision.append(np.mean([w in words for w in produced]) if produced else 0.0)
            if start == 0 and len(exact) <= 3:
                print(f"  {caption!r}  <- e.g. {min(image['captions'])!r}")
    return float(np.mean(exact)), float(np.mean(precision))


def run_captioning(args, training_args):
    train = shapes_dataset("captions", num_images=args.num_images, split="train")
    test = shapes_dataset("captions", num_images=args.eval_images, split="test")
    options = dict(
        caption_tag_position_offset=args.caption_length,
        caption_max_length=args.caption_length,
        caption_label_smoothing=0.1,
    )
    model, processor = load(OscarForConditionalGeneration, args, len(train[0]["region_features"][0]), **options)
    model = with_lora(model, args, "mlm_head")
    trainer = VLPTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=CaptionCollator(processor, args.caption_length),
    )
    trainer.train()
    model = trainer.model
    model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    exact, precision = caption_metrics(model, processor, test, args.num_beams)
    model.save_pretrained(training_args.output_dir)
    processor.save_pretrained(training_args.output_dir)
    return f"held-out captions: exact match {exact:.3f}, word precision {precision:.3f} (num_beams={args.num_beams})"


def main(argv=None):
    parser = HfArgumentParser((OscarShapesArguments, TrainingArguments))
    # lr 5e-4 (1e-3 is unstable for the small models, the Trainer's 5e-5 too slow from scratch); every one a flag
    parser.set_defaults(
        learning_rate=5e-4,
        per_device_train_batch_size=32,
        warmup_steps=100,
        weight_decay=0.01,
        save_strategy="no",
        report_to="none",
    )
    args, training_args = parser.parse_args_into_dataclasses(argv)
    training_args.remove_unused_columns = False  # the collators read the raw columns
    tasks = ["vqa", "captioning"] if args.task == "both" else [args.task]
    if any(t not in ("vqa", "captioning") for t in tasks):
        raise ValueError(f"--task must be vqa, captioning or both, got {args.task!r}")
    output_dir, results = training_args.output_dir, {}
    for task in tasks:
        if len(tasks) > 1:
            training_args.output_dir = f"{output_dir}/{task}"
        results[task] = (run_vqa if task == "vqa" else run_captioning)(args, training_args)
    for task, result in results.items():
        print(f"oscar {task}: {result}")
    return results


if __name__ == "__main__":
    main()
