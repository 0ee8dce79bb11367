"""FILIP contrastive pretraining on the shapes world's captions, with zero-shot text->image retrieval on held-out
scenes before and after, next to chance and a shuffled gallery.

    python examples/filip_shapes_retrieval.py --output_dir runs/filip --num_train_epochs 4 \
        --per_device_train_batch_size 64 --learning_rate 5e-4
    torchrun --nproc_per_node=2 examples/filip_shapes_retrieval.py --output_dir runs/filip   # the same loss (DDP-exact)
Arguments: the fields below plus every `transformers.TrainingArguments` flag (`--bf16`, `--max_steps`, ...).

Training rows are the `captions` task (three captions per scene); `FilipForImageTextRetrieval` with `labels` = the
scene's index makes every caption of a scene a positive of its image (a batch often holds two captions of one scene;
without ids they would be each other's negatives). Held-out scenes come from the `test` split (`retrieval` task, one
caption each); text->image retrieval ranks images by FILIP's text->image late-interaction similarity s^T
(`logits_per_text`). The report also scores the same model's global CLS / EOT embeddings, which the paper's loss never
trains (`global_loss_weight` 0): a control for how much of the result the late interaction carries.
From scratch the model is small (hidden 128, 2 layers, 64 px input, 8 px patches: a shape is 7-19 px there) with the
shapes world's word-level vocabulary and CLIP's init scaled by 2 (hf_vlp's small CLIP recipe).
Measured results: docs/filip.md, "Shapes-world retrieval".
"""

import time
from dataclasses import dataclass, field

import torch
from transformers import CLIPImageProcessorPil, HfArgumentParser, TrainerCallback, TrainingArguments

import hf_vlp  # noqa: F401  (registers the architectures)
from hf_vlp.data import shapes_dataset
from hf_vlp.evaluation import ranking_controls
from hf_vlp.modeling.filip import FilipConfig, FilipForImageTextRetrieval, FilipProcessor
from hf_vlp.recipes import shapes_tokenizer
from hf_vlp.trainer import VLPTrainer


@dataclass
class ShapesArguments:
    num_images: int = field(default=400, metadata={"help": "training scenes (three captions each)"})
    eval_images: int = field(default=64, metadata={"help": "held-out test scenes (the retrieval gallery)"})
    image_size: int = 64
    patch_size: int = field(default=8, metadata={"help": "8 px keeps a small shape whole at 64 px"})
    hidden_size: int = 128
    num_layers: int = 2
    num_attention_heads: int = 4
    projection_dim: int = 64
    token_selection_ratio: float = field(default=0.25, metadata={"help": "the paper's 25% (1.0: every token)"})
    initializer_factor: float = field(default=2.0, metadata={"help": "CLIP's init scale (2 at width 128)"})
    max_train_seconds: float = field(default=0.0, metadata={"help": "> 0: stop training after this many seconds"})


def build(args):
    tokenizer = shapes_tokenizer()
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # a BERT tokenizer's segments: CLIP has none
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": args.image_size}, crop_size={"height": args.image_size, "width": args.image_size}
    )
    processor = FilipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    sizes = dict(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=2 * args.hidden_size,
    )
    # [CLS] text [SEP] [PAD]...: the global text embedding pools at the first eos_token_id, here [SEP]
    text = dict(
        sizes,
        vocab_size=len(tokenizer),
        max_position_embeddings=40,
        eos_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = FilipConfig(
        text_config=text,
        vision_config=dict(sizes, image_size=args.image_size, patch_size=args.patch_size),
        projection_dim=args.projection_dim,
        token_selection_ratio=args.token_selection_ratio,
        initializer_factor=args.initializer_factor,
    )
    return FilipForImageTextRetrieval(config), processor


class TimeBudget(TrainerCallback):
    """Stops training after `seconds` of wall time (a shared CPU's speed varies; the budget does not)."""

    def __init__(self, seconds):
        self.seconds, self.start = seconds, time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.seconds > 0 and time.perf_counter() - self.start > self.seconds:
            control.should_training_stop = True


def scene_index(image_id: str) -> int:
    return int(image_id.rsplit("-", 1)[1])


def evaluate(model, processor, rows, title):
    """Text->image recall@1/5 of the late interaction (s^T) and of the global embeddings, with their controls."""
    model.eval()
    outputs = {}

    def score(which):
        def scores(batch_rows):
            batch = processor(
                images=[row["image"] for row in batch_rows],
                text=[row["text"] for row in batch_rows],
                padding="longest",
                truncation=True,
                max_length=40,
            )
            with torch.no_grad():
                out = model(**batch)
            return out.logits_per_text if which == "late" else out.global_logits_per_text

        return scores

    for which, note in (("late", "late interaction s^T"), ("global", "global CLS / EOT embeddings")):
        report = ranking_controls(score(which), rows, task=f"filip_{which}")
        outputs[which] = report
        print(f"{title}: text->image over {len(rows)} held-out scenes, {note}")
        print("\n".join("  " + line for line in report.format().splitlines()), flush=True)
    return outputs


def main():
    parser = HfArgumentParser((ShapesArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses()
    training_args.remove_unused_columns = False  # the collator reads raw dataset columns
    torch.manual_seed(training_args.seed)
    model, processor = build(args)
    train_rows = shapes_dataset("captions", num_images=args.num_images, split="train", with_region_features=False)
    test_rows = shapes_dataset("retrieval", num_images=args.eval_images, split="test", with_region_features=False)

    def collate(rows):
        batch = processor(
            images=[row["image"] for row in rows],
            text=[row["text"] for row in rows],
            padding="longest",
            truncation=True,
            max_length=40,
        )
        return {**batch, "labels": torch.tensor([scene_index(row["image_id"]) for row in rows])}

    evaluate(model, processor, test_rows, "before training")
    start = time.perf_counter()
    trainer = VLPTrainer(
        model=model,
        args=training_args,
        train_dataset=train_rows,
        data_collator=collate,
        callbacks=[TimeBudget(args.max_train_seconds)],
    )
    trainer.train()
    print(f"trained {trainer.state.global_step} steps in {time.perf_counter() - start:.0f} s", flush=True)
    if training_args.process_index == 0:
        evaluate(trainer.model, processor, test_rows, "after training")


if __name__ == "__main__":
    main()
