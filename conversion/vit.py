"""Convert Google's original ViT checkpoints (github.com/google-research/vision_transformer, Flax `.npz`) to
transformers' ViT classes.

Accepted files: every `.npz` release in the repository's layout (`gs://vit_models/imagenet21k/`,
`imagenet21k+imagenet2012/`, `augreg/`, `sam/`, `gsam/`): `numpy.savez` of the parameter tree flattened with `/`,
float32, no config. Both sub-module spellings are read: pre-Linen (`MultiHeadDotProductAttention_1`, `LayerNorm_2`,
`MlpBlock_3`, what every release uses) and Linen (`..._0`, `LayerNorm_1`, `MlpBlock_0`).

Result: `ViTForImageClassification` for files without a representation layer; for files with `pre_logits`
(2020 ImageNet-21k pre-training releases) hf_vlp's `ViTForImageClassificationWithRepresentation`, or with
`task="backbone"` a `ViTModel` whose pooler is the representation layer (head dropped, like the public in21k ports).
Config: sizes from the shapes, heads from `query/kernel.shape[1]`, `hidden_act="gelu_pytorch_tanh"` (flax.linen.gelu
is the tanh approximation; exact GELU differs by ~1e-3) and `layer_norm_eps=1e-6` (Flax default).
Refused with a clear error: `classifier="gap"` files (no `cls` token; transformers' ViT always pools the CLS token)
and R50/R26 hybrids (`conv_root`, `block1/...` keys).

Inputs: the original feeds NHWC images scaled to [-1, 1]; transformers wants NCHW with mean = std = 0.5
(`ViTImageProcessor` defaults).
"""

import re
from pathlib import Path

import numpy as np
import torch
from transformers import ViTConfig, ViTForImageClassification, ViTModel

from hf_vlp.modeling.vit import ViTForImageClassificationWithRepresentation, ViTRepresentationConfig

from .common import ConversionError, KeyMap, Skipped, check_options, load_mapped_state

# shared/fixtures/vit/README.md: transformers' ViT matches the Flax original within 3e-6; no relative term
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 0.0

# Linen and pre-Linen module names inside `encoderblock_N` -> one canonical spelling
_BLOCK_SPELLINGS = [
    (r"/MultiHeadDotProductAttention_[01]/", "/attention/"),
    (r"/LayerNorm_0/", "/norm_before/"),
    (r"/LayerNorm_[12]/", "/norm_after/"),
    (r"/MlpBlock_[03]/", "/mlp/"),
]

KEY_MAP = KeyMap(
    renames=[
        (r"^cls$", "vit.embeddings.cls_token"),
        (r"^Transformer/posembed_input/pos_embedding$", "vit.embeddings.position_embeddings"),
        (r"^embedding/kernel$", "vit.embeddings.patch_embeddings.projection.weight"),
        (r"^embedding/bias$", "vit.embeddings.patch_embeddings.projection.bias"),
        (r"^Transformer/encoderblock_(\d+)/norm_before/scale$", r"vit.layers.\1.layernorm_before.weight"),
        (r"^Transformer/encoderblock_(\d+)/norm_before/bias$", r"vit.layers.\1.layernorm_before.bias"),
        (r"^Transformer/encoderblock_(\d+)/norm_after/scale$", r"vit.layers.\1.layernorm_after.weight"),
        (r"^Transformer/encoderblock_(\d+)/norm_after/bias$", r"vit.layers.\1.layernorm_after.bias"),
        *[
            (rf"^Transformer/encoderblock_(\d+)/attention/{name}/{kind}$", rf"vit.layers.\1.attention.{proj}.{param}")
            for name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))
            for kind, param in (("kernel", "weight"), ("bias", "bias"))
        ],
        (r"^Transformer/encoderblock_(\d+)/attention/out/kernel$", r"vit.layers.\1.attention.o_proj.weight"),
        (r"^Transformer/encoderblock_(\d+)/attention/out/bias$", r"vit.layers.\1.attention.o_proj.bias"),
        (r"^Transformer/encoderblock_(\d+)/mlp/Dense_0/kernel$", r"vit.layers.\1.mlp.fc1.weight"),
        (r"^Transformer/encoderblock_(\d+)/mlp/Dense_0/bias$", r"vit.layers.\1.mlp.fc1.bias"),
        (r"^Transformer/encoderblock_(\d+)/mlp/Dense_1/kernel$", r"vit.layers.\1.mlp.fc2.weight"),
        (r"^Transformer/encoderblock_(\d+)/mlp/Dense_1/bias$", r"vit.layers.\1.mlp.fc2.bias"),
        (r"^Transformer/encoder_norm/scale$", "vit.layernorm.weight"),
        (r"^Transformer/encoder_norm/bias$", "vit.layernorm.bias"),
        (r"^pre_logits/kernel$", "vit.pooler.dense.weight"),
        (r"^pre_logits/bias$", "vit.pooler.dense.bias"),
        (r"^head/kernel$", "classifier.weight"),
        (r"^head/bias$", "classifier.bias"),
    ],
)


def _to_torch_layout(key: str, array: np.ndarray) -> torch.Tensor:
    """Flax layouts -> torch: conv HWIO -> OIHW; Dense [in, out] -> [out, in]; attention q/k/v [D, H, hd] ->
    [H*hd, D], out [H, hd, D] -> [D, H*hd]; per-head biases flattened."""
    tensor = torch.from_numpy(np.asarray(array, dtype=np.float32)).clone()
    if key == "embedding/kernel":
        return tensor.permute(3, 2, 0, 1).contiguous()
    if re.search(r"/attention/(query|key|value)/kernel$", key):
        return tensor.reshape(tensor.shape[0], -1).t().contiguous()
    if re.search(r"/attention/(query|key|value)/bias$", key):
        return tensor.reshape(-1)
    if re.search(r"/attention/out/kernel$", key):
        return tensor.reshape(-1, tensor.shape[-1]).t().contiguous()
    if key.endswith("/kernel") and tensor.dim() == 2:
        return tensor.t().contiguous()
    return tensor


def load_npz(path) -> dict:
    """The flat `{"a/b/c": array}` of a ViT `.npz`, with block module names in one spelling."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix != ".npz":
        raise ConversionError(f"{path}: the original ViT releases are Flax `.npz` files, got a {path.suffix!r} file")
    with np.load(path, allow_pickle=False) as archive:
        flat = {key: archive[key] for key in archive.files}
    canonical = {}
    for key, value in flat.items():
        for pattern, replacement in _BLOCK_SPELLINGS:
            key = re.sub(pattern, replacement, key)
        canonical[key] = value
    return canonical


def _check_supported(flat: dict, path):
    if "Transformer/encoder_norm/scale" not in flat or "embedding/kernel" not in flat:
        raise ConversionError(
            f"{path} is not a ViT checkpoint in the vision_transformer `.npz` layout: no "
            f"'Transformer/encoder_norm/scale' / 'embedding/kernel' (first keys: {sorted(flat)[:5]})"
        )
    hybrid = [k for k in flat if k.startswith(("conv_root", "gn_root", "block1/", "block2/", "block3/", "block4/"))]
    if hybrid:
        raise ConversionError(
            f"{path} is an R50/R26+ViT hybrid ({hybrid[0]!r}): transformers' ViT has no ResNet stem; not supported"
        )
    if "cls" not in flat:
        raise ConversionError(
            f"{path} has no 'cls' token (classifier='gap', mean pooling): transformers' ViT pools the CLS token, "
            "so this variant is not supported"
        )


def config_from_npz(flat: dict, representation: bool):
    """ViTConfig / ViTRepresentationConfig from the tensor shapes (`num_attention_heads` from the query kernel)."""
    hidden = flat["cls"].shape[-1]
    patch = flat["embedding/kernel"].shape[0]
    tokens = flat["Transformer/posembed_input/pos_embedding"].shape[1]
    grid = round((tokens - 1) ** 0.5)
    if grid * grid != tokens - 1:
        raise ConversionError(f"position table of {tokens} tokens is not 1 + a square grid")
    kwargs = dict(
        hidden_size=hidden,
        num_hidden_layers=len({m.group(1) for k in flat if (m := re.match(r"^Transformer/encoderblock_(\d+)/", k))}),
        num_attention_heads=flat["Transformer/encoderblock_0/attention/query/kernel"].shape[1],
        intermediate_size=flat["Transformer/encoderblock_0/mlp/Dense_0/kernel"].shape[1],
        patch_size=patch,
        image_size=patch * grid,
        hidden_act="gelu_pytorch_tanh",  # flax.linen.gelu(approximate=True)
        layer_norm_eps=1e-6,  # flax.linen.LayerNorm default
        qkv_bias=True,
        encoder_stride=patch,
    )
    if "head/kernel" in flat:
        kwargs["num_labels"] = flat["head/kernel"].shape[1]
    if representation:
        kwargs.update(pooler_output_size=flat["pre_logits/kernel"].shape[1], pooler_act="tanh")
        return ViTRepresentationConfig(**kwargs)
    return ViTConfig(**kwargs)


def convert(checkpoint, config=None, task="classification", **options):
    """Original ViT `.npz` -> transformers model.

    task: "classification" (default: `ViTForImageClassification`, or `ViTForImageClassificationWithRepresentation`
        when the file has `pre_logits`) or "backbone" (`ViTModel`; `pre_logits` becomes its tanh pooler, `head` is
        dropped).
    config: optional JSON/dict of `id2label` etc. merged into the inferred config (sizes must agree).
    """
    check_options(convert, options)
    if task not in ("classification", "backbone"):
        raise ValueError(f"task must be 'classification' or 'backbone', got {task!r}")
    flat = load_npz(checkpoint)
    _check_supported(flat, checkpoint)
    representation = "pre_logits/kernel" in flat
    if task == "classification" and "head/kernel" not in flat:
        raise ConversionError(f"{checkpoint} has no 'head/*' classifier: convert it with task='backbone'")
    hf_config = config_from_npz(flat, representation)
    if config is not None:
        hf_config = _merge_user_config(hf_config, config)
    state = {key: _to_torch_layout(key, value) for key, value in flat.items()}
    mapped, _dropped = KEY_MAP.apply(state)
    if task == "backbone":
        # the head classifies into the pre-training label set; a backbone user replaces it
        mapped = {k[len("vit.") :]: v for k, v in mapped.items() if k.startswith("vit.")}
        model = ViTModel(hf_config, add_pooling_layer=representation)
    elif representation:
        model = ViTForImageClassificationWithRepresentation(hf_config)
    else:
        model = ViTForImageClassification(hf_config)
    return load_mapped_state(model, mapped).eval()


def build_processor(checkpoint, config=None, tokenizer=None):
    """`ViTImageProcessorPil` at the checkpoint's resolution with mean = std = 0.5 (the original scales to [-1, 1];
    it resizes with TF bilinear, which PIL's bilinear approximates: identical only when no resize happens)."""
    from transformers import ViTImageProcessorPil

    flat = load_npz(checkpoint)
    _check_supported(flat, checkpoint)
    size = config_from_npz(flat, "pre_logits/kernel" in flat).image_size
    return ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def _merge_user_config(inferred, config):
    import json

    if not isinstance(config, dict):
        with open(config) as handle:
            config = json.load(handle)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size"):
        if key in config and config[key] != getattr(inferred, key):
            raise ConversionError(
                f"--config says {key}={config[key]!r} but the checkpoint has {getattr(inferred, key)!r}"
            )
    merged = inferred.to_dict()
    merged.update({k: v for k, v in config.items() if k in ("id2label", "label2id")})
    return type(inferred).from_dict(merged)


# ------------------------------------------------------------------------------------------------------------------
# --verify: recompute shared/fixtures/vit/outputs.safetensors (README there)
# ------------------------------------------------------------------------------------------------------------------


def fixture_outputs(model, fixture_dir):
    from safetensors import safe_open
    from safetensors.torch import load_file

    inputs = load_file(Path(fixture_dir) / "inputs.safetensors")
    pixel_values = inputs["pixel_values"]  # the NCHW copy of what the Flax model received
    backbone = model if isinstance(model, ViTModel) else model.vit
    representation = backbone.pooler is not None
    prefix, other = ("rep", "norep") if representation else ("norep", "rep")

    encoded = backbone(pixel_values, output_hidden_states=True)
    outputs = {
        f"{prefix}.last_hidden_state": encoded.last_hidden_state,
        f"{prefix}.hidden_states": torch.stack(encoded.hidden_states),
        f"{prefix}.patch_embeddings": backbone.embeddings.patch_embeddings(pixel_values),
        f"{prefix}.pre_logits": encoded.pooler_output if representation else encoded.last_hidden_state[:, 0],
    }
    if isinstance(model, ViTModel):
        outputs[f"{prefix}.logits"] = Skipped("converted with task='backbone' (head dropped)")
    else:
        outputs[f"{prefix}.logits"] = model(pixel_values).logits

    with safe_open(Path(fixture_dir) / "outputs.safetensors", "pt") as reference:
        for name in reference.keys():
            if name.startswith(other + "."):
                kind = "with" if other == "rep" else "without"
                outputs[name] = Skipped(f"needs the fixture checkpoint {kind} a representation layer")
    return outputs
