"""Convert original ViLT checkpoints (github.com/dandelin/ViLT, PyTorch Lightning `.ckpt`) to hf_vlp /
transformers.

Accepted files: the released `vilt_200k_mlm_itm.ckpt` (pretraining: MLM + ITM heads) and the fine-tuned
`vilt_vqa.ckpt`, `vilt_nlvr2.ckpt`, `vilt_irtr_coco.ckpt`, `vilt_irtr_f30k.ckpt` (and anything else the original
`ViLTransformerSS` saves). Only `ckpt["state_dict"]` and `ckpt["hyper_parameters"]["config"]` (the sacred config the
model was built from) are read; optimizer / scheduler / callback states are ignored.

Safe loading: `torch.load(weights_only=True)` first. Lightning checkpoints written by the original training runs can
hold non-tensor Python objects (sacred's `ReadOnlyDict` config, Lightning's `AttributeDict`, ...) that
`weights_only=True` refuses. Then a restricted unpickler is used: it resolves only the globals that torch's
weights-only unpickler allows (tensor rebuild functions, storages, OrderedDict, ...) and replaces every other global by
an inert dict-like placeholder (no foreign class or function is ever imported or called), so a malicious pickle
cannot run code; the placeholders keep the items / arguments of plain containers such as the config dict.

Head -> class: `mlm_score` / `itm_score` -> `ViltForPreTraining` (hf_vlp, untied MLM decoder); `vqa_classifier` ->
`ViltForQuestionAnswering`; `nlvr2_classifier` -> `ViltForImagesAndTextClassification` (`num_images=2`, modality
table of 3 rows); `rank_output` -> `ViltForImageTextRetrieval` (hf_vlp, trainable). `task="retrieval"` on a
pretraining file starts a retrieval model the original way (`rank_output` = the "match" row of `itm_score.fc`);
`task="backbone"` gives `ViltModel`.

Config: sizes from the tensor shapes; `num_attention_heads` from the saved config (`num_heads`; not in any shape).
`layer_norm_eps=1e-6`: the original uses 1e-6 in every ViT block and the final norm and 1e-12 in the text embeddings
and the MLM transform; transformers has one eps (either value is within 2e-5 on the fixture). `max_image_length` is
the config's `max_image_len` (random patch sampling; -1 keeps every patch).

Input mapping (original batch -> transformers): `text_ids` -> `input_ids`, `text_masks` -> `attention_mask`, the
padded `image` -> `pixel_values`, and ALWAYS `pixel_mask = pixel_values.sum(1) != 0` (or the padding mask): the original
derives it inside `visual_embed`, transformers defaults to all-ones. NLVR2: `pixel_values` (B, 2, 3, H, W).
"""

import io
import pickle
import re
from pathlib import Path

import torch
from transformers import ViltConfig, ViltForImagesAndTextClassification, ViltForQuestionAnswering, ViltModel

from hf_vlp.modeling.vilt import ViltForImageTextRetrieval, ViltForPreTraining, word_patch_alignment

from .common import (
    ConversionError,
    KeyMap,
    Skipped,
    check_options,
    is_torchscript_archive,
    load_mapped_state,
    read_json,
)

# shared/fixtures/vilt/README.md: transformers' ViLT matches the original within 4e-6; no relative term
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 0.0

KEY_MAP = KeyMap(
    renames=[
        (r"^text_embeddings\.", "vilt.embeddings.text_embeddings."),
        (r"^token_type_embeddings\.weight$", "vilt.embeddings.token_type_embeddings.weight"),
        (r"^transformer\.cls_token$", "vilt.embeddings.cls_token"),
        (r"^transformer\.pos_embed$", "vilt.embeddings.position_embeddings"),
        (r"^transformer\.patch_embed\.proj\.", "vilt.embeddings.patch_embeddings.projection."),
        (r"^transformer\.blocks\.(\d+)\.norm1\.", r"vilt.encoder.layer.\1.layernorm_before."),
        (r"^transformer\.blocks\.(\d+)\.norm2\.", r"vilt.encoder.layer.\1.layernorm_after."),
        (r"^transformer\.blocks\.(\d+)\.attn\.(query|key|value)\.", r"vilt.encoder.layer.\1.attention.attention.\2."),
        (r"^transformer\.blocks\.(\d+)\.attn\.proj\.", r"vilt.encoder.layer.\1.attention.output.dense."),
        (r"^transformer\.blocks\.(\d+)\.mlp\.fc1\.", r"vilt.encoder.layer.\1.intermediate.dense."),
        (r"^transformer\.blocks\.(\d+)\.mlp\.fc2\.", r"vilt.encoder.layer.\1.output.dense."),
        (r"^transformer\.norm\.", "vilt.layernorm."),
        (r"^pooler\.dense\.", "vilt.pooler.dense."),
        (r"^mlm_score\.bias$", "mlm_score.decoder.bias"),
        (r"^mlm_score\.(transform\.|decoder\.weight$)", r"mlm_score.\1"),
        (r"^itm_score\.fc\.", "itm_score.fc."),
        (r"^(vqa|nlvr2)_classifier\.", "classifier."),
        (r"^rank_output\.", "rank_output."),
    ],
    drops=[
        (r"^text_embeddings\.position_ids$", "BertEmbeddings buffer (arange), recreated by transformers"),
        (r"^transformer\.(head|pre_logits)\.", "timm ImageNet classifier of the ViT copy; ViLT never uses it"),
    ],
)

# the head whose keys decide the class, in priority order
HEADS = [
    ("vqa_classifier.3.weight", ViltForQuestionAnswering),
    ("nlvr2_classifier.3.weight", ViltForImagesAndTextClassification),
    ("rank_output.weight", ViltForImageTextRetrieval),
    ("mlm_score.decoder.weight", ViltForPreTraining),
    ("itm_score.fc.weight", ViltForPreTraining),
]


# ------------------------------------------------------------------------------------------------------------------
# safe loading of Lightning checkpoints
# ------------------------------------------------------------------------------------------------------------------


class _Opaque(dict):
    """Stand-in for any global the checkpoint names that is not on torch's weights-only allowlist. It is a dict so
    that dict subclasses (sacred ReadOnlyDict, Lightning AttributeDict) keep their items; anything else is inert."""

    original_global = "?"

    def __init__(self, *args, **kwargs):
        try:
            super().__init__(*args, **kwargs)
        except (TypeError, ValueError):
            self.args = args

    def __setstate__(self, state):
        self.state = state


def _allowed_globals() -> dict:
    try:  # the allowlist of torch's own weights_only unpickler: "module.name" -> object
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = dict(_get_allowed_globals())
    except Exception:  # pragma: no cover - private API moved
        import collections

        allowed = {
            "collections.OrderedDict": collections.OrderedDict,
            "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
            "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
        }
    allowed.update(
        {f"{k.__module__}.{k.__name__}": k for k in torch.serialization.get_safe_globals() if hasattr(k, "__name__")}
    )
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    allowed = None

    def find_class(self, module, name):
        allowed = type(self).allowed
        key = f"{module}.{name}"
        if key in allowed:
            return allowed[key]
        return type(f"Opaque[{key}]", (_Opaque,), {"original_global": key})


class _RestrictedPickleModule:
    """What `torch.load(pickle_module=...)` needs: an `Unpickler` class (and `load` for the legacy format)."""

    Unpickler = _RestrictedUnpickler
    __name__ = "hf_vlp_restricted_pickle"

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()


def load_lightning_checkpoint(path) -> dict:
    """The top-level dict of a Lightning `.ckpt`, loaded without executing foreign code (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if is_torchscript_archive(path):  # torch.load(weights_only=False) would hand it to torch.jit.load, which runs it
        raise ConversionError(f"{path} is a TorchScript archive, not a Lightning checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    _RestrictedUnpickler.allowed = _allowed_globals()
    with open(path, "rb") as handle:
        data = handle.read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)


def _state_and_config(checkpoint, config):
    ckpt = load_lightning_checkpoint(checkpoint)
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{checkpoint}: expected a Lightning checkpoint dict, got {type(ckpt).__name__}")
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise ConversionError(f"{checkpoint}: no 'state_dict' of tensors (top-level keys {sorted(ckpt)[:10]})")
    if all(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items()}
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if torch.is_tensor(v)}
    original = None
    if config is not None:
        original = dict(read_json(config) if not isinstance(config, dict) else config)
    else:
        hyper = ckpt.get("hyper_parameters") or {}
        original = hyper.get("config") if isinstance(hyper, dict) else None
        original = dict(original) if isinstance(original, dict) else None
    return state, original


def _split_qkv(state: dict) -> dict:
    """timm's fused `attn.qkv` rows are [q; k; v]."""
    out = {}
    for key, value in state.items():
        match = re.match(r"^(transformer\.blocks\.\d+\.attn)\.qkv\.(weight|bias)$", key)
        if match:
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{match.group(1)}.{name}.{match.group(2)}"] = part.clone()
        else:
            out[key] = value
    return out


def config_from_state(state: dict, original: dict | None, model_class) -> ViltConfig:
    hidden = state["text_embeddings.word_embeddings.weight"].shape[1]
    patch = state["transformer.patch_embed.proj.weight"].shape[-1]
    grid = round((state["transformer.pos_embed"].shape[1] - 1) ** 0.5)
    if original is None or "num_heads" not in original:
        raise ConversionError(
            "the number of attention heads is in no tensor shape and the checkpoint has no hyper_parameters.config: "
            "pass the original config JSON (with num_heads) as --config"
        )
    if original.get("hidden_size", hidden) != hidden:
        raise ConversionError(
            f"the saved config says hidden_size={original['hidden_size']} but the checkpoint is {hidden} wide; pass a "
            "config JSON whose num_heads matches the weights"
        )
    kwargs = dict(
        vocab_size=state["text_embeddings.word_embeddings.weight"].shape[0],
        type_vocab_size=state["text_embeddings.token_type_embeddings.weight"].shape[0],
        modality_type_vocab_size=state["token_type_embeddings.weight"].shape[0],
        max_position_embeddings=state["text_embeddings.position_embeddings.weight"].shape[0],
        hidden_size=hidden,
        num_hidden_layers=len({k.split(".")[2] for k in state if k.startswith("transformer.blocks.")}),
        num_attention_heads=int(original["num_heads"]),
        intermediate_size=state["transformer.blocks.0.mlp.fc1.weight"].shape[0],
        hidden_act="gelu",  # exact erf GELU in both the BERT embeddings' heads and timm's ViT blocks
        hidden_dropout_prob=float(original.get("drop_rate", 0.1)),
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-6,
        image_size=patch * grid,
        patch_size=patch,
        qkv_bias="transformer.blocks.0.attn.qkv.bias" in state,
        max_image_length=int(original.get("max_image_len", -1)),
    )
    if model_class is ViltForQuestionAnswering:
        kwargs["num_labels"] = state["vqa_classifier.3.weight"].shape[0]
    if model_class is ViltForImagesAndTextClassification:
        kwargs.update(num_images=2, num_labels=state["nlvr2_classifier.3.weight"].shape[0])
    return ViltConfig(**kwargs)


def convert(checkpoint, config=None, task=None, **options):
    """Original ViLT `.ckpt` -> the matching hf_vlp / transformers model (see the module docstring).

    config: the original sacred config as JSON (optional: the checkpoint's `hyper_parameters.config` is used).
    task: None (from the head keys), "retrieval" (start `rank_output` from `itm_score.fc`) or "backbone".
    """
    check_options(convert, options)
    if task not in (None, "retrieval", "backbone"):
        raise ValueError(f"task must be None, 'retrieval' or 'backbone', got {task!r}")
    state, original = _state_and_config(checkpoint, config)
    if "text_embeddings.word_embeddings.weight" not in state or "transformer.blocks.0.attn.qkv.weight" not in state:
        raise ConversionError(
            f"{checkpoint} is not a ViLT checkpoint: no 'text_embeddings.word_embeddings.weight' / "
            f"'transformer.blocks.0.attn.qkv.weight' (first keys: {list(state)[:5]})"
        )
    model_class = next((cls for key, cls in HEADS if key in state), ViltModel)
    init_rank_from_itm = False
    if task == "backbone":
        model_class = ViltModel
    elif task == "retrieval" and model_class is not ViltForImageTextRetrieval:
        if "itm_score.fc.weight" not in state:
            raise ConversionError("task='retrieval' needs a checkpoint with itm_score.fc (pretraining) or rank_output")
        model_class, init_rank_from_itm = ViltForImageTextRetrieval, True
    hf_config = config_from_state(state, original, model_class)
    mapped, _dropped = KEY_MAP.apply(_split_qkv(state))

    model = model_class(hf_config)
    if model_class is ViltModel:
        mapped = {k[len("vilt.") :]: v for k, v in mapped.items() if k.startswith("vilt.")}  # task=backbone: no heads
    elif model_class is ViltForImageTextRetrieval:
        if init_rank_from_itm:  # the original's irtr fine-tuning starts rank_output as the "match" row of itm_score
            mapped["rank_output.weight"] = mapped["itm_score.fc.weight"][1:2].clone()
            mapped["rank_output.bias"] = mapped["itm_score.fc.bias"][1:2].clone()
        # the irtr runs also train the 2-way ITM head (loss weight 0.5, frozen); retrieval scores use rank_output
        mapped = {k: v for k, v in mapped.items() if not k.startswith(("itm_score.", "mlm_score."))}
    return load_mapped_state(model, mapped, allow_missing=_missing_heads(model_class, mapped)).eval()


def build_processor(checkpoint, config=None, tokenizer=None):
    """`ViltProcessor` as the original preprocesses (`pixelbert_transform`): shorter side to the config's image size,
    longer side capped at 1333/800 of it, both floored to multiples of 32, PIL bicubic, mean = std = 0.5, zero padding
    with a pixel mask; text with bert-base-uncased. `tokenizer`: a directory or vocab.txt of that vocabulary (not in
    the checkpoint)."""
    from transformers import BertTokenizer, ViltImageProcessorPil, ViltProcessor

    if tokenizer is None:
        raise ValueError("tokenizer: pass a bert-base-uncased vocabulary directory (ViLT checkpoints carry none)")
    tokenizer = Path(tokenizer)
    directory = tokenizer if tokenizer.is_dir() else tokenizer.parent
    _, original = _state_and_config(checkpoint, config)
    size = int((original or {}).get("image_size", 384))
    max_length = int((original or {}).get("max_text_len", 40))
    text = BertTokenizer.from_pretrained(str(directory), do_lower_case=True, model_max_length=max_length)
    return ViltProcessor(
        image_processor=ViltImageProcessorPil(size={"shortest_edge": size}, size_divisor=32), tokenizer=text
    )


def _missing_heads(model_class, mapped):
    """A pretraining file trained without one objective lacks that head: it starts freshly initialised."""
    if model_class is not ViltForPreTraining:
        return ()
    return tuple(f"^{head}\\." for head in ("mlm_score", "itm_score") if not any(k.startswith(head) for k in mapped))


# ------------------------------------------------------------------------------------------------------------------
# --verify: recompute shared/fixtures/vilt/outputs.safetensors (README there)
# ------------------------------------------------------------------------------------------------------------------


def _backbone_pass(model, input_ids, attention_mask, pixel_values, pixel_mask, image_token_type_idx=1):
    """One `infer` of the original after torch.manual_seed(0): sequence output, joint mask and patch index."""
    vilt = model if isinstance(model, ViltModel) else model.vilt
    torch.manual_seed(0)  # patch sampling consumes the RNG first, in the same way as the original
    _, _, (patch_index, _) = vilt.embeddings.visual_embed(pixel_values, pixel_mask, vilt.config.max_image_length)
    captured = {}
    handle = vilt.embeddings.register_forward_hook(lambda m, i, o: captured.update(mask=o[1]))
    try:
        torch.manual_seed(0)
        out = vilt(
            input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            image_token_type_idx=image_token_type_idx,
        )
    finally:
        handle.remove()
    return out, captured["mask"], patch_index


def _backbone_outputs(prefix, out, joint_mask, patch_index, text_length, pixel_values, patch_size):
    sequence = out.last_hidden_state
    image_feats = sequence[:, text_length:]
    image_masks = joint_mask[:, text_length:].long()
    batch, _, height, width = pixel_values.shape
    grid_w = width // patch_size
    raster_len = 1 + (height // patch_size) * grid_w
    raster = image_feats.new_zeros(batch, raster_len, image_feats.shape[-1])
    raster_mask = image_masks.new_zeros(batch, raster_len)
    # scatter the valid sampled patches to their raster position (row-major over the padded grid); CLS at 0
    valid = image_masks[:, 1:].bool()
    positions = 1 + patch_index[..., 0] * grid_w + patch_index[..., 1]
    rows = torch.arange(batch)[:, None].expand_as(positions)
    raster[rows[valid], positions[valid]] = image_feats[:, 1:][valid]
    raster_mask[rows[valid], positions[valid]] = 1
    raster[:, 0], raster_mask[:, 0] = image_feats[:, 0], image_masks[:, 0]
    return {
        f"{prefix}.text_feats": sequence[:, :text_length],
        f"{prefix}.image_feats": image_feats,
        f"{prefix}.image_masks": image_masks,
        f"{prefix}.patch_index": patch_index,
        f"{prefix}.image_feats_raster": raster,
        f"{prefix}.image_raster_mask": raster_mask,
        f"{prefix}.cls_feats": out.pooler_output,
        f"{prefix}.raw_cls_feats": sequence[:, 0],
    }


def fixture_outputs(model, fixture_dir):
    import torch.nn.functional as F
    from safetensors import safe_open
    from safetensors.torch import load_file

    inputs = load_file(Path(fixture_dir) / "inputs.safetensors")
    config = model.config
    patch = config.patch_size
    outputs = {}

    def batch(prefix, image_key="image", text_key="text_ids"):
        return (
            inputs[f"{prefix}.{text_key}"],
            inputs[f"{prefix}.text_masks"],
            inputs[f"{prefix}.{image_key}"],
            inputs[f"{prefix}.{image_key}_mask"],
        )

    if isinstance(model, ViltForPreTraining):
        ids, masks, image, image_mask = batch("pretrain")
        text_length = ids.shape[1]
        out, joint, patch_index = _backbone_pass(model, ids, masks, image, image_mask)
        outputs.update(_backbone_outputs("pretrain", out, joint, patch_index, text_length, image, patch))
        outputs["pretrain.itm_logits"] = model.itm_score(out.pooler_output)
        outputs["pretrain.wpa_distance"] = word_patch_alignment(out.last_hidden_state, joint, text_length, 0.5, 50)

        false_image, false_mask = inputs["pretrain.false_image_0"], inputs["pretrain.false_image_0_mask"]
        out, joint, _ = _backbone_pass(model, ids, masks, false_image, false_mask)
        outputs["pretrain_false.cls_feats"] = out.pooler_output
        outputs["pretrain_false.itm_logits"] = model.itm_score(out.pooler_output)
        outputs["pretrain_false.wpa_distance"] = word_patch_alignment(
            out.last_hidden_state, joint, text_length, 0.5, 50
        )

        # compute_mlm: masked text with the matching image
        mlm_ids, labels = inputs["pretrain.text_ids_mlm"], inputs["pretrain.text_labels_mlm"]
        out, _, _ = _backbone_pass(model, mlm_ids, masks, image, image_mask)
        mlm_logits = model.mlm_score(out.last_hidden_state[:, :text_length])
        outputs["pretrain.mlm_logits"] = mlm_logits
        result = model(
            input_ids=mlm_ids, attention_mask=masks, pixel_values=image, pixel_mask=image_mask, labels=labels
        )
        outputs["pretrain.mlm_loss"] = result.mlm_loss

        # compute_itm_wpa: the stored labels pick the matching or the false image per row
        # the labels the original drew with randperm are stored with its outputs: they are an input here
        itm_labels = load_file(Path(fixture_dir) / "outputs.safetensors")["pretrain.itm_wpa_call.itm_labels"]
        pick = itm_labels.bool()
        itm_image = torch.where(pick[:, None, None, None], image, false_image)
        itm_mask = torch.where(pick[:, None, None], image_mask, false_mask)
        result = model(
            input_ids=ids, attention_mask=masks, pixel_values=itm_image, pixel_mask=itm_mask, itm_labels=itm_labels
        )
        outputs["pretrain.itm_wpa_call.itm_labels"] = itm_labels
        outputs["pretrain.itm_wpa_call.itm_logits"] = result.itm_logits
        outputs["pretrain.itm_wpa_call.itm_loss"] = result.itm_loss
        outputs["pretrain.itm_wpa_call.itm_wpa_loss"] = result.wpa_loss
    elif isinstance(model, ViltForQuestionAnswering):
        ids, masks, image, image_mask = batch("vqa")
        out, joint, patch_index = _backbone_pass(model, ids, masks, image, image_mask)
        outputs.update(_backbone_outputs("vqa", out, joint, patch_index, ids.shape[1], image, patch))
        result = model(
            input_ids=ids, attention_mask=masks, pixel_values=image, pixel_mask=image_mask, labels=inputs["vqa.targets"]
        )
        outputs["vqa.vqa_logits"] = result.logits
        outputs["vqa.vqa_loss"] = result.loss
    elif isinstance(model, ViltForImagesAndTextClassification):
        ids, masks = inputs["nlvr2.text_ids"], inputs["nlvr2.text_masks"]
        for index in (0, 1):
            image, image_mask = inputs[f"nlvr2.image_{index}"], inputs[f"nlvr2.image_{index}_mask"]
            out, joint, patch_index = _backbone_pass(
                model, ids, masks, image, image_mask, image_token_type_idx=index + 1
            )
            outputs.update(_backbone_outputs(f"nlvr2.img{index}", out, joint, patch_index, ids.shape[1], image, patch))
        pixel_values = torch.stack([inputs["nlvr2.image_0"], inputs["nlvr2.image_1"]], dim=1)
        pixel_mask = torch.stack([inputs["nlvr2.image_0_mask"], inputs["nlvr2.image_1_mask"]], dim=1)
        result = model(
            input_ids=ids,
            attention_mask=masks,
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            labels=inputs["nlvr2.labels"],
        )
        outputs["nlvr2.nlvr2_logits"] = result.logits
        outputs["nlvr2.nlvr2_loss"] = F.cross_entropy(result.logits, inputs["nlvr2.labels"])

    # outputs of the other fixture checkpoints cannot come from this one (each was fine-tuned separately)
    produced = {name.split(".")[0] for name in outputs}
    needs = {"pretrain": "mlm_itm", "pretrain_false": "mlm_itm", "vqa": "vqa", "nlvr2": "nlvr2"}
    with safe_open(Path(fixture_dir) / "outputs.safetensors", "pt") as reference:
        for name in reference.keys():
            prefix = name.split(".")[0]
            if prefix not in produced:
                outputs[name] = Skipped(f"needs the {needs.get(prefix, prefix)} checkpoint")
    return outputs
