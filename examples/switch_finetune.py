"""Fine-tune a Switch Transformer (mixture-of-experts T5) on shapes-world VQA as text-to-text.

    python examples/switch_finetune.py --output_dir runs/switch_vqa --num_images 300 \
        --num_train_epochs 8 --per_device_train_batch_size 32 --learning_rate 5e-4        # small, from scratch
    python examples/switch_finetune.py --output_dir runs/switch_vqa --router_aux_loss_coef 0.01 --bf16
    python examples/switch_finetune.py --output_dir runs/switch_vqa --model_name_or_path runs/converted_switch
    torchrun --nproc_per_node=2 examples/switch_finetune.py --output_dir runs/switch_vqa
Arguments: the fields below plus every `transformers.TrainingArguments` flag.

Switch Transformers are text-only, so the image enters as text: the source is
`question: <question> context: <a caption of the scene listing every shape>` and the target the answer
(T5's "question: ... context: ..." format). `VLPTrainer` logs `lm_loss`, `router_z_loss` and `router_aux_loss`
(and their encoder / decoder parts) separately.

No pixel enters the model: the scene description stands in for the image. Prints held-out exact-match accuracy per
question type next to the question-type prior and the same model given another scene's description (the
description is an image column, `image_description`, so `hf_vlp.evaluation.shuffle_images` swaps it).
"""

from dataclasses import dataclass, field

import torch
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, HfArgumentParser, TrainingArguments

import hf_vlp  # noqa: F401  (registers the architectures)
from hf_vlp.data import shapes_dataset
from hf_vlp.evaluation import classification_controls
from hf_vlp.modeling.switch_transformers import LORA_TARGET_MODULES, SwitchTransformersForConditionalGeneration
from hf_vlp.recipes import shapes_tokenizer
from hf_vlp.trainer import VLPTrainer


@dataclass
class SwitchArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "a converted / Hub Switch model dir"})
    num_images: int = field(default=400, metadata={"help": "training scenes (3 questions each)"})
    eval_images: int = field(default=64, metadata={"help": "held-out test scenes"})
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_experts: int = 4
    expert_capacity: int = field(default=64, metadata={"help": "tokens per expert and sequence"})
    router_z_loss_coef: float = 0.001
    router_aux_loss_coef: float = 0.01
    lora_r: int = field(default=0, metadata={"help": "> 0: train LoRA adapters (LORA_TARGET_MODULES) only"})


def scene_descriptions(num_images, split):
    """image_id -> a caption that lists every shape of the scene (the shapes world's first caption)."""
    captions = shapes_dataset(
        "captions", num_images=num_images, split=split, samples_per_image=1, with_region_features=False
    )
    return dict(zip(captions["image_id"], captions["text"]))


def question_rows(num_images, split):
    """VQA rows (question, question_type, answer, image_id) with the scene's description as `image_description`."""
    data = shapes_dataset("vqa", num_images=num_images, split=split, with_region_features=False)
    context = scene_descriptions(num_images, split)
    columns = ("image_id", "question", "question_type", "answer")
    return [
        dict({name: data[i][name] for name in columns}, image_description=context[data[i]["image_id"]])
        for i in range(len(data))
    ]


def source_text(row):
    return f"question: {row['question']} context: {row['image_description']}"


def load(args):
    if args.model_name_or_path:
        return (
            SwitchTransformersForConditionalGeneration.from_pretrained(args.model_name_or_path),
            AutoTokenizer.from_pretrained(args.model_name_or_path),
        )
    tokenizer = shapes_tokenizer()
    from transformers import SwitchTransformersConfig

    config = SwitchTransformersConfig(
        vocab_size=len(tokenizer),
        d_model=args.d_model,
        d_kv=args.d_model // args.num_heads,
        d_ff=2 * args.d_model,
        num_layers=args.num_layers,
        num_decoder_layers=args.num_layers,
        num_heads=args.num_heads,
        num_experts=args.num_experts,
        num_sparse_encoder_layers=args.num_layers // 2 or 1,
        num_sparse_decoder_layers=args.num_layers // 2 or 1,
        expert_capacity=args.expert_capacity,
        router_z_loss_coef=args.router_z_loss_coef,
        router_aux_loss_coef=args.router_aux_loss_coef,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return SwitchTransformersForConditionalGeneration(config), tokenizer


def main(argv=None):
    parser = HfArgumentParser((SwitchArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(argv)
    training_args.remove_unused_columns = False
    model, tokenizer = load(args)
    if args.lora_r > 0:
        import peft

        model = peft.get_peft_model(
            model, peft.LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=LORA_TARGET_MODULES)
        )
        model.print_trainable_parameters()

    train_rows = question_rows(args.num_images, "train")
    test_rows = question_rows(args.eval_images, "test")

    def encode(sources, targets):
        # the tokenizer's own [CLS] is dropped: T5-style sources end with the eos ([SEP]) only
        source = tokenizer(sources, truncation=True, max_length=96)["input_ids"]
        target = tokenizer(targets, truncation=True, max_length=8)["input_ids"]
        return [dict(input_ids=s[1:], labels=t[1:]) for s, t in zip(source, target)]

    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")
    train_examples = encode([source_text(row) for row in train_rows], [row["answer"] for row in train_rows])
    trainer = VLPTrainer(model=model, args=training_args, train_dataset=train_examples, data_collator=collator)
    trainer.train()
    model = trainer.model
    model = (model.merge_and_unload() if hasattr(model, "merge_and_unload") else model).eval()

    def predict(rows):  # greedy answers, compared exactly with the gold answer
        predictions = []
        with torch.no_grad():
            for start in range(0, len(rows), 64):
                chunk = rows[start : start + 64]
                examples = encode([source_text(row) for row in chunk], [row["answer"] for row in chunk])
                batch = collator([{"input_ids": e["input_ids"]} for e in examples])
                generated = model.generate(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=6
                )
                predictions += [p.strip() for p in tokenizer.batch_decode(generated, skip_special_tokens=True)]
        return predictions

    report = classification_controls(predict, train_rows, test_rows, task="switch_vqa")
    model.save_pretrained(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)
    print("switch_transformers VQA (text-to-text), held-out exact match by question type")
    print("  prior = most frequent training answer of the type; shuffled = same model, another scene's description")
    print("\n".join("  " + line for line in report.format().splitlines()), flush=True)
    return report


if __name__ == "__main__":
    main()
