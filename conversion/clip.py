"""Convert OpenAI's original CLIP checkpoints (github.com/openai/CLIP) to hf_vlp / transformers.

Accepted files:
* the released TorchScript archives (`RN50.pt` ... `ViT-L-14-336px.pt`; mixed fp16/fp32 tensors, three extra int
  buffers `input_resolution` / `context_length` / `vocab_size`): read as data with `common.load_torchscript_state`
  (what `torch.jit.load(...).state_dict()` returns, without running the archive's code; an archive whose classes
  restore themselves with their own `__setstate__` is refused unless `trust_torchscript=True`, which uses
  `torch.jit.load` and so executes that code);
* plain state dicts (`torch.save(model.state_dict())`, what `build_model` accepts and fine-tuning code saves), also
  wrapped as `{"state_dict": ...}` with a `module.` prefix (open_clip's loader accepts that form).
Every tensor is cast to fp32 (what the original does on CPU).

ViT variants (`visual.proj` present) become `CLIPForPreTraining` = transformers' `CLIPModel` (same weights and key
names) with hf_vlp's distributed-exact contrastive loss. ResNet variants become hf_vlp's `CLIPResNetModel`
(transformers has no ModifiedResNet tower); its text tower is transformers' `CLIPTextModel`.

No config is stored in the original files: everything is read from tensor shapes, as `clip/model.py::build_model`
does. Head counts are the original's fixed rules (`width // 64`; attention pool `width * 32 // 64`). The text
`eos_token_id` is `vocab_size - 1` so that transformers' first-EOS pooling equals the original's argmax pooling.

Input mapping: `clip.tokenize` ids -> `input_ids` (int64; the original passes no padding mask, so call without
`attention_mask` to reproduce padded positions); `_transform(n)` pixels -> `pixel_values`
(`CLIPImageProcessorPil(size={"shortest_edge": n}, crop_size={"height": n, "width": n})` reproduces them).
"""

import re
from pathlib import Path

import torch
from transformers import CLIPConfig

from hf_vlp.modeling.clip import CLIPForPreTraining, CLIPResNetConfig, CLIPResNetModel

from .common import (
    ConversionError,
    KeyMap,
    Skipped,
    check_options,
    is_torchscript_archive,
    load_checkpoint,
    load_mapped_state,
    load_torchscript_state,
)

# shared/fixtures/clip/README.md: transformers' CLIPModel matches the original within 2e-6; no relative term
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 0.0

# entries of the released archives that are not weights (build_model deletes them)
ARCHIVE_EXTRAS = ("input_resolution", "context_length", "vocab_size")

# inside every transformer block: original `ResidualAttentionBlock` name -> transformers `CLIPEncoderLayer` name
_BLOCK_PARTS = [
    (r"attn\.([qkv])_proj\.", r"self_attn.\2_proj."),
    (r"attn\.out_proj\.", "self_attn.out_proj."),
    (r"ln_1\.", "layer_norm1."),
    (r"ln_2\.", "layer_norm2."),
    (r"mlp\.c_fc\.", "mlp.fc1."),
    (r"mlp\.c_proj\.", "mlp.fc2."),
]


def _block_renames(original_prefix: str, new_prefix: str) -> list[tuple[str, str]]:
    """One rename per block part of a tower (`\1` = layer index; q/k/v come from `_split_fused_attention`)."""
    return [(rf"^{original_prefix}\.(\d+)\.{part}", rf"{new_prefix}.\1.{target}") for part, target in _BLOCK_PARTS]


# text tower, projections, logit scale: shared by both variants
_TEXT_RENAMES = [
    *_block_renames(r"transformer\.resblocks", "text_model.encoder.layers"),
    (r"^token_embedding\.weight$", "text_model.embeddings.token_embedding.weight"),
    (r"^positional_embedding$", "text_model.embeddings.position_embedding.weight"),
    (r"^ln_final\.", "text_model.final_layer_norm."),
    (r"^text_projection$", "text_projection.weight"),
    (r"^logit_scale$", "logit_scale"),
]
_DROPS = [
    (f"^{name}$", "TorchScript archive metadata, not a weight (build_model deletes it)") for name in ARCHIVE_EXTRAS
]

VIT_KEY_MAP = KeyMap(
    renames=[
        (r"^visual\.conv1\.weight$", "vision_model.embeddings.patch_embedding.weight"),
        (r"^visual\.class_embedding$", "vision_model.embeddings.class_embedding"),
        (r"^visual\.positional_embedding$", "vision_model.embeddings.position_embedding.weight"),
        (r"^visual\.ln_pre\.", "vision_model.pre_layrnorm."),
        *_block_renames(r"visual\.transformer\.resblocks", "vision_model.encoder.layers"),
        (r"^visual\.ln_post\.", "vision_model.post_layernorm."),
        (r"^visual\.proj$", "visual_projection.weight"),
        *_TEXT_RENAMES,
    ],
    drops=_DROPS,
    # the original stores projections [in, out] and computes x @ P; nn.Linear wants [out, in]
    transforms={"visual_projection.weight": lambda p: p.t(), "text_projection.weight": lambda p: p.t()},
)

RESNET_KEY_MAP = KeyMap(
    renames=[
        (r"^visual\.(conv[123]|bn[123])\.", r"vision_model.stem.\1."),
        (r"^visual\.(layer[1-4]\.\d+)\.downsample\.0\.", r"vision_model.\1.downsample.conv."),
        (r"^visual\.(layer[1-4]\.\d+)\.downsample\.1\.", r"vision_model.\1.downsample.bn."),
        (r"^visual\.(layer[1-4]\.\d+\.(conv[123]|bn[123]))\.", r"vision_model.\1."),
        (
            r"^visual\.attnpool\.(positional_embedding|[qkvc]_proj\.weight|[qkvc]_proj\.bias)$",
            r"vision_model.attnpool.\1",
        ),
        *_TEXT_RENAMES,
    ],
    drops=_DROPS,
    transforms={"text_projection.weight": lambda p: p.t()},
)


def load_original_state(path, trust_torchscript=False) -> dict:
    """`{name: fp32 tensor}` from a TorchScript archive or a (possibly wrapped) state dict.

    A TorchScript archive is read without running it (`common.load_torchscript_state`). `trust_torchscript=True`
    loads it with `torch.jit.load` instead, which executes code stored in the file (custom `__setstate__` methods):
    only for files from a source you trust, when the data-only reader refuses them."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if not isinstance(trust_torchscript, bool):
        raise ValueError(f"trust_torchscript must be true or false, got {trust_torchscript!r}")
    if is_torchscript_archive(path):
        if trust_torchscript:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = load_torchscript_state(path)
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    else:
        state = load_checkpoint(path)
    return state


def _split_fused_attention(state: dict) -> dict:
    """`attn.in_proj_weight` / `in_proj_bias` rows are [q; k; v] (nn.MultiheadAttention): split, do not transpose."""
    out = {}
    for key, value in state.items():
        match = re.match(r"^(.*)\.attn\.in_proj_(weight|bias)$", key)
        if match:
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{match.group(1)}.attn.{name}_proj.{match.group(2)}"] = part.clone()
        else:
            out[key] = value
    return out


def _count(state, pattern):
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def _text_config(state: dict) -> dict:
    width = state["ln_final.weight"].shape[0]
    vocab_size = state["token_embedding.weight"].shape[0]
    return dict(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count(state, r"^transformer\.resblocks\.(\d+)\."),
        num_attention_heads=width // 64,  # clip/model.py build_model: transformer_heads = width // 64
        max_position_embeddings=state["positional_embedding"].shape[0],
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        # EOT is the largest id: transformers' first-EOS pooling then equals the original's argmax pooling
        eos_token_id=vocab_size - 1,
        bos_token_id=vocab_size - 2,
        pad_token_id=0,  # clip.tokenize pads with 0
        projection_dim=state["text_projection"].shape[1],
    )


def config_from_state(state: dict):
    """CLIPConfig (ViT) or CLIPResNetConfig (ModifiedResNet) from tensor shapes, as `build_model` infers them."""
    text = _text_config(state)
    projection_dim = state["text_projection"].shape[1]
    logit_scale = float(state["logit_scale"])
    if "visual.proj" in state:
        width, _, patch, _ = state["visual.conv1.weight"].shape
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = dict(
            hidden_size=width,
            intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=_count(state, r"^visual\.transformer\.resblocks\.(\d+)\."),
            num_attention_heads=width // 64,  # build_model: vision_heads = vision_width // 64
            image_size=patch * grid,
            patch_size=patch,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=projection_dim,
        )
        return CLIPConfig(
            text_config=text, vision_config=vision, projection_dim=projection_dim, logit_scale_init_value=logit_scale
        )
    layers = [_count(state, rf"^visual\.layer{i}\.(\d+)\.") for i in range(1, 5)]
    grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
    vision = dict(
        layers=layers,
        width=state["visual.layer1.0.conv1.weight"].shape[0],
        image_size=grid * 32,
        output_dim=projection_dim,
    )
    return CLIPResNetConfig(
        text_config=text, vision_config=vision, projection_dim=projection_dim, logit_scale_init_value=logit_scale
    )


def convert(checkpoint, config=None, trust_torchscript=False, **options):
    """OpenAI CLIP checkpoint (TorchScript archive or state dict) -> `CLIPForPreTraining` (ViT) or `CLIPResNetModel`.

    `config` must be None: the original format has no config file and every size is in the tensor shapes.
    `trust_torchscript`: read a TorchScript archive with `torch.jit.load`, running its code (see `load_original_state`).
    """
    check_options(convert, options)
    if config is not None:
        raise ValueError("config: OpenAI CLIP checkpoints carry their sizes in the tensor shapes; pass no config")
    state = load_original_state(checkpoint, trust_torchscript)
    required = ("token_embedding.weight", "ln_final.weight", "text_projection", "logit_scale", "positional_embedding")
    missing = [k for k in required if k not in state]
    if missing or not any(k.startswith("visual.") for k in state):
        raise ConversionError(
            f"{checkpoint} is not an OpenAI CLIP checkpoint: it lacks {missing or ['visual.*']} "
            f"(first keys: {list(state)[:5]})"
        )
    hf_config = config_from_state(state)
    state = _split_fused_attention(state)
    if isinstance(hf_config, CLIPResNetConfig):
        mapped, _dropped = RESNET_KEY_MAP.apply(state)
        model = CLIPResNetModel(hf_config)
    else:
        mapped, _dropped = VIT_KEY_MAP.apply(state)
        model = CLIPForPreTraining(hf_config)
    # position_ids are non-persistent buffers in transformers
    return load_mapped_state(model, mapped).eval()


def build_processor(checkpoint, config=None, tokenizer=None):
    """The original preprocessing for this checkpoint (`hf-vlp convert --output` saves it next to the model):
    `_transform(image_size)` + `clip.tokenize` with the original BPE vocabulary, which ships in the PyPI wheel
    `open_clip_torch` (install it with --no-deps). Returns None, with a note, when that file is not available."""
    from hf_vlp.modeling.clip import build_clip_processor
    from hf_vlp.modeling.clip.processing_clip import default_bpe_path

    try:
        hf_config = config_from_state(load_original_state(checkpoint))
    except ConversionError as error:  # an archive only `trust_torchscript` reads: its sizes are not read twice
        print(f"no processor saved: {error}")
        return None
    try:
        bpe = default_bpe_path()
    except ValueError as error:
        print(f"no processor saved: {error}")
        return None
    if hf_config.text_config.vocab_size != 49408:
        print(
            f"no processor saved: the checkpoint's vocabulary has {hf_config.text_config.vocab_size} tokens, not 49408"
        )
        return None
    return build_clip_processor(
        bpe, image_size=hf_config.vision_config.image_size, context_length=hf_config.text_config.max_position_embeddings
    )


# ------------------------------------------------------------------------------------------------------------------
# --verify: recompute shared/fixtures/clip/outputs.safetensors (README there) with the converted model
# ------------------------------------------------------------------------------------------------------------------


def fixture_outputs(model, fixture_dir):
    from safetensors import safe_open
    from safetensors.torch import load_file

    inputs = load_file(Path(fixture_dir) / "inputs.safetensors")
    prefix = "rn" if isinstance(model, CLIPResNetModel) else "vit"
    other = "vit" if prefix == "rn" else "rn"
    input_ids = inputs["input_ids"].long()
    pixel_values = inputs[f"{prefix}.pixel_values"]
    outputs = {}

    # the original passes no padding mask (causal mask only): no attention_mask here
    result = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=False)
    outputs[f"{prefix}.logits_per_image"] = result.logits_per_image
    outputs[f"{prefix}.logits_per_text"] = result.logits_per_text
    outputs[f"{prefix}.image_features"] = model.get_image_features(pixel_values=pixel_values).pooler_output
    outputs[f"{prefix}.text_features"] = model.get_text_features(input_ids=input_ids).pooler_output

    text = model.text_model(input_ids=input_ids, output_hidden_states=True)
    outputs[f"{prefix}.text_hidden_states"] = torch.stack(text.hidden_states)
    outputs[f"{prefix}.text_last_hidden_state"] = text.last_hidden_state
    outputs[f"{prefix}.text_token_embeds"] = model.get_text_token_embeds(input_ids)
    # transformers' pooling rule: first position equal to eos_token_id
    eos = model.config.text_config.eos_token_id
    outputs[f"{prefix}.eot_indices"] = (input_ids == eos).int().argmax(-1)

    if prefix == "vit":
        vision = model.vision_model
        outputs["vit.image_embedding_output"] = vision.embeddings(pixel_values)
        image = vision(pixel_values=pixel_values, output_hidden_states=True)
        outputs["vit.image_hidden_states"] = torch.stack(image.hidden_states)
        outputs["vit.image_last_hidden_state"] = image.last_hidden_state
        outputs["vit.image_patch_embeds"] = model.get_image_patch_embeds(pixel_values)
    else:
        image = model.vision_model(pixel_values=pixel_values, output_hidden_states=True)
        names = ["image_stem_output"] + [f"image_layer{i}_output" for i in range(1, 5)]
        for name, hidden in zip(names, image.hidden_states):
            outputs[f"rn.{name}"] = hidden

    with safe_open(Path(fixture_dir) / "outputs.safetensors", "pt") as reference:
        for name in reference.keys():
            if name.startswith(other + "."):
                kind = "ModifiedResNet" if other == "rn" else "ViT"
                outputs[name] = Skipped(f"needs the {kind} checkpoint of the fixture")
    return outputs
