"""Convert the bottom-up-attention Faster R-CNN checkpoints to `BottomUpDetector`.

Accepted layouts (shared/fixtures/frcnn/README.md, "Checkpoint format" and "Survey"):

* the Hugging Face Hub layout of `unc-nlp/frcnn-vg-finetuned`: `pytorch_model.bin` (a flat float32 state dict in
  detectron2 names with BatchNorm `num_batches_tracked` and `cell_anchors.0`) plus `config.yaml` (the original
  `utils.Config` file: keys case-insensitive, `rpn`, `roi_heads`, `anchor_generator` ... as TOP-LEVEL sections);
* the detectron2 / py-bottom-up-attention pickle layout (`faster_rcnn_from_caffe_attr.pkl`): a pickle of
  `{"model": {name: numpy array}, ...}` with the same names and no `num_batches_tracked`. It is read with a
  restricted unpickler that admits numpy arrays / dtypes and builtin containers only; nothing else is constructed.

The anchors are a checkpoint tensor, not regenerated from the config (the original overwrites its generated anchors
with the stored ones); a checkpoint without them is refused. Sizes come from the tensor shapes, test-time settings
(resize, NMS thresholds, detection counts) from `config.yaml`; without one, `BottomUpConfig`'s defaults (the released
model's) apply. Options override any `BottomUpConfig` field (e.g. `--option max_detections=100`).

MILVLG caffe-mode and VinVL checkpoints are different models (docs/bottom_up.md) and are refused with a clear error.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from hf_vlp.conversion.common import ConversionError, KeyMap, check_options, load_checkpoint, load_mapped_state
from hf_vlp.modeling.bottom_up.configuration_bottom_up import RESNET_DEPTHS, BottomUpConfig
from hf_vlp.modeling.bottom_up.image_processing_bottom_up import BottomUpImageProcessor
from hf_vlp.modeling.bottom_up.modeling_bottom_up import BottomUpDetector

# shared/fixtures/frcnn/README.md, "How the weights were made": a float64 rerun of the original moves boxes by
# 2.8e-3 px, features by 7.8e-5 and probabilities by 8.1e-5; ids / counts / indices must be exact, so no relative term
# (an rtol would let a large id differ by one). 1e-3 is the README's feature tolerance and 20x tighter than its box one.
VERIFY_ATOL = 1e-3
VERIFY_RTOL = 0.0
CONFIG_OVERRIDES = BottomUpConfig

_NORM = r"norm\.(weight|bias|running_mean|running_var)"
_STAGES = {"2": "layer1", "3": "layer2", "4": "layer3"}

KEY_MAP = KeyMap(
    renames=[
        (r"^backbone\.stem\.conv1\.weight$", "backbone.conv1.weight"),
        (rf"^backbone\.stem\.conv1\.{_NORM}$", r"backbone.bn1.\1"),
        *[
            rule
            for stage, layer in _STAGES.items()
            for rule in (
                (rf"^backbone\.res{stage}\.(\d+)\.conv(\d)\.weight$", rf"backbone.{layer}.\1.conv\2.weight"),
                (rf"^backbone\.res{stage}\.(\d+)\.conv(\d)\.{_NORM}$", rf"backbone.{layer}.\1.bn\2.\3"),
                (rf"^backbone\.res{stage}\.(\d+)\.shortcut\.weight$", rf"backbone.{layer}.\1.downsample.0.weight"),
                (rf"^backbone\.res{stage}\.(\d+)\.shortcut\.{_NORM}$", rf"backbone.{layer}.\1.downsample.1.\2"),
            )
        ],
        (r"^roi_heads\.res5\.(\d+)\.conv(\d)\.weight$", r"roi_heads.res5.\1.conv\2.weight"),
        (rf"^roi_heads\.res5\.(\d+)\.conv(\d)\.{_NORM}$", r"roi_heads.res5.\1.bn\2.\3"),
        (r"^roi_heads\.res5\.(\d+)\.shortcut\.weight$", r"roi_heads.res5.\1.downsample.0.weight"),
        (rf"^roi_heads\.res5\.(\d+)\.shortcut\.{_NORM}$", r"roi_heads.res5.\1.downsample.1.\2"),
        (r"^proposal_generator\.anchor_generator\.cell_anchors\.0$", "rpn.cell_anchors"),
        (r"^proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)\.(weight|bias)$", r"rpn.\1.\2"),
        (
            r"^roi_heads\.box_predictor\.(cls_score|bbox_pred|cls_embedding|fc_attr|attr_score)\.(weight|bias)$",
            r"roi_heads.\1.\2",
        ),
    ],
    drops=[(r"\.num_batches_tracked$", "BatchNorm step counter; the detector's batch norms are frozen")],
)


# ------------------------------------------------------------------------------------------------------------------
# reading the two layouts
# ------------------------------------------------------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what a `{"model": {name: ndarray}}` pickle needs: numpy's array / dtype reconstruction and
    builtin containers and scalars. Any other global (a function, a class with code) is refused unbuilt."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "str"),
        ("builtins", "bytes"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("builtins", "bool"),
        ("builtins", "complex"),
        ("_codecs", "encode"),  # how Python 3 pickles of Python 2 byte strings spell bytes
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module == "numpy.dtypes" and name.endswith("DType"):  # numpy >= 1.25 dtype classes
            return super().find_class(module, name)
        raise ConversionError(
            f"the pickle refers to {module}.{name}; a detectron2 weight pickle holds numpy arrays only, so it is "
            "refused (nothing was executed)"
        )


def load_detectron2_pickle(path) -> dict:
    """`{name: float32 tensor}` from a detectron2-style pickle (`{"model": {name: ndarray}}` or a bare dict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    with open(path, "rb") as handle:
        try:
            data = _ArrayUnpickler(handle, encoding="latin1").load()
        except ConversionError:
            raise
        except Exception as error:
            raise ConversionError(f"{path} is not a readable detectron2 weight pickle: {error}") from error
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    if not isinstance(data, dict) or not data:
        raise ConversionError(
            f"{path}: expected a dict of arrays (optionally under 'model'), got {type(data).__name__}"
        )
    state = {}
    for key, value in data.items():
        if not isinstance(value, np.ndarray):
            raise ConversionError(f"{path}: {key!r} is a {type(value).__name__}, not a numpy array")
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        state[key] = tensor.float() if tensor.is_floating_point() else tensor
    return state


LAYOUTS = ("auto", "hub", "detectron2_pickle")


def load_original_checkpoint(path, layout: str = "auto") -> dict:
    """`layout="hub"`: a torch state dict (`pytorch_model.bin`, read with weights_only=True); `"detectron2_pickle"`:
    a `{"model": {name: ndarray}}` pickle; `"auto"`: a `.pkl` file is a pickle, anything else is tried as a torch
    file first."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    path = Path(path)
    if path.is_dir():
        path = path / "pytorch_model.bin"
    if layout == "detectron2_pickle" or (layout == "auto" and path.suffix == ".pkl"):
        return load_detectron2_pickle(path)
    if layout == "hub":
        return load_checkpoint(path)
    try:
        return load_checkpoint(path)
    except ConversionError:
        return load_detectron2_pickle(path)


def _lower_keys(value):
    if isinstance(value, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower_keys(v) for v in value]
    return value


def read_original_config(path) -> dict:
    """The original `config.yaml` (or a JSON copy) as a dict with lower-cased keys at every level."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"config {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return _lower_keys(data)


# ------------------------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------------------------


def _get(original: dict, section: str, key: str, default=None):
    value = original.get(section, {})
    return value.get(key, default) if isinstance(value, dict) else default


def _flat(values):
    """[[24, 48]] -> [24, 48] (detectron2 lists per feature level; the C4 detector has one level)."""
    if isinstance(values, (list, tuple)) and len(values) == 1 and isinstance(values[0], (list, tuple)):
        return list(values[0])
    return list(values) if isinstance(values, (list, tuple)) else [values]


def _check_layout(state: dict):
    if any(k.startswith(("backbone.body.", "rpn.head.", "roi_heads.box.")) for k in state):
        raise ConversionError(
            "this is a maskrcnn-benchmark checkpoint (VinVL / scene_graph_benchmark: ResNeXt-152, RoIAlign, stride-2 "
            "res5); it is a different model, see docs/bottom_up.md"
        )
    if any(k.startswith("roi_heads.box_predictor.attr_linear") or k.endswith("cls_embed.weight") for k in state):
        raise ConversionError(
            "this is a MILVLG bottom-up-attention.pytorch caffe-mode checkpoint (background-first classes, 2-way RPN "
            "softmax, +1 box arithmetic); not supported yet, see docs/bottom_up.md"
        )
    if "backbone.stem.conv1.weight" not in state or "roi_heads.box_predictor.cls_score.weight" not in state:
        raise ConversionError(
            "not a bottom-up-attention detectron2-layout checkpoint: no 'backbone.stem.conv1.weight' / "
            f"'roi_heads.box_predictor.cls_score.weight' (first keys: {sorted(state)[:5]})"
        )
    if "proposal_generator.anchor_generator.cell_anchors.0" not in state:
        raise ConversionError(
            "the checkpoint has no anchors ('proposal_generator.anchor_generator.cell_anchors.0'): the original "
            "detector uses the stored anchors, which need not be what the config would generate, so converting "
            "without them would change every box"
        )


def config_from_original(state: dict, original: dict | None = None, **overrides) -> BottomUpConfig:
    """Sizes from the tensor shapes; test-time settings from the original config where given."""
    original = original or {}
    stem = state["backbone.stem.conv1.weight"].shape[0]
    res2 = state["backbone.res2.0.conv3.weight"].shape[0]
    bottleneck2 = state["backbone.res2.0.conv1.weight"].shape[0]
    groups = int(_get(original, "resnets", "num_groups", 1))
    blocks = tuple(
        len({m.group(1) for k in state if (m := re.match(rf"^backbone\.res{s}\.(\d+)\.", k))}) for s in "234"
    )
    depth = next((d for d, counts in RESNET_DEPTHS.items() if counts[:3] == blocks), None)
    if depth is None:
        raise ConversionError(f"res2..res4 have {blocks} blocks, which is no ResNet depth of {RESNET_DEPTHS}")
    num_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    kwargs = dict(
        depth=depth,
        stem_channels=stem,
        res2_channels=res2,
        num_groups=groups,
        width_per_group=bottleneck2 // groups,
        num_anchors=state["proposal_generator.anchor_generator.cell_anchors.0"].shape[0],
        rpn_hidden_channels=state["proposal_generator.rpn_head.conv.weight"].shape[0],
        num_classes=num_classes,
        num_attributes=state["roi_heads.box_predictor.attr_score.weight"].shape[0] - 1,
        class_embedding_dim=state["roi_heads.box_predictor.cls_embedding.weight"].shape[1],
        attribute_hidden_size=state["roi_heads.box_predictor.fc_attr.weight"].shape[0],
    )
    if state["roi_heads.box_predictor.bbox_pred.weight"].shape[0] != 4 * num_classes:
        raise ConversionError(
            f"bbox_pred has {state['roi_heads.box_predictor.bbox_pred.weight'].shape[0]} rows; the detectron2 layout "
            f"has 4 per foreground class ({4 * num_classes}); a class-agnostic or background-first head is not supported"
        )
    if original:
        if int(_get(original, "resnets", "depth", depth)) != depth:
            raise ConversionError(f"config depth {_get(original, 'resnets', 'depth')} != checkpoint depth {depth}")
        if int(original.get("size_divisibility", 0) or 0) != 0:
            raise ConversionError("size_divisibility != 0 is not supported (the released detector uses 0)")
        if _get(original, "roi_box_head", "pooler_type", "roipool").lower() not in ("roipool",):
            raise ConversionError("only the ROIPool pooler of the released detector is supported")
        halve = bool(_get(original, "roi_box_head", "res5halve", False))
        nms = _get(original, "roi_heads", "nms_thresh_test", [0.5, 0.6, 0.7])
        settings = dict(
            stride_in_1x1=_get(original, "resnets", "stride_in_1x1"),
            caffe_max_pool=_get(original, "model", "max_pool"),
            pixel_mean=_get(original, "model", "pixel_mean"),
            pixel_std=_get(original, "model", "pixel_std"),
            anchor_sizes=_flat(_get(original, "anchor_generator", "sizes", [[64, 128, 256, 512]])),
            anchor_aspect_ratios=_flat(_get(original, "anchor_generator", "aspect_ratios", [[0.5, 1.0, 2.0]])),
            rpn_pre_nms_topk=_get(original, "rpn", "pre_nms_topk_test"),
            rpn_post_nms_topk=_get(original, "rpn", "post_nms_topk_test"),
            rpn_nms_threshold=_get(original, "rpn", "nms_thresh"),
            rpn_min_size=_get(original, "proposal_generator", "min_size"),
            rpn_bbox_reg_weights=_get(original, "rpn", "bbox_reg_weights"),
            pooler_resolution=_get(original, "roi_box_head", "pooler_resolution"),
            # RES5HALVE false (the Caffe test.prototxt layout): stride 1 and dilation 2 in every res5 block
            res5_stride=2 if halve else 1,
            res5_dilation=1 if halve else 2,
            bbox_reg_weights=_get(original, "roi_box_head", "bbox_reg_weights"),
            nms_thresholds=nms if isinstance(nms, list) else [nms],
            min_detections=original.get("min_detections"),
            max_detections=original.get("max_detections"),
            min_size=_get(original, "input", "min_size_test"),
            max_size=_get(original, "input", "max_size_test"),
            pad_value=original.get("pad_value"),
            batch_norm_eps=None,
        )
        if isinstance(settings["min_size"], list):
            settings["min_size"] = settings["min_size"][0]
        kwargs.update({k: v for k, v in settings.items() if v is not None})
        if int(_get(original, "roi_heads", "num_classes", num_classes)) != num_classes:
            raise ConversionError(
                f"config num_classes {_get(original, 'roi_heads', 'num_classes')} != checkpoint's {num_classes}"
            )
    kwargs.update(overrides)
    return BottomUpConfig(**{name: _typed(name, value) for name, value in kwargs.items()})


def _typed(name, value):
    """YAML gives 24 where the config field is a float (and lists of ints for lists of floats)."""
    default = getattr(BottomUpConfig, name, None)
    if isinstance(default, (list, tuple)) and default and isinstance(default[0], float):
        return [float(v) for v in value]
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, bool) or isinstance(default, int):
        return type(default)(value) if isinstance(value, (int, float, bool)) else value
    return value


# ------------------------------------------------------------------------------------------------------------------
# convert / verify
# ------------------------------------------------------------------------------------------------------------------


def convert(checkpoint, config=None, layout: str = "auto", **options) -> BottomUpDetector:
    """`checkpoint`: `pytorch_model.bin` (or its folder) or a detectron2 `.pkl`; `config`: the original
    `config.yaml` (looked up next to the checkpoint when not given). `layout`: "auto", "hub" or
    "detectron2_pickle" (how to read the checkpoint). Other options: any `BottomUpConfig` field."""
    options = check_options(convert, options, BottomUpConfig)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    state = load_original_checkpoint(checkpoint, layout)
    _check_layout(state)
    if config is None:
        beside = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
        config = beside / "config.yaml" if (beside / "config.yaml").is_file() else None
    original = read_original_config(config) if config is not None else None
    detector_config = config_from_original(state, original, **options)
    model = BottomUpDetector(detector_config)
    mapped, _dropped = KEY_MAP.apply(state)
    load_mapped_state(model, mapped)
    model.config.architectures = [type(model).__name__]
    return model.eval()


def build_processor(checkpoint, config=None, tokenizer=None):
    """The detector's image processor (its geometry is in the original config)."""
    if tokenizer is not None:
        raise ValueError("the bottom-up detector takes no tokenizer")
    state = load_original_checkpoint(checkpoint)
    _check_layout(state)
    if config is None:
        beside = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
        config = beside / "config.yaml" if (beside / "config.yaml").is_file() else None
    original = read_original_config(config) if config is not None else None
    return BottomUpImageProcessor.from_detector_config(config_from_original(state, original))


def fixture_runs(fixture_dir) -> list[str]:
    """The run names of a fixture (`<run>.images` in inputs.safetensors), in file order."""
    from safetensors import safe_open

    with safe_open(Path(fixture_dir) / "inputs.safetensors", "pt") as handle:
        return sorted({k[: -len(".images")] for k in handle.keys() if k.endswith(".images")})


def fixture_outputs(model: BottomUpDetector, fixture_dir) -> dict:
    """Every output the fixture records, computed from its preprocessed inputs (`<run>.images/sizes/scales_yx`)."""
    from safetensors.torch import load_file

    inputs = load_file(Path(fixture_dir) / "inputs.safetensors")
    outputs = {}
    previous_bug = model.config.normalized_boxes_batch_bug
    try:
        for run in fixture_runs(fixture_dir):
            arguments = dict(
                pixel_values=inputs[f"{run}.images"],
                image_sizes=inputs[f"{run}.sizes"],
                scales_yx=inputs[f"{run}.scales_yx"],
            )
            model.config.normalized_boxes_batch_bug = False
            result = model(**arguments, output_intermediates=True)
            model.config.normalized_boxes_batch_bug = True
            original = model(**arguments)
            outputs.update(
                {
                    f"{run}.obj_ids": result.object_ids,
                    f"{run}.obj_probs": result.object_probs,
                    f"{run}.attr_ids": result.attribute_ids,
                    f"{run}.attr_probs": result.attribute_probs,
                    f"{run}.boxes": result.boxes,
                    f"{run}.normalized_boxes": original.normalized_boxes,
                    f"{run}.normalized_boxes_per_image": result.normalized_boxes,
                    f"{run}.roi_features": result.features,
                    f"{run}.sizes": result.image_sizes,
                    f"{run}.preds_per_image": result.num_detections,
                    f"{run}.res4": result.res4,
                    f"{run}.rpn_objectness_logits": result.rpn_objectness_logits,
                    f"{run}.rpn_anchor_deltas": result.rpn_anchor_deltas,
                    f"{run}.anchors": result.anchors,
                }
            )
            for image in range(result.res4.shape[0]):
                proposals = int(result.num_proposals[image])
                detections = int(result.num_detections[image])
                boxes = result.proposals[image, :proposals]
                first = boxes[:8]
                rois = torch.cat([torch.full((len(first), 1), float(image)), first], dim=1)
                prefix = f"{run}.img{image}"
                outputs.update(
                    {
                        f"{prefix}.proposals": boxes,
                        f"{prefix}.proposal_logits": result.proposal_logits[image, :proposals],
                        f"{prefix}.roi_pool_first8": model.pool_regions(result.res4, rois),
                        f"{prefix}.feature_pooled_all": result.proposal_features[image, :proposals],
                        f"{prefix}.obj_logits": result.object_logits[image, :proposals],
                        f"{prefix}.attr_logits": result.attribute_logits[image, :proposals],
                        f"{prefix}.box_deltas": result.box_deltas[image, :proposals],
                        f"{prefix}.keep": result.proposal_index[image, :detections],
                    }
                )
    finally:
        model.config.normalized_boxes_batch_bug = previous_bug
    return outputs


__all__ = [
    "CONFIG_OVERRIDES",
    "KEY_MAP",
    "LAYOUTS",
    "VERIFY_ATOL",
    "VERIFY_RTOL",
    "build_processor",
    "config_from_original",
    "convert",
    "fixture_outputs",
    "fixture_runs",
    "load_detectron2_pickle",
    "load_original_checkpoint",
    "read_original_config",
]
