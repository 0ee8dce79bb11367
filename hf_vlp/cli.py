"""`hf-vlp`: convert | train | eval | demo | bench | extract | push | cpt."""

import argparse
import json
import os
import sys
from pathlib import Path


def _convert(args):
    from pathlib import Path

    from .conversion import common

    try:  # everything that can be checked before loading a checkpoint
        module = common.load_converter(args.arch)
        options = common.check_options(
            module.convert, common.parse_option_strings(args.option), getattr(module, "CONFIG_OVERRIDES", None)
        )
        inputs = [args.checkpoint, args.config, args.tokenizer, args.verify]
        inputs += [value for value in options.values() if isinstance(value, str) and Path(value).exists()]
        if args.output:
            common.check_output_folder(args.output, inputs, overwrite=args.overwrite)
    except ValueError as error:
        print(f"hf-vlp convert: error: {error}", file=sys.stderr)
        return 2
    model = module.convert(args.checkpoint, args.config, **options)
    print(
        f"converted {args.checkpoint} -> {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters)"
    )
    report = None
    if args.verify:
        report = common.verify(module, model, args.verify, atol=args.atol, rtol=args.rtol)
        if not report.passed:
            print("verification FAILED: nothing saved or pushed")
            return 1
    if hasattr(module, "build_processor"):  # the format knows its own processor (tokenizer, image geometry)
        processor = module.build_processor(args.checkpoint, args.config, tokenizer=args.tokenizer)
    else:
        processor = _processor_for(model, args.tokenizer) if args.tokenizer else None
    conversion = f"Converted from the original `{Path(args.checkpoint).name}` with `hf-vlp convert {args.arch}`."
    card = dict(conversion=conversion + ("\n\n" + report.card_text() if report is not None else " Not verified."))
    if args.output:
        common.save_converted(model, processor, args.output, inputs, overwrite=args.overwrite, **card)
        print(f"saved to {args.output}")
    if args.push_to_hub:
        from .hub import push_folder, push_to_hub

        if args.output:  # the saved folder as it is, conversion record included
            push_folder(args.output, args.push_to_hub, check=False)
        else:
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

    stage = (
        (training.PretrainArguments, training.run_pretraining)
        if args.stage == "pretrain"
        else (training.FinetuneArguments, training.run_finetuning)
    )
    parsed, training_args = HfArgumentParser((stage[0], TrainingArguments)).parse_args_into_dataclasses(rest)
    try:  # what can be checked before building anything: arch x task, the checkpoint to resume from
        training.check_train_arguments(parsed, training_args)
    except ValueError as error:
        print(f"hf-vlp train {args.stage}: error: {error}", file=sys.stderr)
        return 2
    stage[1](parsed, training_args)
    return 0


def _eval(args):
    task = args.task_name or args.task
    if args.data:  # an official benchmark's files (hf_vlp.benchmark_eval)
        from .benchmark_eval import evaluate_benchmark

        if not args.features:
            raise ValueError("--data needs --features: the region features of its images (.tsv, .npz folder)")
        result = evaluate_benchmark(
            task,
            args.model,
            args.data,
            args.features,
            split=args.split if args.split != "test" or task != "refexp" else None,
            gallery=args.gallery,
        )
        width = max(len(name) for name in result)
        print(f"{task} on {', '.join(args.data)}:")
        for name, value in result.items():
            print(f"  {name:<{width}}  {value:.4f}")
        return 0
    args.task = task
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
    from .budget import process_start
    from .demo import run_demo

    # the budget counts from interpreter start: imports are part of the minutes the user asked for
    run_demo(output_dir=args.output_dir, minutes=args.minutes, bf16=args.bf16, budget_started=process_start())
    return 0


def _bench(args):
    from . import bench
    from .registry import ARCHITECTURES

    if args.all and args.arch:
        raise ValueError(f"give an architecture or --all, not both (got {args.arch!r} and --all)")
    if args.arch == "bottom_up":  # the detector: region extraction, not a training step
        return _bench_extraction(args)
    if args.retrieval_gallery is not None:
        if args.arch != "filip":
            raise ValueError("--retrieval-gallery times FILIP's late-interaction retrieval: use it with `filip`")
        from .modeling.filip.retrieval_bench import retrieval_throughput

        result = retrieval_throughput(gallery_size=args.retrieval_gallery, device=args.device)
        print(json.dumps(result, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
        return 0
    names = sorted(ARCHITECTURES) if args.all else [args.arch or "uniter"]
    config = args.config or {"small": "tiny", "base": "base", None: "tiny"}[args.sizes]
    dtype = "bf16" if args.bf16 else args.dtype
    results = []
    for name in names:
        settings = bench.BenchSettings(
            arch=name,
            config=config,
            task=args.task,
            batch=args.batch,
            seq=args.seq,
            regions=args.regions,
            image_size=args.image_size,
            dtype=dtype,
            attn=args.attn,
            grad_ckpt=args.grad_ckpt,
            compile=args.compile,
            optim=args.optim,
            device=args.device,
            steps=args.steps,
            warmup=args.warmup,
            matmul_size=args.matmul_size,
        )
        result = bench.benchmark(settings, compare=args.compare, ddp=args.ddp)
        results.append(result)
        if not args.json:
            print(bench.format_result(result), flush=True)
    if args.json:
        print(bench.to_json(results if args.all else results[0]))
    if args.markdown:
        command = "hf-vlp bench " + " ".join(args.argv)
        Path(args.markdown).write_text(bench.markdown_table(results, command=command))
        print(f"wrote {args.markdown}", file=sys.stderr)
    return 0


def _bench_extraction(args):
    """`hf-vlp bench bottom_up --images GLOB [--detector DIR]`: images/s of `extract_regions`, vectorised NMS /
    RoIPool against per-box loops, fp32 and bf16 (`hf_vlp.modeling.bottom_up.benchmark_extraction`)."""
    import glob

    from PIL import Image

    from .modeling.bottom_up import BottomUpConfig, BottomUpDetector, benchmark_extraction

    paths = sorted(glob.glob(args.images)) if args.images else []
    if not paths:
        raise ValueError(f"`hf-vlp bench bottom_up` needs --images GLOB matching image files, got {args.images!r}")
    if args.detector:
        detector = BottomUpDetector.from_pretrained(args.detector)
    else:  # the released architecture with random weights, at the original's 600 / 1000 px
        detector = BottomUpDetector(BottomUpConfig(min_size=600, max_size=1000))
    images = [Image.open(path).convert("RGB") for path in paths]
    dtypes = ("float32", "bfloat16") if args.dtype == "fp32" else ("bfloat16",)
    rows = benchmark_extraction(detector, images, dtypes=dtypes, repeats=1, print_fn=None if args.json else print)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    return 0


def _extract(args):
    from .data.store import extract_to_store
    from .processing.images import load_detector_from_folder

    detector = load_detector_from_folder(args.detector, args.detector_class)
    keep = [name for name in (args.keep or "").split(",") if name]
    store = extract_to_store(
        detector,
        args.images,
        args.output,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        id_pattern=args.id_pattern,
        keep=keep,
        progress=not args.no_progress,
    )
    print(f"{len(store)} images ({store.feature_dim}-d features of {store.detector_name}) in {args.output}")
    return 0


def _push(args):
    from .hub import push_folder

    def warn(message):
        print(f"hf-vlp push: warning: {message}", file=sys.stderr)

    print(push_folder(args.model, args.repo_id, private=args.private, timeout=args.timeout, warn=warn))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `hf-vlp <cmd>: error: ... (see hf-vlp <cmd> --help)`, exit status 2; no
    abbreviated flags (`--step` for `--steps` is a typo, not a request)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# errors a user's input causes (bad file, bad JSON, unknown architecture or option, missing config, a Hub that does
# not answer): one line, no traceback, unless --debug
def _expected_errors():
    import json
    import pickle

    from .hub import HubPushError

    return (ValueError, OSError, json.JSONDecodeError, pickle.UnpicklingError, HubPushError, KeyError)


def _one_line(error) -> str:
    import json

    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, json.JSONDecodeError):
        text = f"a JSON file does not parse ({text})"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(error).__name__


def _machine_is_busy() -> bool:
    """Another process keeps at least half a core busy (1-minute load average; False where it cannot be read)."""
    try:
        return os.getloadavg()[0] >= 0.5
    except OSError:
        return False


def main(argv=None):
    # OpenMP threads that spin while they wait make a step 10-20x slower when another process shares the cores
    # (UNITER small, batch 32, 2 threads, one competing process: 3.28 s/step spinning, 0.15 s passive), while on a
    # quiet machine spinning is ~20% faster (0.090 vs 0.111 s). So: passive when the machine is already busy at
    # start. Read once, when torch loads OpenMP: set before any command imports torch; a user's own setting wins.
    if "OMP_WAIT_POLICY" not in os.environ and _machine_is_busy():
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import hf_vlp  # noqa: F401  (registers architectures)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error"
    )
    parser = _Parser(prog="hf-vlp", description="Vision-language pretrained models in the HF stack", parents=[common])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_parser = commands.add_parser
    commands.add_parser = lambda name, **kwargs: add_parser(
        name, parents=[common, *kwargs.pop("parents", [])], **kwargs
    )

    convert = commands.add_parser("convert", help="convert an original checkpoint (and verify it against a fixture)")
    convert.add_argument("arch")
    convert.add_argument("--checkpoint", required=True)
    convert.add_argument("--config", default=None, help="the original model config file, where the format needs it")
    convert.add_argument("--output", default=None, help="save the converted model in Hub layout here")
    convert.add_argument(
        "--verify", default=None, metavar="FIXTURE_DIR", help="inputs/outputs.safetensors saved from the original code"
    )
    convert.add_argument("--atol", type=float, default=None, help="default: the converter's VERIFY_ATOL")
    convert.add_argument("--rtol", type=float, default=None, help="default: the converter's VERIFY_RTOL")
    convert.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty --output (replaces only the files it writes)"
    )
    convert.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer files to save as the processor")
    convert.add_argument("--push-to-hub", dest="push_to_hub", default=None, metavar="REPO")
    convert.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="converter-specific option")

    train = commands.add_parser(
        "train", help="pretrain or fine-tune on the shapes world (TrainingArguments flags accepted)"
    )
    train.add_argument("stage", choices=["pretrain", "finetune"])

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a saved model: on the shapes world (with its controls), or with --data on an official "
        "benchmark's files with the task's standard metric",
    )
    evaluate.add_argument("task_name", nargs="?", metavar="TASK", help="vqa, nlvr2, entailment, refexp, retrieval")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--task", default="vqa", help="TASK, as an option")
    evaluate.add_argument(
        "--data",
        nargs="+",
        help="official files: VQA questions + annotations, NLVR2 / SNLI-VE jsonl, RefCOCO refs + "
        "instances, Karpathy split json",
    )
    evaluate.add_argument("--features", help="region features of the benchmark's images: a .tsv file or .npz folder")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--gallery", type=int, help="retrieval: score the first N images of the split")
    evaluate.add_argument("--num_images", type=int, default=300)

    demo = commands.add_parser("demo", help="pretrain + fine-tune UNITER on the shapes world, save, reload, answer")
    demo.add_argument("--output_dir", default="demo_output")
    demo.add_argument("--minutes", type=float, default=4.0, help="approximate training budget")
    demo.add_argument("--bf16", action="store_true")

    bench = commands.add_parser(
        "bench",
        help="training / inference speed, FLOPs, memory, and ratios measured in one run (docs/benchmarks.md)",
    )
    bench.add_argument("arch", nargs="?", default=None, help="any of hf_vlp.ARCHITECTURES (default: uniter)")
    bench.add_argument("--all", action="store_true", help="every registered architecture, one after the other")
    bench.add_argument("--config", default=None, metavar="tiny|base|large|PATH", help="model size (default: tiny)")
    bench.add_argument(
        "--sizes", default=None, choices=["base", "small"], help="earlier spelling: small = --config tiny"
    )
    bench.add_argument("--task", default=None, help="head to time (default: the architecture's bench task)")
    bench.add_argument("--batch", "--batch_size", dest="batch", type=int, default=8)
    bench.add_argument("--seq", type=int, default=20, help="text tokens per example")
    images = bench.add_mutually_exclusive_group()
    images.add_argument("--regions", type=int, default=36, help="regions per example (region models)")
    images.add_argument("--image-size", dest="image_size", type=int, default=None, help="pixels (image models)")
    bench.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast, fp32 master weights")
    bench.add_argument("--bf16", action="store_true", help="same as --dtype bf16")
    bench.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    bench.add_argument("--grad-ckpt", dest="grad_ckpt", action="store_true", help="gradient checkpointing")
    bench.add_argument("--compile", action="store_true", help="torch.compile the model; reports graph breaks")
    bench.add_argument("--optim", default="adamw_fused", choices=["adamw_fused", "adamw_foreach", "adamw_loop", "sgd"])
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    bench.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup untimed ones)")
    bench.add_argument("--warmup", type=int, default=2)
    bench.add_argument(
        "--compare",
        default=None,
        choices=["eager", "fp32", "no-grad-ckpt", "foreach", "transformers", "original"],
        help="also time this baseline, interleaved step by step, and print the ratio",
    )
    bench.add_argument("--ddp", type=int, default=None, metavar="N", help="also time N-process DDP (gloo)")
    bench.add_argument("--matmul-size", dest="matmul_size", type=int, default=2048, help="reference matmul size")
    bench.add_argument(
        "--retrieval-gallery",
        dest="retrieval_gallery",
        type=int,
        default=None,
        metavar="N",
        help="filip: queries/s of late-interaction retrieval over N cached images, against CLIP's dot product",
    )
    bench.add_argument("--images", default=None, metavar="GLOB", help="bottom_up: the images to extract regions from")
    bench.add_argument(
        "--detector", default=None, metavar="DIR", help="bottom_up: a converted detector (default: random)"
    )
    bench.add_argument("--json", action="store_true", help="print the result(s) as JSON")
    bench.add_argument("--markdown", default=None, metavar="FILE", help="write the results table (docs/benchmarks.md)")

    extract = commands.add_parser(
        "extract", help="run a region detector over images into a memory-mapped feature store (resumable)"
    )
    extract.add_argument("--detector", required=True, metavar="DIR", help="a detector folder, or a processor with one")
    extract.add_argument("--images", required=True, metavar="DIR|GLOB", help="an image folder or a glob pattern")
    extract.add_argument("--output", required=True, metavar="STORE", help="the store folder (created or resumed)")
    extract.add_argument("--batch_size", type=int, default=8, help="images per detector call")
    extract.add_argument("--shard_size", type=int, default=1000, help="images per Arrow shard")
    extract.add_argument(
        "--id_pattern", default=None, help="regex whose first group is the image id in the file name (default: stem)"
    )
    extract.add_argument(
        "--keep",
        default="",
        help="optional detector outputs to store, comma-separated: normalized_boxes,"
        "class_probs,object_ids,attribute_ids",
    )
    extract.add_argument("--detector_class", default=None, help="dotted class path when DIR does not name it")
    extract.add_argument("--no_progress", action="store_true", help="no progress bar")

    push = commands.add_parser(
        "push", help="push a saved model folder to the Hub as it is (after checking that it loads)"
    )
    push.add_argument("--model", required=True, metavar="DIR", help="a folder save_for_hub / hf-vlp convert wrote")
    push.add_argument("--repo_id", required=True, help="'org/name' or 'name'")
    push.add_argument("--private", action="store_true")
    push.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up when the push has not completed after this long (default: hf_vlp.hub.PUSH_TIMEOUT)",
    )

    try:
        from .cpt import add_cli as add_cpt_cli

        add_cpt_cli(commands)
    except ImportError:
        pass

    # --debug anywhere (nested subcommands such as `cpt ground` and train's TrainingArguments flags included)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    args, rest = parser.parse_known_args(argv)
    args.argv = argv[1:]  # what followed the subcommand (recorded in docs/benchmarks.md)
    if rest and args.command != "train":
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "push" and args.timeout is None:
        from .hub import PUSH_TIMEOUT

        args.timeout = PUSH_TIMEOUT
    try:
        model = getattr(args, "model", None)  # a local path that is not there reads as a bad Hub id otherwise
        if isinstance(model, str) and model.startswith(("/", ".", "~")) and not Path(model).expanduser().exists():
            raise ValueError(f"--model {model}: no such folder")
        if args.command == "train":
            return _train(args, rest)
        handlers = {
            "convert": _convert,
            "eval": _eval,
            "demo": _demo,
            "bench": _bench,
            "push": _push,
            "extract": _extract,
        }
        if args.command in handlers:
            return handlers[args.command](args)
        return args.run(args) if hasattr(args, "run") else parser.error(f"unknown command {args.command}")
    except _expected_errors() as error:
        if debug:
            raise
        command = " ".join(filter(None, [args.command, getattr(args, "cpt_command", None)]))
        print(f"hf-vlp {command}: error: {_one_line(error)} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
