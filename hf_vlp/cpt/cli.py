"""`hf-vlp cpt ground --model DIR --image IMG --boxes BOXES --text TEXT`: zero- / few-shot CPT grounding from the
command line (`hf_vlp.cli` adds the subcommand with `add_cli`)."""

from __future__ import annotations

import json

import numpy as np

from ..processing.cpt import CptProcessor
from .scoring import GROUNDING_METHODS, ground


def add_cli(subparsers) -> None:
    """Add `cpt` (with the `ground` subcommand) to the `hf-vlp` argument parser."""
    parser = subparsers.add_parser("cpt", help="Colorful Prompt Tuning: zero-/few-shot grounding with painted regions")
    commands = parser.add_subparsers(dest="cpt_command", required=True)
    ground_parser = commands.add_parser("ground", help="pick the box a referring expression refers to")
    ground_parser.add_argument("--model", required=True, help="model folder or Hub id (masked-LM VL pretraining model)")
    ground_parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --model)")
    ground_parser.add_argument("--image", required=True, help="image file")
    ground_parser.add_argument(
        "--boxes", required=True, help="candidate boxes: a JSON file or string [[x, y, w, h], ...] (see --box-format)"
    )
    ground_parser.add_argument("--box-format", choices=("xywh", "xyxy"), default="xywh")
    ground_parser.add_argument("--text", required=True, help="the referring expression")
    ground_parser.add_argument("--labels", default=None, help="object tags, one per box, comma separated or JSON list")
    ground_parser.add_argument("--masks", default=None, help="JSON file with one COCO RLE per box (paint masks)")
    ground_parser.add_argument(
        "--method",
        choices=GROUNDING_METHODS,
        default="zero_shot",
        help="zero_shot: colour logit; ratio: colour / none logit (after few-shot tuning)",
    )
    ground_parser.add_argument("--template", default="3", help="1-6 or a string with {caption} and [MASK]")
    ground_parser.add_argument("--color", default="red", help="paint colour name (red, blue, ...)")
    ground_parser.add_argument(
        "--region-features",
        default=None,
        help=".npy of (candidates, candidates, D) features of the painted copies (default: "
        "EfficientNet-lite0 RoI features, hf_vlp.data.RegionFeatureExtractor)",
    )
    ground_parser.add_argument("--save-painted", default=None, help="folder to write the painted copies to")
    ground_parser.set_defaults(run=run_cli)  # hf_vlp.cli dispatches to `args.run(args)`


def _json_or_file(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        with open(value) as handle:
            return json.load(handle)


def run_cli(args) -> int:
    import os

    from PIL import Image
    from transformers import AutoModelForPreTraining, AutoTokenizer

    import hf_vlp  # noqa: F401  (registers the architectures with the Auto classes)

    from ..processing.cpt import PALETTES

    boxes = _json_or_file(args.boxes)
    labels = None
    if args.labels:
        labels = (
            json.loads(args.labels)
            if args.labels.strip().startswith("[")
            else [s.strip() for s in args.labels.split(",")]
        )
    masks = _json_or_file(args.masks) if args.masks else None
    known = {c.name: c for palette in PALETTES.values() for c in palette if palette is not PALETTES["demo"]}
    if args.color not in known:
        raise SystemExit(f"--color must be one of {sorted(known)}, got {args.color!r}")
    template = int(args.template) if args.template.isdigit() else args.template
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    processor = CptProcessor(tokenizer, colors=[known[args.color]], template=template)
    model = AutoModelForPreTraining.from_pretrained(args.model)
    image = Image.open(args.image).convert("RGB")
    if args.region_features:
        stored = np.load(args.region_features)

        def region_features(images, boxes_):
            if len(stored) != len(images):
                raise SystemExit(f"--region-features holds {len(stored)} copies, {len(images)} were painted")
            return list(stored)
    else:
        from ..data import RegionFeatureExtractor

        region_features = RegionFeatureExtractor.default()
        expected = getattr(model.config, "visual_feat_dim", None)
        if expected is not None and expected != region_features.feature_dim:
            raise SystemExit(
                f"the model takes {expected}-d region features but the default extractor gives "
                f"{region_features.feature_dim}; pass --region-features with the model's own features"
            )
    result = ground(
        model,
        processor,
        image,
        boxes,
        args.text,
        region_features,
        labels=labels,
        masks=masks,
        box_format=args.box_format,
        method=args.method,
    )
    if args.save_painted:
        os.makedirs(args.save_painted, exist_ok=True)
        for c, copy in enumerate(result.copies):
            copy.image.save(os.path.join(args.save_painted, f"painted_{c}.png"))
    out = result.to_dict()
    out["best_box"] = boxes[result.best_index]
    print(json.dumps(out, indent=2, allow_nan=False))
    return 0
