"""The demo (`hf-vlp demo`): UNITER end to end on the shapes world, on a CPU, in a few minutes.

1. build the shapes world (captions for pretraining, VQA for fine-tuning) with EfficientNet-lite0 region features;
2. pretrain a small UNITER with MLM + MRFR + MRC-KL + ITM/WRA through `VLPTrainer`;
3. fine-tune VQA from the pretrained weights;
4. report the held-out VQA score next to the majority-answer baseline;
5. save in Hub layout (safetensors, config, processor, model card, remote code), reload through
   `AutoModelForVisualQuestionAnswering` / `AutoProcessor`, and answer a question about one test image.
"""

import time
from pathlib import Path

import torch
from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor

from .budget import Budget, train_within
from .data import SHAPES_VQA_ANSWERS, shapes_dataset
from .evaluation import OVERALL, classification_controls, classifier_predict
from .hub import save_for_hub
from .modeling.uniter import UniterForPreTraining, UniterForVisualQuestionAnswering
from .pretraining.collators import DataCollatorForVLPretraining, DataCollatorForVLTask
from .recipes import SMALL_SIZES, build_config, build_processor, shapes_tokenizer, training_arguments
from .trainer import VLPTrainer

PRETRAINING_OBJECTIVES = ("mlm", "mrfr", "mrc_kl", "itm")
# 5e-4 rather than 1e-3: at 1e-3 the small model's loss wanders back up for hundreds of steps after it has
# started to read the image (docs/data.md, "Does the model look at the image?").
LEARNING_RATE = 5e-4


def run_demo(output_dir="demo_output", minutes=4.0, bf16=False, num_images=2000, seed=0, budget_started=None):
    """`budget_started`: the `time.perf_counter()` value the budget counts from (default now; the CLI passes
    `hf_vlp.budget.process_start()` so that start-up and imports count too)."""
    output_dir = Path(output_dir)
    started = time.perf_counter()
    # the whole run, feature extraction included, fits `minutes`; 10% is kept for evaluation and saving
    budget = Budget(minutes * 60, reserve=0.05, started=budget_started)  # evaluation + saving take ~5 s
    torch.manual_seed(seed)
    print("[1/5] building the shapes world and its EfficientNet-lite0 region features ...", flush=True)
    captions = shapes_dataset("captions", num_images=num_images, split="train", seed=seed)
    vqa_train = shapes_dataset("vqa", num_images=num_images, split="train", seed=seed)
    vqa_test = shapes_dataset("vqa", num_images=300, split="test", seed=seed)
    tokenizer = shapes_tokenizer()
    processor = build_processor("uniter", tokenizer)
    feature_dim = len(captions[0]["region_features"][0])
    config = build_config(
        "uniter",
        tokenizer,
        feature_dim,
        SMALL_SIZES,
        num_labels=len(SHAPES_VQA_ANSWERS),
        id2label=dict(enumerate(SHAPES_VQA_ANSWERS)),
        ot_iterations=20,
    )
    print(
        f"      {len(captions)} captions, {len(vqa_train)} training / {len(vqa_test)} held-out questions, "
        f"{feature_dim}-d region features, vocabulary {len(tokenizer)}",
        flush=True,
    )

    common = dict(bf16=bf16, use_cpu=not torch.cuda.is_available(), disable_tqdm=False, logging_steps=50)

    print(f"[2/5] pretraining UNITER ({', '.join(PRETRAINING_OBJECTIVES)}) ...", flush=True)
    pretrain_collator = DataCollatorForVLPretraining(processor, objectives=PRETRAINING_OBJECTIVES, seed=seed)
    model = UniterForPreTraining(config)

    def pretrainer(max_steps, callbacks=None):
        arguments = training_arguments(
            output_dir / "pretrain", max_steps=max_steps, learning_rate=LEARNING_RATE, **common
        )
        return VLPTrainer(
            model=model, args=arguments, train_dataset=captions, data_collator=pretrain_collator, callbacks=callbacks
        )

    # a third of the training time left to pretraining, the rest to fine-tuning (hf_vlp/budget.py)
    pretrain_steps = train_within(pretrainer, budget.deadline(share=1 / 3)).global_step
    model.save_pretrained(output_dir / "pretrain")

    print("[3/5] fine-tuning VQA from the pretrained weights ...", flush=True)
    vqa_model = UniterForVisualQuestionAnswering.from_pretrained(output_dir / "pretrain")
    vqa_collator = DataCollatorForVLTask(processor, "vqa", num_labels=config.num_labels)

    def finetuner(max_steps, callbacks=None):
        arguments = training_arguments(output_dir / "vqa", max_steps=max_steps, learning_rate=LEARNING_RATE, **common)
        return VLPTrainer(
            model=vqa_model, args=arguments, train_dataset=vqa_train, data_collator=vqa_collator, callbacks=callbacks
        )

    finetune_steps = train_within(finetuner, budget.deadline()).global_step

    print(
        "[4/5] held-out evaluation, with the controls that show whether the answer comes from the image ...", flush=True
    )
    report = classification_controls(
        classifier_predict(vqa_model, vqa_collator, SHAPES_VQA_ANSWERS), vqa_train, vqa_test
    )
    score = report.accuracy[OVERALL]
    print("      accuracy by question type; prior = the most frequent training answer of the type; shuffled = the same")
    print("      model with each question given another image's regions (a model that ignores the image scores it):")
    print("\n".join("      " + line for line in report.format().splitlines()), flush=True)

    print("[5/5] saving in Hub layout and reloading through the Auto classes ...", flush=True)
    hub_dir = output_dir / "uniter-shapes-vqa"
    save_for_hub(
        vqa_model,
        processor,
        hub_dir,
        datasets=["hf_vlp/shapes-world"],
        conversion=(
            f"Pretrained for {pretrain_steps} steps on shapes-world captions ({', '.join(PRETRAINING_OBJECTIVES)}), "
            f"then fine-tuned for {finetune_steps} steps on shapes-world VQA, with `hf-vlp demo`."
        ),
        results={
            "held-out VQA accuracy": f"{score:.3f}",
            "question-type prior (most frequent answer per type)": f"{report.controls['prior'][OVERALL]:.3f}",
            "same model, shuffled images": f"{report.controls['shuffled'][OVERALL]:.3f}",
        },
    )
    reloaded = AutoModelForVisualQuestionAnswering.from_pretrained(hub_dir).eval()
    reloaded_processor = AutoProcessor.from_pretrained(hub_dir)
    print(f"      saved to {hub_dir} ({', '.join(sorted(p.name for p in hub_dir.iterdir()))})")
    print("      one question, two images (answered by the reloaded model):")
    for name, example in zip(("a", "b"), _two_images_one_question(vqa_test)):
        inputs = reloaded_processor(
            text=[example["question"]],
            visual_feats=[example["region_features"]],
            boxes=[example["boxes"]],
            image_sizes=[(example["image_width"], example["image_height"])],
        )
        with torch.no_grad():
            answer = reloaded.config.id2label[int(reloaded(**inputs).logits.argmax(-1))]
        image_path = hub_dir / f"example_{name}.png"
        example["image"].save(image_path)
        print(f"      Q: {example['question']}   image {image_path}: model {answer!r}, gold {example['answer']!r}")
    prior, shuffled = report.controls["prior"][OVERALL], report.controls["shuffled"][OVERALL]
    print(
        f"done in {(time.perf_counter() - started) / 60:.1f} min: VQA {score:.3f}, question-type prior {prior:.3f}, "
        f"shuffled images {shuffled:.3f}"
    )
    return {"vqa_score": score, "report": report, "directory": hub_dir}


def _two_images_one_question(rows):
    """Two held-out rows that ask the same question of two images with different answers (colour and shape
    questions first: the image alone decides them)."""
    by_question = {}
    for question_type in ("color", "shape", "exist", "count", "spatial"):
        for row in rows:
            if row["question_type"] != question_type:
                continue
            first = by_question.setdefault(row["question"], row)
            if first["answer"] != row["answer"]:
                return first, row
    raise ValueError("no question is asked of two images with different answers in the held-out set")
