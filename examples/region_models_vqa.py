"""Fine-tune VisualBERT and/or LXMERT on shapes-world VQA (region features from `hf_vlp.data.shapes_dataset`).

    python examples/region_models_vqa.py --output_dir runs/region_vqa                    # both, small, from scratch
    python examples/region_models_vqa.py --output_dir runs/lxmert_vqa --arch lxmert --lora_r 8 \
        --model_name_or_path runs/converted_lxmert                                         # LoRA on a converted model
    torchrun --nproc_per_node=2 examples/region_models_vqa.py --output_dir runs/region_vqa --arch visual_bert
Arguments: the fields below plus every `transformers.TrainingArguments` flag (`--bf16`, `--learning_rate`, ...).
Defaults (`TRAINING_DEFAULTS`): 3000 steps of batch 32 at lr 5e-4 (VisualBERT: 2.7 minutes on 2 quiet CPU cores; 600
steps leave exist and count questions near their controls, docs/data.md);
`--max_steps -1 --num_train_epochs N` trains by epochs instead.

Inputs follow each model's original VQA format: VisualBERT reads the answer at the `[MASK]` of
`[CLS] question [MASK] [SEP]` (the processor's `question_answering=True`) and trains with KL divergence on the soft
scores; LXMERT classifies the pooled output and trains with `BCEWithLogits * num_answers`. From scratch, both use a
tokenizer over the shapes world's words; `--model_name_or_path` (e.g. a converted original checkpoint saved with
`hf-vlp convert ... --output`) brings its own processor and encoder, and gets a fresh answer head for the shapes
answers. Prints the held-out accuracy per question type next to its controls (`hf_vlp.evaluation`): the
question-type prior and the same model on shuffled images.
"""

from dataclasses import dataclass, field

import torch
from transformers import AutoProcessor, HfArgumentParser, TrainingArguments

import hf_vlp  # noqa: F401  (registers the architectures)
from hf_vlp.data import SHAPES_VQA_ANSWERS, shapes_dataset
from hf_vlp.evaluation import OVERALL, classification_controls, classifier_predict
from hf_vlp.modeling.lxmert import LORA_TARGET_MODULES as LXMERT_LORA_TARGETS
from hf_vlp.modeling.lxmert import LxmertForVisualQuestionAnswering, LxmertProcessor
from hf_vlp.modeling.visual_bert import LORA_TARGET_MODULES as VISUAL_BERT_LORA_TARGETS
from hf_vlp.modeling.visual_bert import VisualBertForVisualQuestionAnswering, VisualBertProcessor
from hf_vlp.processing.region import RegionFeatureProcessor
from hf_vlp.recipes import build_config, shapes_tokenizer
from hf_vlp.registry import get_spec
from hf_vlp.trainer import VLPTrainer

ARCHS = {
    "visual_bert": (VisualBertForVisualQuestionAnswering, VisualBertProcessor, VISUAL_BERT_LORA_TARGETS, "cls"),
    "lxmert": (LxmertForVisualQuestionAnswering, LxmertProcessor, LXMERT_LORA_TARGETS, "answer_head"),
}


# TrainingArguments defaults of this example (each still a flag): lr 5e-4, not 1e-3 (unstable for the small models)
# nor the Trainer's 5e-5 (too slow from scratch)
TRAINING_DEFAULTS = dict(
    learning_rate=5e-4,
    per_device_train_batch_size=32,
    max_steps=3000,
    warmup_steps=60,
    weight_decay=0.01,
    logging_steps=100,
    save_strategy="no",
    report_to="none",
)


@dataclass
class RegionVQAArguments:
    arch: str = field(default="both", metadata={"help": "visual_bert, lxmert or both"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "a saved / converted model dir (one arch)"})
    num_images: int = field(default=1500, metadata={"help": "training scenes (3 questions each)"})
    eval_images: int = field(default=200, metadata={"help": "held-out test scenes"})
    hidden_size: int | None = field(default=None, metadata={"help": "default: the architecture's small size (128)"})
    num_layers: int | None = field(
        default=None, metadata={"help": "VisualBERT layers; LXMERT gets l=num_layers, x=r=num_layers-1 (default 3)"}
    )
    num_attention_heads: int | None = field(default=None, metadata={"help": "default: the small size (4)"})
    lora_r: int = field(default=0, metadata={"help": "> 0: train LoRA adapters (the architecture's preset) + the head"})


def small_config(arch, tokenizer, feature_dim, args):
    """The architecture's spec small sizes (`hf_vlp.recipes.build_config`: width-matched init 0.08, not BERT's
    0.02, which leaves a 128-wide model on the question-only prior), with any size given on the command line."""
    sizes = {}
    if args.hidden_size is not None:
        sizes.update(hidden_size=args.hidden_size, intermediate_size=2 * args.hidden_size)
    if args.num_attention_heads is not None:
        sizes["num_attention_heads"] = args.num_attention_heads
    if args.num_layers is not None:
        if arch == "visual_bert":
            sizes["num_hidden_layers"] = args.num_layers
        else:
            layers = max(args.num_layers - 1, 1)
            sizes.update(l_layers=args.num_layers, x_layers=layers, r_layers=layers)
    answers = {get_spec(arch).head("vqa").num_labels_field: len(SHAPES_VQA_ANSWERS)}
    return build_config(
        arch,
        tokenizer,
        feature_dim,
        sizes,
        id2label=dict(enumerate(SHAPES_VQA_ANSWERS)),
        pad_token_id=tokenizer.pad_token_id,
        **answers,
    )


def build(arch, args, feature_dim):
    model_class, processor_class, _, _ = ARCHS[arch]
    if args.model_name_or_path:
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
        answers = {"id2label": dict(enumerate(SHAPES_VQA_ANSWERS))}
        if arch == "lxmert":
            answers["num_qa_labels"] = len(SHAPES_VQA_ANSWERS)
        model = model_class.from_pretrained(args.model_name_or_path, ignore_mismatched_sizes=True, **answers)
    else:
        tokenizer = shapes_tokenizer()
        processor = processor_class(RegionFeatureProcessor(), tokenizer)
        model = model_class(small_config(arch, tokenizer, feature_dim, args))
    return model, processor


class VQACollator:
    """Shapes VQA rows -> the model's keyword arguments (through its processor) + soft answer scores `labels`."""

    def __init__(self, arch, processor):
        self.arch, self.processor = arch, processor

    def __call__(self, rows):
        extra = {"question_answering": True} if self.arch == "visual_bert" else {}
        batch = dict(
            self.processor(
                text=[row["question"] for row in rows],
                visual_feats=[row["region_features"] for row in rows],
                boxes=[row["boxes"] for row in rows],
                image_sizes=[(row["image_width"], row["image_height"]) for row in rows],
                **extra,
            )
        )
        labels = torch.zeros(len(rows), len(SHAPES_VQA_ANSWERS))
        for i, row in enumerate(rows):
            for answer, score in zip(row["answer_ids"], row["answer_scores"]):
                labels[i, answer] = max(labels[i, answer].item(), score)
        batch["labels"] = labels
        return batch


def run(arch, args, training_args, train, test):
    model, processor = build(arch, args, len(train[0]["region_features"][0]))
    if args.lora_r > 0:
        import peft

        _, _, targets, head = ARCHS[arch]
        lora = peft.LoraConfig(
            r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=targets, modules_to_save=[head]
        )
        model = peft.get_peft_model(model, lora)
        model.print_trainable_parameters()
    collator = VQACollator(arch, processor)
    trainer = VLPTrainer(model=model, args=training_args, train_dataset=train, data_collator=collator)
    trainer.train()
    report = classification_controls(
        classifier_predict(trainer.model, collator, SHAPES_VQA_ANSWERS), train, test, task=f"{arch} vqa"
    )
    trainer.save_model(training_args.output_dir)
    processor.save_pretrained(training_args.output_dir)
    return report


def main(argv=None):
    parser = HfArgumentParser((RegionVQAArguments, TrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS)
    args, training_args = parser.parse_args_into_dataclasses(argv)
    training_args.remove_unused_columns = False  # the collator reads the raw columns
    archs = list(ARCHS) if args.arch == "both" else [args.arch]
    if any(a not in ARCHS for a in archs):
        raise ValueError(f"--arch must be one of {sorted(ARCHS)} or 'both', got {args.arch!r}")
    if args.model_name_or_path and len(archs) > 1:
        raise ValueError("--model_name_or_path needs a single --arch")

    train = shapes_dataset("vqa", num_images=args.num_images, split="train")
    test = shapes_dataset("vqa", num_images=args.eval_images, split="test")
    output_dir, reports = training_args.output_dir, {}
    for arch in archs:
        if len(archs) > 1:
            training_args.output_dir = f"{output_dir}/{arch}"
        reports[arch] = run(arch, args, training_args, train, test)
    for arch, report in reports.items():
        print(
            f"{arch}: held-out VQA accuracy {report.accuracy[OVERALL]:.3f} by question type; prior = the most "
            "frequent training answer of the type, shuffled = the same model with another image's regions"
        )
        print(report.format())
    return reports


if __name__ == "__main__":
    main()
