"""CPT (Colorful Prompt Tuning) grounding in the shapes world: zero-shot, then few-shot with 16 expressions.

1. Pretrain a small Oscar on shapes-world captions with its masked-token loss over words AND object tags (Oscar's
   text_b), on EfficientNet-lite0 RoI features (`hf_vlp.data.RegionFeatureExtractor`). Skipped with --model.
2. Zero-shot CPT: for each referring expression of the validation scenes, paint one copy of the image per
   candidate box (red, alpha 127), extract every candidate's feature from every copy, ask
   "<expression> is in [MASK] color." with the tags "circle red square triangle", and pick the candidate whose copy
   gives the highest `red` logit at [MASK].
3. Few-shot CPT: fine-tune on 16 training expressions with the masked-LM loss on `red` (painted target) / `none`
   (another candidate painted), then pick by logit(red) / logit(none) as CPT's few-shot evaluation does.
Accuracy is printed next to its controls (`hf_vlp.evaluation.grounding_controls`): a random box (the mean of
1 / number of candidates) and the position prior (the most frequent target index of the training expressions).

    python examples/cpt_grounding.py --output_dir runs/cpt --bf16     # ~2.5 minutes on one GPU
    python examples/cpt_grounding.py --model runs/cpt/pretrained      # reuse the pretrained model

One run with the defaults on an H200, before the width-matched init (initializer_range 0.02; docs/cpt.md has the
other settings): zero-shot 0.310, 16-shot (ratio score, 3 draws) 0.326 +- 0.007, random choice 0.316 over 300
expressions — CPT does not transfer to a small model pretrained on shapes captions only: at "[MASK]" in "the circle is in [MASK] color." it predicts "the" / "to".
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import BertTokenizer, TrainingArguments

import hf_vlp  # noqa: F401  (registers the architectures)
from hf_vlp import cpt
from hf_vlp.data import SHAPES_CLASSES, RegionFeatureExtractor, shapes_dataset
from hf_vlp.evaluation import OVERALL, grounding_controls
from hf_vlp.modeling.oscar import OscarConfig, OscarForPreTraining
from hf_vlp.pretraining.collators import DataCollatorForVLPretraining
from hf_vlp.processing.cpt import CptProcessor
from hf_vlp.processing.region import RegionFeatureProcessor
from hf_vlp.processing.vl_processor import RegionTextProcessor
from hf_vlp.recipes import shapes_tokenizer
from hf_vlp.trainer import VLPTrainer

# words the CPT prompts need besides the shapes world's own
CPT_WORDS = ("is", "in", "color", ".", "red", "none")


def cpt_tokenizer(save_dir) -> BertTokenizer:
    """The shapes-world WordPiece vocabulary plus the words of CPT's prompts."""
    vocab = dict(shapes_tokenizer().get_vocab())
    for word in CPT_WORDS:
        vocab.setdefault(word, len(vocab))
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    tokenizer.save_pretrained(save_dir)
    return tokenizer


def with_tags(row):
    """Oscar's text: (caption, object tags); the tokenizer makes `[CLS] caption [SEP] tags [SEP]`, segments 0 / 1."""
    return {"text": [row["text"], " ".join(SHAPES_CLASSES[label] for label in row["region_labels"])]}


def pretrain(args, tokenizer, output_dir):
    captions = shapes_dataset("captions", num_images=args.pretrain_images, split="train").map(with_tags)
    feature_dim = len(captions[0]["region_features"][0])
    config = OscarConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        intermediate_size=2 * args.hidden_size,
        max_position_embeddings=128,
        visual_feat_dim=feature_dim,
        use_img_layer_norm=True,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.08,  # width-matched (~1/sqrt(128)), as the spec's small sizes
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        mask_token_id=tokenizer.mask_token_id,
    )
    model = OscarForPreTraining(config)
    collator = DataCollatorForVLPretraining(
        RegionTextProcessor(RegionFeatureProcessor(), tokenizer), objectives=("mlm",), seed=args.seed
    )
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=args.pretrain_epochs,
        per_device_train_batch_size=64,
        learning_rate=5e-4,
        warmup_steps=0.05,
        weight_decay=0.01,
        logging_steps=50,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        seed=args.seed,
        bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(),
    )
    VLPTrainer(model=model, args=training_args, train_dataset=captions, data_collator=collator).train()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return model.eval()


def expressions(split, num_images, seed):
    """Referring expressions with their candidates: every shape of the scene (gold boxes, x2/y2 exclusive)."""
    data = shapes_dataset("refexp", num_images=num_images, split=split, seed=seed, with_region_features=False)
    return [
        dict(
            image=row["image"],
            boxes=row["boxes"],
            box_format="xyxy",
            text=row["text"],
            labels=[SHAPES_CLASSES[label] for label in row["region_labels"]],
            target_index=row["target_index"],
        )
        for row in data
    ]


def prepare(processor, examples, extractor):
    """Paint, extract region features and tokenize once per expression; every model and method reuses them."""
    return [
        cpt.grounding_inputs(
            processor, e["image"], e["boxes"], e["text"], extractor, labels=e["labels"], box_format=e["box_format"]
        )
        for e in examples
    ]


@torch.no_grad()
def predictions(model, processor, prepared, method):
    """The chosen candidate of each prepared expression: the highest `red` logit (zero-shot) or red / none ratio."""
    model.eval()
    none_id = cpt.color_token_id(processor.tokenizer, processor.none_word)
    chosen = []
    for inputs in prepared:
        logits = cpt.mask_logits(model, inputs.inputs, inputs.mask_positions)[:, 0]
        chosen.append(int(cpt.candidate_scores(logits, inputs, none_id, method).argmax()))
    return chosen


def controls(model, processor, train, evaluation, prepared, method, task):
    """`hf_vlp.evaluation.grounding_controls`: accuracy next to a random box and the most frequent target index of
    the training expressions (the position prior)."""
    prepared_of = {id(example): inputs for example, inputs in zip(evaluation, prepared)}
    predict = lambda rows: predictions(model, processor, [prepared_of[id(row)] for row in rows], method)  # noqa: E731
    return grounding_controls(predict, train, evaluation, task=task)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default="runs/cpt")
    parser.add_argument("--model", default=None, help="a pretrained model folder (skips pretraining)")
    parser.add_argument("--pretrain_images", type=int, default=2000)
    parser.add_argument("--pretrain_epochs", type=float, default=15)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--eval_images", type=int, default=150, help="validation scenes (2 expressions each)")
    parser.add_argument("--prior_images", type=int, default=500, help="training scenes of the position prior")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--few_shot_epochs", type=float, default=40)
    parser.add_argument("--few_shot_lr", type=float, default=1e-4)
    parser.add_argument("--few_shot_batch_size", type=int, default=8)
    parser.add_argument("--template", default="3", help="CPT template 1-3, or a string with {caption} and [MASK]")
    parser.add_argument("--few_shot_seeds", default="0,1,2", help="one few-shot run per seed (its own 16 shots)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    started = time.time()

    if args.model:
        model = OscarForPreTraining.from_pretrained(args.model).eval()
        tokenizer = BertTokenizer.from_pretrained(args.model)
    else:
        tokenizer = cpt_tokenizer(output_dir / "pretrained")
        model = pretrain(args, tokenizer, output_dir / "pretrained")
    print(f"model ready after {time.time() - started:.0f} s")

    extractor = RegionFeatureExtractor.default()
    template = int(args.template) if args.template.isdigit() else args.template
    processor = CptProcessor(tokenizer, template=template)  # red, alpha 127, "<expression> is in [MASK] color."
    evaluation = expressions("validation", args.eval_images, args.seed)
    prepared = prepare(processor, evaluation, extractor)
    # the position prior comes from training expressions (their most frequent target index)
    train = expressions("train", args.prior_images, args.seed + 1)
    zero_shot = controls(model, processor, train, evaluation, prepared, "zero_shot", "cpt zero-shot")
    chance = zero_shot.controls["random box"][OVERALL]
    results = {
        "expressions": len(evaluation),
        "random_choice": chance,
        "position_prior": zero_shot.controls["prior"][OVERALL],
        "zero_shot": zero_shot.accuracy[OVERALL],
    }
    print(f"zero-shot CPT ({len(evaluation)} expressions), next to its controls:\n{zero_shot.format()}", flush=True)

    # few-shot: every seed draws its own 16 training expressions and tunes a fresh copy of the pretrained model
    pretrained = Path(args.model) if args.model else output_dir / "pretrained"
    pool = expressions("train", 4 * args.shots, args.seed + 1)
    for name in ("few_shot_ratio", "few_shot_color_logit"):
        results[name] = []
    for seed in [int(s) for s in args.few_shot_seeds.split(",") if s.strip()]:
        model = OscarForPreTraining.from_pretrained(pretrained)
        shots = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))[: args.shots]]
        few_shot_args = cpt.few_shot_training_arguments(
            str(output_dir / "few-shot"),
            learning_rate=args.few_shot_lr,
            num_train_epochs=args.few_shot_epochs,
            seed=seed,
            per_device_train_batch_size=args.few_shot_batch_size,
        )
        cpt.tune(model, processor, shots, extractor, training_args=few_shot_args, seed=seed)
        ratio = controls(model, processor, train, evaluation, prepared, "ratio", f"cpt {len(shots)}-shot ratio")
        color_logit = controls(model, processor, train, evaluation, prepared, "zero_shot", "red logit")
        results["few_shot_ratio"].append(ratio.accuracy[OVERALL])
        results["few_shot_color_logit"].append(color_logit.accuracy[OVERALL])
        print(
            f"{len(shots)}-shot CPT (seed {seed}): logit ratio red/none, then red logit, next to the controls:\n"
            f"{ratio.format()}\n{color_logit.format()}",
            flush=True,
        )
    for name in ("few_shot_ratio", "few_shot_color_logit"):
        values = results[name] or [float("nan")]
        print(
            f"{name}: mean {np.mean(values):.3f} +- {np.std(values):.3f} over {len(values)} draws of "
            f"{args.shots} expressions"
        )
    results["seconds"] = round(time.time() - started)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
