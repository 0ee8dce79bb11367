"""Convert original METER checkpoints (github.com/zdou0830/METER, PyTorch Lightning `.ckpt`, CLIP-ViT + RoBERTa/BERT
variants) to hf_vlp (`hf_vlp.modeling.meter`).

Accepted files: the pretraining files (`meter_clip16_*_roberta_pretrain.ckpt`: MLM + ITM heads) and the fine-tuned
VQA, NLVR2, SNLI-VE and Flickr/COCO retrieval files, or any `METERTransformerSS` state with a CLIP image encoder
(the Swin variant is not covered). Only `ckpt["state_dict"]` and `ckpt["hyper_parameters"]["config"]` (the sacred
config) are read, through `lightning.load_lightning_checkpoint`: no pytorch_lightning needed, and a pickle naming
any global beyond tensor data and the known Lightning / sacred containers is refused.

Head -> class: `vqa_classifier` -> `MeterForVisualQuestionAnswering`; `nlvr2_classifier` -> `MeterForVisualReasoning`;
`snli_classifier` -> `MeterForVisualEntailment`; `rank_output` -> `MeterForImageTextRetrieval` (with `itm_score`);
`mlm_score` / `itm_score` -> `MeterForPreTraining`; in that order unless `task` picks one ("vqa", "nlvr2",
"entailment", "retrieval", "pretraining", "base"). A file with several heads (the fixtures) converts once per head.
`task="retrieval"` on a file without `rank_output` starts it from the ITM "match" row, as METER's fine-tuning does.

Config: every size from the tensor shapes (CLIP width, patch, grid, block count; text width, layers, vocabulary,
positions; fusion width, layers, feed-forward; token-type rows; answers). Not in any shape: the fusion's heads
(`num_heads` of the sacred config), the text encoder's heads / eps / special ids (the text encoder's own config:
`text_config=` a config.json or folder, default roberta-base's (bert-base-uncased's when the sacred `tokenizer` is
not a RoBERTa one)), and CLIP's heads, which METER fixes at width // 64.
"""

import re
from pathlib import Path

import torch

from hf_vlp.modeling.meter.configuration_meter import ROBERTA_BASE, MeterConfig

from ..common import ConversionError, KeyMap, Skipped, check_options, load_mapped_state, read_json
from .lightning import load_lightning_checkpoint

# shared/fixtures/meter/README.md: an independent port matches within 4e-6; atol 2e-5, no relative term
VERIFY_ATOL = 2e-5
VERIFY_RTOL = 0.0

_V = r"^vit_model\.visual\."
_BLOCK = _V + r"transformer\.resblocks\.(\d+)\."
_CLIP = "meter.vision_model."
KEY_MAP = KeyMap(
    renames=[
        (_V + r"conv1\.weight$", _CLIP + "embeddings.patch_embedding.weight"),
        (_V + r"class_embedding$", _CLIP + "embeddings.class_embedding"),
        (_V + r"positional_embedding$", _CLIP + "embeddings.position_embedding.weight"),
        (_V + r"ln_pre\.", _CLIP + "pre_layrnorm."),
        (_V + r"ln_post\.", _CLIP + "post_layernorm."),
        (_BLOCK + r"ln_1\.", _CLIP + r"encoder.layers.\1.layer_norm1."),
        (_BLOCK + r"ln_2\.", _CLIP + r"encoder.layers.\1.layer_norm2."),
        (_BLOCK + r"attn\.(q|k|v|out)_proj\.", _CLIP + r"encoder.layers.\1.self_attn.\2_proj."),
        (_BLOCK + r"mlp\.c_fc\.", _CLIP + r"encoder.layers.\1.mlp.fc1."),
        (_BLOCK + r"mlp\.c_proj\.", _CLIP + r"encoder.layers.\1.mlp.fc2."),
        (r"^text_transformer\.", "meter.text_model."),
        (r"^(cross_modal_(text|image)_(transform|layers|pooler)\.)", r"meter.\1"),
        (r"^token_type_embeddings\.weight$", "meter.token_type_embeddings.weight"),
        (r"^mlm_score\.bias$", "mlm_score.decoder.bias"),
        (r"^mlm_score\.(transform\.|decoder\.weight$)", r"mlm_score.\1"),
        (r"^itm_score\.fc\.", "itm_score."),
        (r"^(vqa|snli|nlvr2)_classifier\.", r"\1_classifier."),  # renamed to `classifier.` for the chosen head
        (r"^rank_output\.", "rank_output."),
    ],
    drops=[
        (r"^text_transformer\.embeddings\.position_ids$", "buffer (arange), recreated by transformers"),
        (r"^text_transformer\.pooler\.", "the text encoder's pooler: METER never uses it"),
        (r"^vit_model\.(positional_embedding|ln_final\.)", "leftovers of the CLIP text tower: METER never uses them"),
    ],
)

# task -> (class name, the state key that marks its head); default order of `convert(task=None)`
HEADS = {
    "vqa": ("MeterForVisualQuestionAnswering", "vqa_classifier.3.weight"),
    "nlvr2": ("MeterForVisualReasoning", "nlvr2_classifier.3.weight"),
    "entailment": ("MeterForVisualEntailment", "snli_classifier.3.weight"),
    "retrieval": ("MeterForImageTextRetrieval", "rank_output.weight"),
    "pretraining": ("MeterForPreTraining", "mlm_score.decoder.weight"),
}
TASKS = (*HEADS, "base")
CLASSIFIER = {"vqa": "vqa_classifier", "nlvr2": "nlvr2_classifier", "entailment": "snli_classifier"}
CLIP_HEAD_WIDTH = 64  # METER's clip_model.py: heads = width // 64

BERT_BASE_UNCASED = dict(
    vocab_size=30522,
    num_attention_heads=12,
    max_position_embeddings=512,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    pad_token_id=0,
)


def _split_in_proj(state: dict) -> dict:
    """`nn.MultiheadAttention`'s `in_proj_weight` / `in_proj_bias` rows are [q; k; v]."""
    out = {}
    for key, value in state.items():
        match = re.match(r"^(vit_model\.visual\.transformer\.resblocks\.\d+\.attn)\.in_proj_(weight|bias)$", key)
        if match:
            for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                out[f"{match.group(1)}.{name}_proj.{match.group(2)}"] = part.clone()
        else:
            out[key] = value
    return out


def read_checkpoint(checkpoint, config=None):
    """(state dict of fp32 tensors, the sacred config dict or None) of a METER `.ckpt`."""
    ckpt = load_lightning_checkpoint(checkpoint)
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise ConversionError(f"{checkpoint}: no 'state_dict' of tensors (top-level keys {sorted(ckpt)[:10]})")
    # shared storage (METER's rank_output starts as a view of itm_score's "match" row): clone every tensor
    state = {k: (v.float() if v.is_floating_point() else v).clone() for k, v in state.items() if torch.is_tensor(v)}
    if config is not None:
        original = dict(config) if isinstance(config, dict) else read_json(config)
    else:
        hyper = ckpt.get("hyper_parameters") or {}
        original = hyper.get("config") if isinstance(hyper, dict) else None
        original = dict(original) if isinstance(original, dict) else None
    return state, original


def _count(state, pattern):
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def _text_base(original, text_config):
    """The text encoder's config values that no shape gives (heads, eps, special ids, model type)."""
    if text_config is not None:
        path = Path(text_config)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise ValueError(f"text_config: {str(path)!r} is not a config.json (or a folder holding one)")
        values = read_json(path)
        return values.get("model_type", "roberta"), values
    tokenizer = str((original or {}).get("tokenizer", "roberta-base"))
    return ("roberta", ROBERTA_BASE) if "roberta" in tokenizer else ("bert", BERT_BASE_UNCASED)


def config_from_state(state: dict, original: dict | None, text_config=None, task="base") -> MeterConfig:
    """A `MeterConfig` from the tensor shapes, the sacred config and the text encoder's config (module docstring)."""
    required = (
        "vit_model.visual.conv1.weight",
        "text_transformer.embeddings.word_embeddings.weight",
        "cross_modal_text_transform.weight",
    )
    missing = [key for key in required if key not in state]
    if missing:
        raise ConversionError(
            f"not a METER CLIP checkpoint: no {missing} (first keys: {list(state)[:5]}); the Swin variant is not covered"
        )
    if original is None or "num_heads" not in original:
        raise ConversionError(
            "the fusion's head count is in no tensor shape and the checkpoint has no hyper_parameters.config: pass "
            "the original sacred config JSON (with num_heads) as config"
        )
    conv = state["vit_model.visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    positions = state["vit_model.visual.positional_embedding"].shape[0] - 1
    grid = round(positions**0.5)
    if grid * grid != positions:
        raise ConversionError(f"the CLIP position table has {positions} patch rows, not a square grid")
    if width < CLIP_HEAD_WIDTH:
        raise ConversionError(f"CLIP width {width} < {CLIP_HEAD_WIDTH}: METER's heads = width // 64 would be 0")
    vision = dict(
        hidden_size=width,
        intermediate_size=state["vit_model.visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count(state, r"^vit_model\.visual\.transformer\.resblocks\.(\d+)\."),
        num_attention_heads=width // CLIP_HEAD_WIDTH,
        image_size=patch * grid,
        patch_size=patch,
        num_channels=conv.shape[1],
    )
    model_type, base = _text_base(original, text_config)
    words = state["text_transformer.embeddings.word_embeddings.weight"]
    text = {k: v for k, v in base.items() if k not in ("architectures", "transformers_version", "_name_or_path")}
    text.update(
        model_type=model_type,
        vocab_size=words.shape[0],
        hidden_size=words.shape[1],
        num_hidden_layers=_count(state, r"^text_transformer\.encoder\.layer\.(\d+)\."),
        intermediate_size=state["text_transformer.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["text_transformer.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["text_transformer.embeddings.token_type_embeddings.weight"].shape[0],
    )
    if text["hidden_size"] % int(text.get("num_attention_heads", 12)):
        raise ConversionError(
            f"the text encoder is {text['hidden_size']} wide, which {text.get('num_attention_heads', 12)} heads do "
            "not divide: pass the text encoder's config.json as text_config"
        )
    hidden = state["cross_modal_text_transform.weight"].shape[0]
    if int(original.get("hidden_size", hidden)) != hidden:
        raise ConversionError(f"the sacred config says hidden_size={original['hidden_size']}, the weights {hidden}")
    drop = float(original.get("drop_rate", 0.1))
    fusion = dict(
        hidden_size=hidden,
        num_hidden_layers=_count(state, r"^cross_modal_text_layers\.(\d+)\."),
        num_attention_heads=int(original["num_heads"]),
        intermediate_size=state["cross_modal_text_layers.0.intermediate.dense.weight"].shape[0],
        hidden_dropout_prob=drop,
        attention_probs_dropout_prob=drop,
    )
    losses = original.get("loss_names") or {}
    kwargs = dict(
        text_config=text,
        vision_config=vision,
        cross_modal_config=fusion,
        modality_type_vocab_size=state["token_type_embeddings.weight"].shape[0],
    )
    for name in ("mlm", "itm"):
        if float(losses.get(name, 0) or 0) > 0:
            kwargs[f"{name}_weight"] = float(losses[name])
    if task in CLASSIFIER:
        kwargs["num_labels"] = state[f"{CLASSIFIER[task]}.3.weight"].shape[0]
    return MeterConfig(**kwargs)


def _select_head(mapped: dict, task: str) -> dict:
    """Keep the backbone and the chosen head (its classifier renamed to `classifier.`); a `MeterModel` has no
    `meter.` prefix."""
    if task == "base":
        return {k[len("meter.") :]: v for k, v in mapped.items() if k.startswith("meter.")}
    keep = {"pretraining": ("mlm_score.", "itm_score."), "retrieval": ("rank_output.", "itm_score.")}
    selected = {}
    for key, value in mapped.items():
        if key.startswith("meter."):
            selected[key] = value
        elif task in CLASSIFIER and key.startswith(CLASSIFIER[task] + "."):
            selected["classifier." + key[len(CLASSIFIER[task]) + 1 :]] = value
        elif key.startswith(keep.get(task, ())):
            selected[key] = value
    return selected


def available_tasks(state: dict) -> list[str]:
    """The tasks whose head the state holds (retrieval also from a bare ITM head)."""
    tasks = [task for task, (_, key) in HEADS.items() if key in state]
    if "itm_score.fc.weight" in state and "pretraining" not in tasks:
        tasks.append("pretraining")
    if "itm_score.fc.weight" in state and "retrieval" not in tasks:
        tasks.append("retrieval")
    return tasks


def convert(checkpoint, config=None, task=None, text_config=None, **options):
    """Original METER `.ckpt` -> the hf_vlp METER model of its head (module docstring).

    config: the original sacred config as JSON (optional: the checkpoint's `hyper_parameters.config` is used).
    task: None (from the heads, in `HEADS` order), or one of "vqa", "nlvr2", "entailment", "retrieval",
        "pretraining", "base".
    text_config: the text encoder's config.json (or its folder); default roberta-base's.
    """
    import hf_vlp.modeling.meter as meter

    check_options(convert, options)
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be None or one of {TASKS}, got {task!r}")
    state, original = read_checkpoint(checkpoint, config)
    tasks = available_tasks(state)
    if task is None:
        task = tasks[0] if tasks else "base"
    elif task != "base" and task not in tasks:
        raise ConversionError(f"{checkpoint} has no {task} head; its heads: {tasks or 'none'}")
    hf_config = config_from_state(state, original, text_config, task)
    mapped, _dropped = KEY_MAP.apply(_split_in_proj(state))
    if task == "retrieval" and "rank_output.weight" not in mapped:  # METER's irtr starts from the ITM "match" row
        mapped["rank_output.weight"] = mapped["itm_score.weight"][1:2].clone()
        mapped["rank_output.bias"] = mapped["itm_score.bias"][1:2].clone()
    model_class = meter.MeterModel if task == "base" else getattr(meter, HEADS[task][0])
    model = model_class(hf_config)
    allow_missing = ()
    if task == "pretraining":  # a pretraining file trained without one objective lacks that head
        heads = ("mlm_score", "itm_score")
        allow_missing = tuple(f"^{h}\\." for h in heads if not any(k.startswith(h + ".") for k in mapped))
    if task == "retrieval" and "itm_score.weight" not in mapped:
        allow_missing = (r"^itm_score\.",)
    return load_mapped_state(model, _select_head(mapped, task), allow_missing=allow_missing).eval()


def build_processor(checkpoint, config=None, tokenizer=None):
    """`MeterProcessor` as METER preprocesses at the checkpoint's `image_size` (`clip` val transform) and
    `max_text_len`; `tokenizer`: the text encoder's tokenizer folder (roberta-base's; not in the checkpoint). Without
    it there is no processor to save (None)."""
    from transformers import AutoTokenizer

    from hf_vlp.modeling.meter import MeterImageProcessor, MeterProcessor

    if tokenizer is None:
        return None
    _, original = read_checkpoint(checkpoint, config)
    size = int((original or {}).get("image_size", 288))
    max_length = int((original or {}).get("max_text_len", 40))
    image_processor = MeterImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    text = AutoTokenizer.from_pretrained(str(tokenizer), model_max_length=max_length)
    return MeterProcessor(image_processor=image_processor, tokenizer=text, max_text_len=max_length)


# ------------------------------------------------------------------------------------------------------------------
# --verify: recompute shared/fixtures/meter/outputs.safetensors and finetune_heads/outputs.safetensors (README there)
# ------------------------------------------------------------------------------------------------------------------

# output name -> the task whose head computes it (backbone outputs need none)
HEAD_OUTPUTS = {
    "itm_logits": "pretraining or retrieval",
    "mlm_logits": "pretraining",
    "mlm_text_feats": "pretraining",
    "vqa_logits": "vqa",
    "nlvr2_logits": "nlvr2",
    "snli_logits": "entailment",
    "irtr_scores": "retrieval",
}


def _backbone(model, ids, masks, pixels, image_token_type_idx=1):
    meter = model if type(model).__name__ == "MeterModel" else model.meter
    return meter(input_ids=ids, attention_mask=masks, pixel_values=pixels, image_token_type_idx=image_token_type_idx)


def _feats(out, suffix=""):
    return {
        f"text_feats{suffix}": out.text_hidden_state,
        f"image_feats{suffix}": out.visual_hidden_state,
        f"cls_feats{suffix}": out.pooler_output,
    }


def _head_outputs(model, pooled, prefix=""):
    """Head outputs of one fused pair's pooled features (`cls_feats`)."""
    name = type(model).__name__
    if name == "MeterForPreTraining":
        return {"itm_logits": model.itm_score(pooled)}
    if name == "MeterForVisualQuestionAnswering":
        return {"vqa_logits": model.classifier(pooled)}
    if name == "MeterForVisualEntailment":
        return {"snli_logits": model.classifier(pooled)}
    if name == "MeterForImageTextRetrieval":
        return {"itm_logits": model.itm_score(pooled), "irtr_scores": model.rank_output(pooled)[:, 0]}
    return {}


def fixture_outputs(model, fixture_dir):
    from safetensors import safe_open
    from safetensors.torch import load_file

    fixture_dir = Path(fixture_dir)
    inputs = load_file(fixture_dir / "inputs.safetensors")
    ids, masks = inputs["text_ids"], inputs["text_masks"]
    meter = model if type(model).__name__ == "MeterModel" else model.meter
    outputs = {}
    if "pixel_values" in inputs:  # the pretraining / VQA fixture
        pixels = inputs["pixel_values"]
        out = _backbone(model, ids, masks, pixels)
        outputs.update(_feats(out))
        outputs["cls_feats_text"], outputs["cls_feats_image"] = out.text_pooler_output, out.visual_pooler_output
        outputs["unimodal_text_feats"] = meter.text_model(input_ids=ids, attention_mask=masks).last_hidden_state
        vision = meter.vision_model(pixel_values=pixels).last_hidden_state
        outputs["unimodal_image_feats"] = meter.vision_model.post_layernorm(vision)
        outputs.update(_head_outputs(model, out.pooler_output))
        if type(model).__name__ == "MeterForPreTraining":  # compute_mlm: the masked text with the same image
            masked = model(input_ids=inputs["text_ids_mlm"], attention_mask=masks, pixel_values=pixels)
            outputs["mlm_logits"] = masked.mlm_logits
            outputs["mlm_text_feats"] = masked.text_hidden_state
    else:  # finetune_heads: an NLVR2 pair; image 0 (token type 1) also serves SNLI-VE, ITM and IRTR
        first = _backbone(model, ids, masks, inputs["pixel_values_0"], 1)
        outputs.update(_feats(first, "_img0"))
        outputs.update(_head_outputs(model, first.pooler_output))
        if meter.config.modality_type_vocab_size >= 3:
            second = _backbone(model, ids, masks, inputs["pixel_values_1"], 2)
            outputs.update(_feats(second, "_img1"))
            if type(model).__name__ == "MeterForVisualReasoning":
                pair = torch.stack([inputs["pixel_values_0"], inputs["pixel_values_1"]], dim=1)
                outputs["nlvr2_logits"] = model(input_ids=ids, attention_mask=masks, pixel_values=pair).logits
    with safe_open(fixture_dir / "outputs.safetensors", "pt") as reference:
        for name in reference.keys():
            if name not in outputs:
                task = HEAD_OUTPUTS.get(name.split(".")[0], "another")
                outputs[name] = Skipped(f"needs the {task} head: convert with task={task.split(' ')[0]!r}")
    return outputs
