"""Fine-tune BLIP on the shapes world: VQA (answer decoder), image-text retrieval (ITC + ITM) or captioning.

    python examples/blip_shapes.py --output_dir runs/blip_vqa --task vqa --num_images 300 \
        --num_train_epochs 6 --per_device_train_batch_size 32 --learning_rate 5e-4       # small, from scratch
    python examples/blip_shapes.py --output_dir runs/blip_retrieval --task retrieval \
        --num_train_epochs 10 --per_device_train_batch_size 32 --learning_rate 5e-4
    python examples/blip_shapes.py --output_dir runs/blip_retrieval --task retrieval --momentum
    python examples/blip_shapes.py --output_dir runs/blip_caption --task captioning --lora_r 8 \
        --model_name_or_path runs/converted_blip_caption --vocab path/to/bert-vocab-dir     # LoRA on a converted model
    torchrun --nproc_per_node=2 examples/blip_shapes.py --output_dir runs/blip_retrieval --task retrieval
Arguments: the fields below plus every `transformers.TrainingArguments` flag (`--bf16`, `--num_train_epochs`, ...).

Each task follows the original fine-tuning script:
  vqa (`train_vqa.py`): question -> `[ENC]`-led encoder grounded in the image; the answer decoder is trained with the
      label-smoothed LM loss; evaluation ranks the shapes world's answer list (`inference='rank'`).
  retrieval (`train_retrieval.py`): ITC (optionally with momentum encoders + queues, `--momentum`) + ITM with hard
      negatives; evaluation = ITC top-k re-ranked by ITM (`retrieve`), text->image recall@1/5.
  captioning (`train_caption.py`): prompt "a picture of " + caption, loss on the caption only; greedy decoding.
Prints the held-out metric next to its controls (hf_vlp.evaluation): VQA accuracy per question type against the
question-type prior and the same model on shuffled images; retrieval recall@1/5 against chance and a shuffled gallery.

From scratch: hidden 128, 2 layers, 64 px input with 8 px patches (a shape is 7-19 px there) and a width-matched init
(`--initializer_range 0.08`; BERT's 0.02 leaves a 128-wide model's attention near uniform). Measured tables:
docs/data.md, "Does the model look at the image? (examples)".
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import AutoProcessor, BlipImageProcessorPil, BlipProcessor, HfArgumentParser, TrainingArguments

import hf_vlp  # noqa: F401  (registers the architectures)
from hf_vlp.data import SHAPES_VQA_ANSWERS, shapes_dataset
from hf_vlp.evaluation import classification_controls, ranking_controls
from hf_vlp.modeling.blip import (
    LORA_TARGET_MODULES,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
    blip_config,
    build_blip_processor,
)
from hf_vlp.recipes import shapes_tokenizer
from hf_vlp.trainer import VLPTrainer

PROMPT = "a picture of "


@dataclass
class BlipShapesArguments:
    task: str = field(default="vqa", metadata={"help": "vqa, retrieval or captioning"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "a converted / Hub BLIP model dir"})
    vocab: str | None = field(default=None, metadata={"help": "bert-base-uncased vocab dir for a converted model"})
    num_images: int = field(default=400, metadata={"help": "training scenes"})
    eval_images: int = field(default=64, metadata={"help": "held-out test scenes"})
    image_size: int = field(default=64, metadata={"help": "from scratch: input resolution"})
    patch_size: int = field(default=8, metadata={"help": "from scratch: patch size (8 px keeps a small shape whole)"})
    hidden_size: int = 128
    num_layers: int = 2
    num_attention_heads: int = 4
    initializer_range: float = field(
        default=0.08, metadata={"help": "from scratch: init std (~1/sqrt(hidden_size); BERT's 0.02 suits 768 wide)"}
    )
    momentum: bool = field(default=False, metadata={"help": "retrieval: momentum distillation + feature queues"})
    queue_size: int = field(default=256, metadata={"help": "retrieval with --momentum: queue length"})
    lora_r: int = field(default=0, metadata={"help": "> 0: train LoRA adapters (LORA_TARGET_MODULES) only"})


def shapes_processor(image_size):
    """The shapes-world vocabulary with BLIP's `[DEC]` (bos) and `[ENC]` tokens, and BLIP's image transform."""
    tokenizer = shapes_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def load(model_class, args):
    if args.model_name_or_path:
        model = model_class.from_pretrained(args.model_name_or_path)
        if args.vocab:  # converted checkpoints carry no tokenizer: BLIP's is bert-base-uncased + [DEC] + [ENC]
            return model, build_blip_processor(args.vocab, image_size=model.config.vision_config.image_size)
        return model, AutoProcessor.from_pretrained(args.model_name_or_path)
    processor = shapes_processor(args.image_size)
    tokenizer = processor.tokenizer
    width = dict(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=2 * args.hidden_size,
        initializer_range=args.initializer_range,
    )
    config = blip_config(
        image_size=args.image_size,
        embed_dim=64,
        initializer_range=args.initializer_range,
        vision=dict(width, patch_size=args.patch_size),
        text=dict(
            width,
            vocab_size=len(tokenizer),
            max_position_embeddings=64,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
        ),
        enc_token_id=tokenizer.convert_tokens_to_ids("[ENC]"),
        use_momentum_distillation=args.momentum,
        queue_size=args.queue_size,
    )
    return model_class(config), processor


def with_lora(model, args):
    if args.lora_r <= 0:
        return model
    import peft

    model = peft.get_peft_model(
        model, peft.LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=LORA_TARGET_MODULES)
    )
    model.print_trainable_parameters()
    return model


def print_report(title, report, note):
    print(f"{title}\n  {note}")
    print("\n".join("  " + line for line in report.format().splitlines()), flush=True)


def images(rows, processor):
    return processor.image_processor([row["image"] for row in rows], return_tensors="pt")["pixel_values"]


def texts(processor, strings):
    return processor.tokenizer(strings, padding="longest", truncation=True, max_length=40, return_tensors="pt")


def train(model, args, training_args, data, collator):
    model = with_lora(model, args)
    trainer = VLPTrainer(model=model, args=training_args, train_dataset=data, data_collator=collator)
    trainer.train()
    model = trainer.model
    return (model.merge_and_unload() if hasattr(model, "merge_and_unload") else model).eval()


# ------------------------------------------------------------------------------------------------------------------
# VQA
# ------------------------------------------------------------------------------------------------------------------


def run_vqa(args, training_args):
    train_rows = shapes_dataset("vqa", num_images=args.num_images, split="train", with_region_features=False)
    test_rows = shapes_dataset("vqa", num_images=args.eval_images, split="test", with_region_features=False)
    model, processor = load(BlipForQuestionAnswering, args)

    def collate(rows):
        question = texts(processor, [row["question"] for row in rows])
        answer = texts(processor, [row["answer"] for row in rows])
        labels = answer["input_ids"].masked_fill(
            answer["attention_mask"] == 0, -100
        )  # first token -> [DEC] in the model
        return dict(
            input_ids=question["input_ids"],
            attention_mask=question["attention_mask"],
            pixel_values=images(rows, processor),
            labels=labels,
        )

    model = train(model, args, training_args, train_rows, collate)
    candidates = texts(processor, list(SHAPES_VQA_ANSWERS))

    def predict(rows):  # the answer decoder ranks the shapes world's answer list (inference='rank')
        answers = []
        with torch.no_grad():
            for start in range(0, len(rows), 32):
                chunk = rows[start : start + 32]
                question = texts(processor, [row["question"] for row in chunk])
                ranking = model.rank_answers(
                    question["input_ids"],
                    images(chunk, processor),
                    candidates["input_ids"],
                    candidates["attention_mask"],
                    attention_mask=question["attention_mask"],
                    k=8,
                )
                answers += [SHAPES_VQA_ANSWERS[i] for i in ranking.answer_index.tolist()]
        return answers

    report = classification_controls(predict, train_rows, test_rows, task="blip_vqa")
    print_report(
        "BLIP VQA, held-out accuracy by question type",
        report,
        "prior = most frequent training answer of the type; shuffled = same model, another scene's image",
    )
    return model, processor, report


# ------------------------------------------------------------------------------------------------------------------
# retrieval
# ------------------------------------------------------------------------------------------------------------------


def run_retrieval(args, training_args):
    train_rows = shapes_dataset("retrieval", num_images=args.num_images, split="train", with_region_features=False)
    test_rows = shapes_dataset("retrieval", num_images=args.eval_images, split="test", with_region_features=False)
    model, processor = load(BlipForImageTextRetrieval, args)
    image_index = {image_id: i for i, image_id in enumerate(sorted(set(train_rows["image_id"])))}

    def collate(rows):
        text = texts(processor, [row["text"] for row in rows])
        return dict(
            input_ids=text["input_ids"],
            attention_mask=text["attention_mask"],
            pixel_values=images(rows, processor),
            return_loss=True,
            image_ids=torch.tensor([image_index[row["image_id"]] for row in rows]),
        )

    model = train(model, args, training_args, train_rows, collate)

    def score(rows):  # (texts, images): ITC top-k re-ranked by ITM, as the original evaluation
        text = texts(processor, [row["text"] for row in rows])
        with torch.no_grad():
            return model.retrieve(images(rows, processor), text["input_ids"], text["attention_mask"], k=16).scores_t2i

    report = ranking_controls(score, test_rows, task="blip_retrieval")
    print_report(
        f"BLIP text->image retrieval over {len(test_rows)} held-out scenes",
        report,
        "chance = K / N; shuffled = same model, the gallery's images shuffled (the true image is gone)",
    )
    return model, processor, report


# ------------------------------------------------------------------------------------------------------------------
# captioning
# ------------------------------------------------------------------------------------------------------------------


def run_captioning(args, training_args):
    train_rows = shapes_dataset("captions", num_images=args.num_images, split="train", with_region_features=False)
    test_rows = shapes_dataset(
        "captions", num_images=args.eval_images, split="test", with_region_features=False, samples_per_image=1
    )
    model, processor = load(BlipForConditionalGeneration, args)
    prompt_length = len(processor.tokenizer(PROMPT.strip())["input_ids"]) - 1  # [CLS] + prompt words

    def collate(rows):
        text = texts(processor, [PROMPT + row["text"] for row in rows])
        labels = text["input_ids"].masked_fill(text["attention_mask"] == 0, -100)
        labels[:, :prompt_length] = -100  # BLIP_Decoder: no loss on the prompt
        return dict(
            input_ids=text["input_ids"],
            attention_mask=text["attention_mask"],
            pixel_values=images(rows, processor),
            labels=labels,
        )

    model = train(model, args, training_args, train_rows, collate)
    rows = [test_rows[i] for i in range(len(test_rows))]
    prompt = texts(processor, [PROMPT.strip()] * len(rows))
    with torch.no_grad():
        generated = model.generate(
            pixel_values=images(rows, processor), input_ids=prompt["input_ids"], max_new_tokens=32
        )
    captions = processor.tokenizer.batch_decode(generated, skip_special_tokens=True)
    precision = []
    for caption, row in zip(captions, rows):
        words, reference = caption.replace(PROMPT.strip(), "").split(), set(row["text"].replace(",", " ,").split())
        precision.append(np.mean([w in reference for w in words]) if words else 0.0)
    return model, processor, f"held-out caption word precision {np.mean(precision):.3f}; e.g. {captions[0]!r}"


def main(argv=None):
    parser = HfArgumentParser((BlipShapesArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(argv)
    training_args.remove_unused_columns = False  # the collators read the raw columns
    runs = {"vqa": run_vqa, "retrieval": run_retrieval, "captioning": run_captioning}
    if args.task not in runs:
        raise ValueError(f"--task must be one of {sorted(runs)}, got {args.task!r}")
    model, processor, result = runs[args.task](args, training_args)
    model.save_pretrained(training_args.output_dir)
    processor.save_pretrained(training_args.output_dir)
    if isinstance(result, str):  # captioning: its own line (the VQA and retrieval tables are printed already)
        print(f"blip {args.task}: {result}")
    return result


if __name__ == "__main__":
    main()
