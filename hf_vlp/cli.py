"""`hf-vlp`: convert | train | eval | demo | bench | push | cpt."""

import argparse
import importlib
import sys


def _convert(args):
    from .conversion import common

    module = importlib.import_module(f"hf_vlp.conversion.{args.arch}")
    options = dict(option.split("=", 1) for option in args.option)
    model = module.convert(args.checkpoint, args.config, **options)
    print(f"converted {args.checkpoint} -> {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    ok, atol = True, None
    if args.verify:
        atol = args.atol if args.atol is not None else getattr(module, "VERIFY_ATOL", 1e-4)
        ok = common.verify(module, model, args.verify, atol=atol)
    if not ok:
        print("verification FAILED: nothing saved or pushed")
        return 1
    if hasattr(module, "build_processor"):  # the format knows its own processor (tokenizer, image geometry)
        processor = module.build_processor(args.checkpoint, args.config, tokenizer=args.tokenizer)
    else:
        processor = _processor_for(model, args.tokenizer) if args.tokenizer else None
    card = dict(conversion=f"Converted from the original `{args.checkpoint}` with `hf-vlp convert {args.arch}`"
                + (f", verified against `{args.verify}` (max abs diff <= {atol:g})." if args.verify else "."))
    if args.output:
        from .hub import save_for_hub

        save_for_hub(model, processor, args.output, **card)
        print(f"saved to {args.output}")
    if args.push_to_hub:
        from .hub import push_to_hub

        push_to_hub(model, processor, args.push_to_hub, **card)
        print(f"pushed to {args.push_to_hub}")
    return 0


def _processor_for(model, tokenizer_dir):
    """The architecture's region processor with the tokenizer saved in `tokenizer_dir` (the original vocabulary;
    conversion cannot download it). Formats with other processors define `build_processor` in their converter."""
    from transformers import AutoTokenizer

    from .processing.region import RegionFeatureProcessor
    from .registry import spec_for_model
    from .spec import InputKind

    spec = spec_for_model(model)
    if spec.inputs is not InputKind.REGIONS or spec.processor is None:
        raise ValueError(f"{spec.name} has no region processor; its converter must define `build_processor`")
    return spec.processor_class(RegionFeatureProcessor(), AutoTokenizer.from_pretrained(tokenizer_dir))


def _train(args, rest):
    from transformers import HfArgumentParser, TrainingArguments

    from . import training

    if args.stage == "pretrain":
        parsed, training_args = HfArgumentParser((training.PretrainArguments, TrainingArguments)).parse_args_into_dataclasses(rest)
        training.run_pretraining(parsed, training_args)
    else:
        parsed, training_args = HfArgumentParser((training.FinetuneArguments, TrainingArguments)).parse_args_into_dataclasses(rest)
        training.run_finetuning(parsed, training_args)
    return 0


def _eval(args):
    from transformers import AutoConfig, AutoProcessor

    from .data import shapes_dataset
    from .registry import spec_for_model_type
    from .training import evaluate_task, task_collator

    spec = spec_for_model_type(AutoConfig.from_pretrained(args.model).model_type)
    model = spec.model_class(args.task).from_pretrained(args.model)
    processor = AutoProcessor.from_pretrained(args.model)
    data = shapes_dataset(args.task, num_images=args.num_images, split=args.split)
    collator = task_collator(model, processor, args.task)
    report = evaluate_task(model, collator, data, args.task)  # priors from the evaluated split itself
    print(f"{args.task} {args.split}, next to its controls:\n{report.format()}")
    return 0


def _demo(args):
    from .demo import run_demo

    run_demo(output_dir=args.output_dir, minutes=args.minutes, bf16=args.bf16)
    return 0


def _bench(args):
    from .bench import run_benchmark

    run_benchmark(args.arch, batch_size=args.batch_size, steps=args.steps, bf16=args.bf16, sizes=args.sizes, task=args.task)
    return 0


def _push(args):
    from transformers import AutoConfig, AutoProcessor

    from .hub import push_to_hub
    from .registry import spec_for_model_type

    config = AutoConfig.from_pretrained(args.model)
    spec = spec_for_model_type(config.model_type)
    saved = (config.architectures or [None])[0]
    task = next((task for task, head in spec.heads.items() if head.model.rpartition(".")[2] == saved), None)
    if task is None:
        raise ValueError(f"{args.model} holds a {saved!r}, which is no head of {spec.name} ({spec.tasks})")
    model = spec.model_class(task).from_pretrained(args.model)
    processor = AutoProcessor.from_pretrained(args.model)
    print(push_to_hub(model, processor, args.repo_id, task=task))
    return 0


def main(argv=None):
    import hf_vlp  # noqa: F401  (registers architectures)

    parser = argparse.ArgumentParser(prog="hf-vlp", description="Vision-language pretrained models in the HF stack")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert an original checkpoint (and verify it against a fixture)")
    convert.add_argument("arch")
    convert.add_argument("--checkpoint", required=True)
    convert.add_argument("--config", default=None, help="the original model config file, where the format needs it")
    convert.add_argument("--output", default=None, help="save the converted model in Hub layout here")
    convert.add_argument("--verify", default=None, metavar="FIXTURE_DIR", help="inputs/outputs.safetensors saved from the original code")
    convert.add_argument("--atol", type=float, default=None)
    convert.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer files to save as the processor")
    convert.add_argument("--push-to-hub", dest="push_to_hub", default=None, metavar="REPO")
    convert.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="converter-specific option")

    train = commands.add_parser("train", help="pretrain or fine-tune on the shapes world (TrainingArguments flags accepted)")
    train.add_argument("stage", choices=["pretrain", "finetune"])

    evaluate = commands.add_parser("eval", help="evaluate a saved model on a shapes-world task")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--task", default="vqa")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--num_images", type=int, default=300)

    demo = commands.add_parser("demo", help="pretrain + fine-tune UNITER on the shapes world, save, reload, answer")
    demo.add_argument("--output_dir", default="demo_output")
    demo.add_argument("--minutes", type=float, default=4.0, help="approximate training budget")
    demo.add_argument("--bf16", action="store_true")

    bench = commands.add_parser("bench", help="training / inference throughput, memory and achieved GFLOP/s")
    bench.add_argument("arch", nargs="?", default="uniter", help="any of hf_vlp.ARCHITECTURES")
    bench.add_argument("--batch_size", type=int, default=32)
    bench.add_argument("--steps", type=int, default=10)
    bench.add_argument("--bf16", action="store_true")
    bench.add_argument("--sizes", default="base", choices=["base", "small"], help="released base config or the spec's small sizes")
    bench.add_argument("--task", default=None, help="head to time (default: the architecture's bench task)")

    push = commands.add_parser("push", help="push a saved model + processor to the Hub")
    push.add_argument("--model", required=True)
    push.add_argument("--repo_id", required=True)

    try:
        from .cpt import add_cli as add_cpt_cli

        add_cpt_cli(commands)
    except ImportError:
        pass

    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "train":
        return _train(args, rest)
    handlers = {"convert": _convert, "eval": _eval, "demo": _demo, "bench": _bench, "push": _push}
    if args.command in handlers:
        return handlers[args.command](args)
    return args.run(args) if hasattr(args, "run") else parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
