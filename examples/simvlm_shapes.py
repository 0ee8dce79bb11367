"""SimVLM on the shapes world: brief PrefixLM pretraining on captions (image-text batches mixed with text-only
batches, as the paper mixes ALIGN and C4), then captioning and generative VQA, each next to its controls.

    python examples/simvlm_shapes.py                                    # defaults: 5.5 min on 2 shared CPU cores
    python examples/simvlm_shapes.py --pretrain_steps 2000 --num_images 600   # longer (over the 8-minute budget)

Measured:
  captioning: teacher-forced next-token accuracy on held-out captions (the image is the whole prefix, every caption
      token and the end token scored; `eos` included). Controls: the same model with another scene's image
      (`hf_vlp.evaluation.shuffle_images`) and with a blank grey image (what the text alone predicts). Greedy
      captions (no prompt) and zero-shot prompted continuations ("there is", the shapes world's "a picture of")
      are printed as examples.
  VQA: the pretrained model fine-tuned generatively (image + question -> answer tokens), answers decoded greedily
      and compared exactly; `hf_vlp.evaluation.classification_controls` gives the per-type training prior and the
      same model on shuffled images.
Results of a run: docs/simvlm.md, "Shapes world".
"""

import argparse
import time

import numpy as np
import torch

from hf_vlp.data import shapes_dataset
from hf_vlp.evaluation import classification_controls, shuffle_images
from hf_vlp.modeling.simvlm import (
    PrefixLmCollator,
    SimVlmConfig,
    SimVlmForVisualQuestionAnswering,
    build_simvlm_processor,
)
from hf_vlp.recipes import shapes_tokenizer

ZERO_SHOT_PROMPT = "there is"  # how shapes-world captions open, the role of the paper's "a picture of"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=400, help="training scenes (3 captions, 3 questions each)")
    parser.add_argument("--eval_images", type=int, default=100, help="held-out scenes")
    parser.add_argument("--image_size", type=int, default=64, help="a multiple of the stem's stride 16 (64: 4 x 4)")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3, help="encoder and decoder layers each")
    parser.add_argument("--pretrain_steps", type=int, default=1200)
    parser.add_argument("--vqa_steps", type=int, default=800)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="pretraining; VQA uses half")
    parser.add_argument(
        "--initializer_range", type=float, default=0.08, help="width-matched init (~1/sqrt(128)), docs/data.md"
    )
    parser.add_argument("--text_only_every", type=int, default=4, help="every Nth pretraining batch is text-only")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def pixel_table(rows, processor):
    """image_id -> (3, S, S) pixels, each scene processed once."""
    table = {}
    for row in rows:
        if row["image_id"] not in table:
            table[row["image_id"]] = processor.image_processor([row["image"]], return_tensors="pt")["pixel_values"][0]
    return table


def words(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def train(model, batches, steps, learning_rate, label):
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.05, 1 - step / steps)
    )
    model.train()
    start, losses = time.time(), []
    for step in range(steps):
        loss = model(**next(batches)).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            print(
                f"  {label} step {step:4d}  loss {np.mean(losses[-50:]):.3f}  ({time.time() - start:.0f}s)", flush=True
            )
    return model.eval()


def caption_batches(rows, pixels, tokenizer, collator, batch_size, text_only_every, rng):
    """Endless PrefixLM batches: random prefix splits of captions, with the image (or, every `text_only_every`-th
    batch, without: the text-only stream)."""
    step = 0
    while True:
        chosen = rng.choice(len(rows), batch_size, replace=False)
        text_only = text_only_every > 0 and step % text_only_every == text_only_every - 1
        examples = []
        for index in chosen:
            row = rows[int(index)]
            example = {"input_ids": words(tokenizer, row["text"])}
            if not text_only:
                example["pixel_values"] = pixels[row["image_id"]]
            examples.append(example)
        step += 1
        yield collator(examples)


def caption_token_accuracy(model, rows, pixels, tokenizer, eos, image_override=None):
    """Teacher-forced top-1 accuracy over every caption token + eos, the image as the only prefix."""
    correct = total = 0
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            labels = [words(tokenizer, row["text"]) + [eos] for row in chunk]
            length = max(len(label) for label in labels)
            labels = torch.tensor([label + [-100] * (length - len(label)) for label in labels])
            images = torch.stack([pixels[row["image_id"]] for row in chunk])
            if image_override is not None:
                images = image_override.expand_as(images)
            predicted = model(pixel_values=images, labels=labels).logits.argmax(-1)
            real = labels != -100
            correct += int((predicted == labels)[real].sum())
            total += int(real.sum())
    return correct / total


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    began = time.time()
    tokenizer = shapes_tokenizer()
    processor = build_simvlm_processor(tokenizer, image_size=args.image_size)
    eos = tokenizer.sep_token_id
    config = SimVlmConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=2 * args.hidden_size,
        num_attention_heads=4,
        num_encoder_layers=args.layers,
        num_decoder_layers=args.layers,
        max_position_embeddings=64,
        image_size=args.image_size,
        conv_stem_width=16,
        conv_stage_depths=[1, 1, 1],
        conv_num_groups=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        decoder_start_token_id=tokenizer.cls_token_id,
        initializer_range=args.initializer_range,
    )
    # one class serves both phases: PrefixLM pretraining / captioning and generative VQA share every weight
    model = SimVlmForVisualQuestionAnswering(config)
    print(f"SimVLM {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)

    # ---------------- PrefixLM pretraining on captions (+ text-only batches) ----------------
    captions = [
        dict(r)
        for r in shapes_dataset("captions", num_images=args.num_images, split="train", with_region_features=False)
    ]
    test_captions = [
        dict(r)
        for r in shapes_dataset(
            "captions", num_images=args.eval_images, split="test", with_region_features=False, samples_per_image=1
        )
    ]
    pixels = pixel_table(captions + test_captions, processor)
    collator = PrefixLmCollator(tokenizer.pad_token_id, eos, seed=args.seed)
    batches = caption_batches(captions, pixels, tokenizer, collator, args.batch_size, args.text_only_every, rng)
    model = train(model, batches, args.pretrain_steps, args.learning_rate, "PrefixLM")

    accuracy = caption_token_accuracy(model, test_captions, pixels, tokenizer, eos)
    shuffled_rows = shuffle_images(test_captions, seed=args.seed)
    shuffled = caption_token_accuracy(model, shuffled_rows, pixels, tokenizer, eos)
    blank = caption_token_accuracy(
        model, test_captions, pixels, tokenizer, eos, image_override=torch.zeros(3, args.image_size, args.image_size)
    )
    print(
        f"\nCaptioning, {len(test_captions)} held-out scenes: teacher-forced token accuracy {accuracy:.3f} "
        f"| shuffled images {shuffled:.3f} | blank image {blank:.3f}"
    )
    sample = test_captions[:3]
    images = torch.stack([pixels[row["image_id"]] for row in sample])
    with torch.no_grad():
        plain = model.generate(pixel_values=images, max_new_tokens=30, num_beams=3)
        prompt = processor(text=[ZERO_SHOT_PROMPT] * len(sample))
        prompted = model.generate(pixel_values=images, **prompt, max_new_tokens=30)
    for row, caption, continuation in zip(
        sample,
        tokenizer.batch_decode(plain, skip_special_tokens=True),
        tokenizer.batch_decode(prompted, skip_special_tokens=True),
    ):
        print(f"  reference: {row['text']}\n  beam (no prompt): {caption}\n  '{ZERO_SHOT_PROMPT} ...': {continuation}")

    # ---------------- generative VQA ----------------
    vqa = [
        dict(r) for r in shapes_dataset("vqa", num_images=args.num_images, split="train", with_region_features=False)
    ]
    test_vqa = [
        dict(r) for r in shapes_dataset("vqa", num_images=args.eval_images, split="test", with_region_features=False)
    ]
    pixels.update(pixel_table(vqa + test_vqa, processor))

    def vqa_batches():
        while True:
            chosen = [vqa[int(i)] for i in rng.choice(len(vqa), args.batch_size, replace=False)]
            batch = processor(text=[row["question"] for row in chosen], text_target=[row["answer"] for row in chosen])
            batch["pixel_values"] = torch.stack([pixels[row["image_id"]] for row in chosen])
            yield dict(batch)

    model = train(model, vqa_batches(), args.vqa_steps, args.learning_rate / 2, "VQA")

    def predict(rows):
        answers = []
        with torch.no_grad():
            for start in range(0, len(rows), 64):
                chunk = rows[start : start + 64]
                encoded = processor(text=[row["question"] for row in chunk])
                images = torch.stack([pixels[row["image_id"]] for row in chunk])
                generated = model.generate(pixel_values=images, **encoded, max_new_tokens=4, do_sample=False)
                answers += [a.strip() for a in tokenizer.batch_decode(generated, skip_special_tokens=True)]
        return answers

    report = classification_controls(predict, vqa, test_vqa, task="simvlm_vqa")
    print("\nGenerative VQA, held-out exact-match accuracy by question type")
    print("  prior = most frequent training answer of the type; shuffled = same model, another scene's image")
    print("\n".join("  " + line for line in report.format().splitlines()))
    print(f"\ntotal {time.time() - began:.0f}s")
    return dict(caption_accuracy=accuracy, caption_shuffled=shuffled, caption_blank=blank, vqa=report.to_dict())


if __name__ == "__main__":
    main()
