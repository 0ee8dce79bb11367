"""Train one UniT on shapes-world detection (gold boxes), VQA and visual entailment at once.

    python examples/unit_multitask.py --output_dir runs/unit
    python examples/unit_multitask.py --output_dir runs/unit --steps 600 --ratios detection=0.4,vqa=0.4,entailment=0.2

UniT (Hu & Singh, ICCV 2021) shares the image encoder (ResNet + transformer encoder), the BERT text encoder and one
decoder across datasets; each dataset has its own queries, task embedding and head. Every training step draws one
dataset by ratio (`UnitMultiTaskBatchSampler`) and trains on one batch of it. Prints, before and after training,
each task's held-out metric next to its controls (`hf_vlp.training.evaluate_task` for VQA / entailment: the
question-type prior or majority label and the same model on shuffled images; for detection, recall of gold boxes at
IoU >= 0.5 with the right class, next to the same model on shuffled images), then saves model + image processor.
"""

import argparse

import torch
from torch.utils.data import ConcatDataset
from transformers.image_transforms import center_to_corners_format

import hf_vlp  # noqa: F401  (registers the architectures)
from hf_vlp.data import shapes_dataset
from hf_vlp.data.shapes import SHAPES_CLASSES, SHAPES_VQA_ANSWERS
from hf_vlp.evaluation import as_rows
from hf_vlp.modeling.unit import UnitForMultiTaskLearning, UnitMultiTaskBatchSampler, UnitMultiTaskTrainer
from hf_vlp.processing.cnn_images import CnnImageProcessor
from hf_vlp.recipes import build_config, shapes_tokenizer, training_arguments
from hf_vlp.training import evaluate_task

OBJECT_CLASSES = SHAPES_CLASSES[1:]  # detection classes without the background
TASKS = {
    "detection": dict(type="detection", task_index=0, num_queries=8, num_classes=len(OBJECT_CLASSES)),
    "vqa": dict(
        type="vl",
        task_index=1,
        num_queries=2,
        num_labels=len(SHAPES_VQA_ANSWERS),
        loss="binary_cross_entropy_with_logits",
        scale_loss_by_num_labels=True,
    ),
    "entailment": dict(type="vl", task_index=2, num_queries=2, num_labels=3, keep_only_cls=True),
}


class ShapesUnitCollator:
    """Shapes-world rows of one task -> `UnitForMultiTaskLearning` inputs (`task` included)."""

    def __init__(self, task, tokenizer, image_processor, max_length=32):
        self.task, self.tokenizer, self.image_processor, self.max_length = task, tokenizer, image_processor, max_length

    def detection_target(self, row):
        boxes = torch.tensor(row["boxes"], dtype=torch.float32).reshape(-1, 4)  # x1 y1 x2 y2 pixels
        size = torch.tensor([row["image_width"], row["image_height"]] * 2, dtype=torch.float32)
        x1, y1, x2, y2 = (boxes / size).unbind(-1)
        return {
            "class_labels": torch.tensor(row["region_labels"], dtype=torch.long) - 1,
            "boxes": torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1),
        }

    def __call__(self, rows):
        batch = dict(self.image_processor([row["image"] for row in rows]))
        batch["task"] = self.task
        if self.task == "detection":
            batch["labels"] = [self.detection_target(row) for row in rows]
            return batch
        texts = [row["question"] if self.task == "vqa" else row["text"] for row in rows]
        text = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch.update(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        if self.task == "vqa":
            scores = torch.zeros(len(rows), len(SHAPES_VQA_ANSWERS))
            for index, row in enumerate(rows):
                for answer, score in zip(row["answer_ids"], row["answer_scores"]):
                    scores[index, answer] = max(scores[index, answer], score)
            batch["labels"] = scores
        else:
            batch["labels"] = torch.tensor([row["label"] for row in rows])
        return batch


def detection_recall(model, collator, rows, batch_size=32, shuffle_images=False, seed=0):
    """Fraction of gold boxes matched (greedily, one prediction each) by a predicted box of the same class with
    IoU >= 0.5, among the queries not predicting "no object"."""
    from transformers.loss.loss_for_object_detection import box_iou

    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    matched = total = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = collator(chunk)
            targets = batch.pop("labels")
            if shuffle_images:  # the control: the same model, other images
                images = collator([rows[order[start + i]] for i in range(len(chunk))])
                batch["pixel_values"], batch["pixel_mask"] = images["pixel_values"], images["pixel_mask"]
            output = model(**batch)
            classes = output.logits.argmax(-1)
            for index, target in enumerate(targets):
                keep = classes[index] != output.logits.shape[-1] - 1
                boxes, labels = output.pred_boxes[index][keep], classes[index][keep]
                used = set()
                total += len(target["class_labels"])
                if not len(boxes):
                    continue
                iou = box_iou(center_to_corners_format(target["boxes"]), center_to_corners_format(boxes))[0]
                for gold in range(len(target["class_labels"])):
                    for pred in iou[gold].argsort(descending=True).tolist():
                        if pred in used or iou[gold, pred] < 0.5:
                            continue
                        if labels[pred] == target["class_labels"][gold]:
                            used.add(pred)
                            matched += 1
                            break
    return matched / max(total, 1)


def report(model, collators, evaluation, train, title):
    print(f"== {title}")
    for task in ("vqa", "entailment"):
        print(evaluate_task(model, collators[task], evaluation[task], task, train=train[task]).format())
    recall = detection_recall(model, collators["detection"], evaluation["detection"])
    control = detection_recall(model, collators["detection"], evaluation["detection"], shuffle_images=True)
    print(f"detection recall@IoU0.5 {recall:.3f}  (same model, shuffled images {control:.3f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_images", type=int, default=400)
    parser.add_argument("--eval_images", type=int, default=100)
    parser.add_argument("--image_size", type=int, default=96, help="shorter side the images are resized to")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--ratios", default="detection=1,vqa=1,entailment=1", help="task=weight,...")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    tokenizer = shapes_tokenizer()
    image_processor = CnnImageProcessor(shortest_edge=args.image_size, longest_edge=None, size_divisibility=32)
    collators = {task: ShapesUnitCollator(task, tokenizer, image_processor) for task in TASKS}
    source = {"detection": "vqa", "vqa": "vqa", "entailment": "entailment"}  # detection reads the VQA scenes
    train, evaluation = {}, {}
    for task, name in source.items():
        kwargs = dict(with_region_features=False, seed=args.seed)
        if task == "detection":
            kwargs["samples_per_image"] = 1  # one row per scene
        train[task] = as_rows(shapes_dataset(name, num_images=args.num_images, split="train", **kwargs))
        evaluation[task] = as_rows(shapes_dataset(name, num_images=args.eval_images, split="validation", **kwargs))

    config = build_config("unit", tokenizer, tasks=TASKS)
    model = UnitForMultiTaskLearning(config)
    report(model, collators, evaluation, train, "before training")

    rows = {task: [{**row, "task": task} for row in train[task]] for task in TASKS}
    ratios = dict(pair.split("=") for pair in args.ratios.split(","))
    sampler = UnitMultiTaskBatchSampler(
        {task: len(rows[task]) for task in TASKS},
        args.batch_size,
        ratios={task: float(ratios[task]) for task in TASKS},
        num_batches=args.steps,
        seed=args.seed,
    )
    trainer = UnitMultiTaskTrainer(
        model=model,
        args=training_arguments(
            args.output_dir, max_steps=args.steps, learning_rate=args.learning_rate, seed=args.seed, use_cpu=True
        ),
        train_dataset=ConcatDataset([rows[task] for task in TASKS]),
        batch_sampler=sampler,
        data_collator=lambda batch: collators[batch[0]["task"]](batch),
    )
    trainer.train()
    report(model, collators, evaluation, train, f"after {args.steps} steps")
    model.save_pretrained(args.output_dir)
    image_processor.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    print(f"saved to {args.output_dir}")


if __name__ == "__main__":
    main()
