"""Train one ViLBERT on several shapes-world tasks at once with task tokens, as the 12-in-1 multi-task model does.

    python examples/vilbert_multitask.py --output_dir runs/multitask
    python examples/vilbert_multitask.py --output_dir runs/multitask --tasks vqa,refexp,nlvr2 --steps 600 --bf16
    python examples/vilbert_multitask.py --output_dir runs/mt --model_name_or_path runs/pretrain   # a saved ViLBERT

12-in-1 (Lu et al., CVPR 2020, `train_tasks.py`) shares one backbone across tasks, inserts a learned task token
after [CLS] (`config.task_specific_tokens`), gives each task its own head, and trains by cycling through the tasks:
every step draws one batch of each task and sums their losses. `VilbertForMultiTask(task=...)` runs one task's head
with that task's token (`config.task_token_ids`). Prints each task's held-out metric next to its controls
(`hf_vlp.training.evaluate_task`: question-type prior / majority label / random box / chance, and the same model on
shuffled images) and saves model + processor.
"""

import argparse
import math
from contextlib import nullcontext

import torch

import hf_vlp  # noqa: F401  (registers the architectures)
from hf_vlp.data import shapes_dataset
from hf_vlp.modeling.vilbert import VilbertConfig, VilbertForMultiTask, VilbertProcessor
from hf_vlp.pretraining.collators import DataCollatorForVLTask
from hf_vlp.processing.region import RegionFeatureProcessor
from hf_vlp.recipes import shapes_tokenizer, vqa_num_labels
from hf_vlp.training import SHAPES_TASK_METRICS, evaluate_task

TASKS = ("vqa", "entailment", "nlvr2", "refexp", "retrieval")

# a ViLBERT small enough to train in minutes on a CPU: 4 text layers, 2 visual layers, 2 connections
SMALL = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=256,
    v_hidden_size=128,
    v_num_hidden_layers=2,
    v_num_attention_heads=4,
    v_intermediate_size=256,
    bi_hidden_size=128,
    bi_num_attention_heads=4,
    v_biattention_id=[0, 1],
    t_biattention_id=[2, 3],
    initializer_range=0.08,  # width-matched (~1/sqrt(128)), as the spec's small sizes: BERT's 0.02 is for 768 wide
)


class OneTask:
    """`model(**batch)` of one task, for `hf_vlp.training.evaluate_task`."""

    def __init__(self, model, task):
        self.model, self.task = model, task

    @property
    def training(self):
        return self.model.training

    def train(self, mode=True):
        self.model.train(mode)

    def eval(self):
        self.model.eval()

    def __call__(self, **batch):
        return self.model(task=self.task, **batch)


def endless(loader):
    while True:
        yield from loader


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {TASKS}")
    parser.add_argument("--model_name_or_path", default=None, help="a saved ViLBERT (any head) to start from")
    parser.add_argument("--num_images", type=int, default=400)
    parser.add_argument("--eval_images", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps; each sees one batch of every task")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fast on CPUs with avx512_bf16)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    unknown = set(tasks) - set(TASKS)
    if unknown:
        parser.error(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    torch.manual_seed(args.seed)

    data = {
        task: (
            shapes_dataset(task, num_images=args.num_images, split="train", seed=args.seed),
            shapes_dataset(task, num_images=args.eval_images, split="test", seed=args.seed),
        )
        for task in tasks
    }
    feature_dim = len(next(iter(data.values()))[0][0]["region_features"][0])
    if args.model_name_or_path:
        processor = VilbertProcessor.from_pretrained(args.model_name_or_path)
        model = VilbertForMultiTask.from_pretrained(
            args.model_name_or_path, task_specific_tokens=True, num_labels=vqa_num_labels()
        )
    else:
        tokenizer = shapes_tokenizer()
        processor = VilbertProcessor(RegionFeatureProcessor(add_global_region=True), tokenizer)
        config = VilbertConfig(
            vocab_size=len(tokenizer),
            v_feature_size=feature_dim,
            task_specific_tokens=True,
            num_labels=vqa_num_labels(),
            **SMALL,
        )
        model = VilbertForMultiTask(config)
    # the shared task collator shifts `target_index` by ViLBERT's prepended whole-image region
    collators = {task: DataCollatorForVLTask(processor, task, num_labels=model.config.num_labels) for task in tasks}
    loaders = {
        task: endless(
            torch.utils.data.DataLoader(
                data[task][0], batch_size=args.batch_size, shuffle=True, collate_fn=collators[task], drop_last=True
            )
        )
        for task in tasks
    }

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)
    warmup = max(1, args.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, args.steps) / args.steps)),
    )
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else nullcontext()
    model.train()
    running = {task: 0.0 for task in tasks}
    for step in range(1, args.steps + 1):
        optimizer.zero_grad()
        for task in tasks:  # one batch of every task per step; losses summed (train_tasks.py)
            batch = next(loaders[task])
            with autocast:
                loss = model(task=task, **batch).loss
            loss.backward()
            running[task] += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 20 == 0 or step == args.steps:
            losses = "  ".join(f"{task} {running[task] / 20:.3f}" for task in tasks)
            print(f"step {step}: {losses}", flush=True)
            running = {task: 0.0 for task in tasks}

    for task in tasks:
        train, test = data[task]
        report = evaluate_task(OneTask(model, task), collators[task], test, task, train=train)
        print(f"{task}: held-out {SHAPES_TASK_METRICS[task]} next to its controls (hf_vlp.evaluation):")
        print(report.format(), flush=True)
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    return model


if __name__ == "__main__":
    main()
