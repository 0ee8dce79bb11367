"""Convert original BLIP checkpoints (github.com/salesforce/BLIP) to hf_vlp's BLIP classes (transformers' weight names).

Accepted files: the `.pth` files the original scripts save, `{"model": state_dict, "config": run config, ...}`:
  * pretraining (`model_base.pth`, `model_base_capfilt_large.pth`, `model_large.pth`; `BLIP_Pretrain`)
      -> `BlipForPreTraining` (momentum encoders, queues and `temp` kept);
  * VQA (`model_base_vqa_capfilt_large.pth`, `model_vqa.pth`; `BLIP_VQA`) -> `BlipForQuestionAnswering`;
  * captioning (`model_base_caption_capfilt_large.pth`, `model_*_caption.pth`; `BLIP_Decoder`)
      -> `BlipForConditionalGeneration`;
  * retrieval / ITM (`model_base_retrieval_{coco,flickr}.pth`, `BLIP_Retrieval`; `BLIP_ITM` states)
      -> `BlipForImageTextRetrieval` (momentum copies and queues dropped unless `momentum=True`).
The layout is read from the keys. `task=` converts into another head the way the original loaders do (e.g. a
pretraining file into a captioner: `blip_decoder(pretrained=model_base.pth)`), dropping the parts that head lacks.
  * NLVR2 (`model_base_nlvr.pth`; `BLIP_NLVR`: a text encoder whose cross-attentions attend to each image separately,
      `crossattention.self0/self1`, `output.dense0/dense1`, `merge_layer` from layer 6, and `cls_head`)
      -> `BlipForVisualReasoning`. `task="nlvr2"` from a pretraining file does what `blip_nlvr(pretrained=...)`
      does: both twins start as copies of the pretrained cross-attention, `merge_layer` and `cls_head` fresh.

Sizes come from the tensor shapes; attention heads (not in the shapes) from `config` = the original med/BERT config
JSON (`configs/med_config.json`, `configs/bert_config.json`), else hidden/64 (BERT-base, ViT-B: 12, ViT-L: 16).
The image size comes from `image_size=`, else the checkpoint's run config, else its position table; a position
table of another size is resized bicubically with the class token kept (`models/vit.py` `interpolate_pos_embed`).

Input mapping (original -> hf_vlp): images through `transform_test` (square bicubic resize, CLIP mean/std) =
`pixel_values`; texts as tokenized (`[CLS] ... [SEP]`): the heads put `[ENC]` / `[DEC]` at position 0 themselves
(`BlipForImageTextRetrieval.forward` keeps the ids as given, as `BLIP_ITM` does).
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from hf_vlp.modeling.blip import (
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForPreTraining,
    BlipForQuestionAnswering,
    BlipForVisualReasoning,
    blip_config,
    pretraining_setting,
    with_first_token,
)

from .common import ConversionError, KeyMap, Skipped, check_options, load_mapped_state, read_json

# shared/fixtures/blip/README.md: transformers' Blip classes match the original bit for bit; 1e-4
# is the shared default, and no relative term is suggested there
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 0.0

TASKS = {
    "pretraining": BlipForPreTraining,
    "vqa": BlipForQuestionAnswering,
    "captioning": BlipForConditionalGeneration,
    "retrieval": BlipForImageTextRetrieval,
    "nlvr2": BlipForVisualReasoning,
}

# BLIP_Pretrain.forward tokenizes captions with padding='max_length', max_length=30
PRETRAIN_MAX_LENGTH = 30

# which original parts each target keeps
PARTS = {
    "vision": r"^visual_encoder\.",
    "text_encoder": r"^text_encoder\.",
    "text_decoder": r"^text_decoder\.",
    "itc_itm": r"^(vision_proj|text_proj|itm_head)\.|^temp$",
    "nlvr2_head": r"^cls_head\.",
    "momentum": r"^(visual_encoder_m|vision_proj_m|text_encoder_m|text_proj_m)\.|^(image_queue|text_queue|idx_queue|queue_ptr|ptr_queue)$",
}
KEEPS = {
    "pretraining": {"vision", "text_encoder", "text_decoder", "itc_itm", "momentum"},
    "vqa": {"vision", "text_encoder", "text_decoder"},
    "captioning": {"vision", "text_decoder"},
    "retrieval": {"vision", "text_encoder", "itc_itm"},
    "nlvr2": {"vision", "text_encoder", "nlvr2_head"},
}
DROP_REASONS = {
    "vision": "the target head has no vision encoder",
    "text_encoder": "the target head has no text encoder (captioning uses the decoder only)",
    "text_decoder": "the target head has no text decoder (retrieval / ITM)",
    "itc_itm": "ITC projections, ITM head and temperature are only used by pretraining and retrieval",
    "momentum": "momentum encoders and feature queues are only used for training with momentum distillation",
    "nlvr2_head": "the NLVR2 classifier belongs to BlipForVisualReasoning only",
}

VISION_RENAMES = [
    (r"\.cls_token$", ".embeddings.class_embedding"),
    (r"\.pos_embed$", ".embeddings.position_embedding"),
    (r"\.patch_embed\.proj\.", ".embeddings.patch_embedding."),
    (r"\.blocks\.(\d+)\.norm1\.", r".encoder.layers.\1.layer_norm1."),
    (r"\.blocks\.(\d+)\.norm2\.", r".encoder.layers.\1.layer_norm2."),
    (r"\.blocks\.(\d+)\.attn\.qkv\.", r".encoder.layers.\1.self_attn.qkv."),  # fused q;k;v in both
    (r"\.blocks\.(\d+)\.attn\.proj\.", r".encoder.layers.\1.self_attn.projection."),
    (r"\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.", r".encoder.layers.\1.mlp.\2."),
    (r"\.norm\.", ".post_layernorm."),
]


def _renames():
    """(pattern, replacement) of every original key BLIP's code creates (`renames` of the KeyMap)."""
    renames = []
    for prefix, target in (("visual_encoder", "vision_model"), ("visual_encoder_m", "vision_model_m")):
        for pattern, replacement in VISION_RENAMES:
            renames.append((rf"^{prefix}{pattern}", f"{target}{replacement}"))
    renames += [
        (r"^(text_encoder|text_encoder_m)\.(embeddings|encoder\.layer\.\d+)\.", r"\1.\2."),
        (r"^text_decoder\.(bert\.embeddings|bert\.encoder\.layer\.\d+|cls\.predictions)\.", r"text_decoder.\1."),
        (r"^(vision_proj|text_proj|itm_head|vision_proj_m|text_proj_m)\.(weight|bias)$", r"\1.\2"),
        (r"^cls_head\.(\d+)\.(weight|bias)$", r"cls_head.\1.\2"),
        (r"^(temp|image_queue|text_queue|idx_queue|queue_ptr)$", r"\1"),
        (r"^ptr_queue$", "queue_ptr"),  # BLIP_Retrieval's name for the queue pointer
    ]
    return renames


def key_map(task: str) -> KeyMap:
    """The declarative map for converting into `task`: the parts the target lacks are dropped with a reason."""
    drops = [(r"\.position_ids$", "constant buffer (arange), rebuilt by transformers")]
    drops += [(PARTS[part], DROP_REASONS[part]) for part in PARTS if part not in KEEPS[task]]
    return KeyMap(renames=_renames(), drops=drops)


# ------------------------------------------------------------------------------------------------------------------
# reading the checkpoint
# ------------------------------------------------------------------------------------------------------------------


def load_original(path):
    """(state dict, run config dict) of an original `.pth`; fp16 tensors are upcast to fp32."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConversionError(f"{path} cannot be loaded with weights_only=True: {error}") from error
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        state, run_config = checkpoint["model"], checkpoint.get("config") or {}
    elif isinstance(checkpoint, dict) and any(torch.is_tensor(v) for v in checkpoint.values()):
        state, run_config = checkpoint, {}
    else:
        keys = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ConversionError(f"{path}: expected the original BLIP layout {{'model': state_dict, ...}}, got {keys}")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    state = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()}
    return state, dict(run_config) if isinstance(run_config, dict) else {}


def detect_task(state: dict) -> str:
    """The original model class, from the keys."""
    if "visual_encoder.cls_token" not in state or "visual_encoder.pos_embed" not in state:
        raise ConversionError(
            "not an original BLIP checkpoint: no 'visual_encoder.cls_token' / 'visual_encoder.pos_embed' "
            f"(first keys: {list(state)[:5]})"
        )
    if any(k.startswith("cls_head.") for k in state):
        return "nlvr2"
    has = lambda prefix: any(k.startswith(prefix) for k in state)  # noqa: E731
    if has("text_decoder.") and has("vision_proj."):
        return "pretraining"
    if has("text_decoder.") and has("text_encoder."):
        return "vqa"
    if has("text_decoder."):
        return "captioning"
    if has("itm_head.") and has("text_encoder."):
        return "retrieval"
    raise ConversionError("BLIP checkpoint with a vision encoder but neither a text decoder nor an ITM head")


def twin_cross_attention(state: dict) -> dict:
    """A pretraining state as `blip_nlvr`'s loader makes it: every text-encoder cross-attention duplicated into the
    two twins (`self` -> `self0`, `self1`; `output.dense` -> `dense0`, `dense1`). `merge_layer` and `cls_head` stay
    missing (freshly initialised, as the original); the decoder and ITC / ITM parts are dropped by the key map."""
    twinned = {}
    for key, value in state.items():
        if key.startswith("text_encoder.") and ".crossattention.self." in key:
            twinned[key.replace(".self.", ".self0.")] = value
            twinned[key.replace(".self.", ".self1.")] = value.clone()
        elif key.startswith("text_encoder.") and ".crossattention.output.dense." in key:
            twinned[key.replace(".dense.", ".dense0.")] = value
            twinned[key.replace(".dense.", ".dense1.")] = value.clone()
        else:
            twinned[key] = value
    return twinned


def _heads(width, given, what):
    if given:
        return int(given)
    if width % 64 == 0:
        return width // 64  # BERT-base / ViT-B: 12, ViT-L: 16
    raise ConversionError(f"cannot infer the number of {what} attention heads for width {width}: pass it in the config")


def config_from_original(state, run_config=None, med_config=None, image_size=None, momentum=None, task="pretraining"):
    """A BlipConfig for `state`: shapes from the tensors, heads/eps/dropout from the med config JSON, image size from
    `image_size` / the run config / the position table, ITC settings from the run config."""
    run_config, med_config = run_config or {}, med_config or {}
    cls_token = state["visual_encoder.cls_token"]
    patch = state["visual_encoder.patch_embed.proj.weight"].shape[-1]
    vision_width = cls_token.shape[-1]
    grid = int(round((state["visual_encoder.pos_embed"].shape[1] - 1) ** 0.5))
    tiny_vit = run_config.get("_fixture_tiny_vit") or {}  # the fixture's record of its patched create_vit
    vision = dict(
        hidden_size=vision_width,
        num_hidden_layers=1 + max(int(k.split(".")[2]) for k in state if k.startswith("visual_encoder.blocks.")),
        intermediate_size=state["visual_encoder.blocks.0.mlp.fc1.weight"].shape[0],
        num_attention_heads=_heads(vision_width, tiny_vit.get("heads"), "vision"),
        patch_size=patch,
        image_size=int(image_size or run_config.get("image_size") or grid * patch),
    )
    text_prefix = "text_encoder." if "text_encoder.embeddings.word_embeddings.weight" in state else "text_decoder.bert."
    words = state[f"{text_prefix}embeddings.word_embeddings.weight"]
    layer_ids = {
        int(k.split(".")[3 if text_prefix == "text_encoder." else 4])
        for k in state
        if k.startswith(f"{text_prefix}encoder.layer.")
    }
    text = dict(
        vocab_size=words.shape[0],
        hidden_size=words.shape[1],
        num_hidden_layers=1 + max(layer_ids),
        intermediate_size=state[f"{text_prefix}encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state[f"{text_prefix}embeddings.position_embeddings.weight"].shape[0],
        num_attention_heads=_heads(words.shape[1], med_config.get("num_attention_heads"), "text"),
    )
    for name in ("layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob", "hidden_act"):
        if name in med_config:
            text[name] = med_config[name]
    embed_dim = (
        state["vision_proj.weight"].shape[0] if "vision_proj.weight" in state else int(run_config.get("embed_dim", 256))
    )
    extra = {}
    if "image_queue" in state:
        extra["queue_size"] = state["image_queue"].shape[1]
    if "alpha" in run_config:
        extra["alpha"] = float(run_config["alpha"])
    if "temp" in state:
        extra["itc_temperature"] = float(state["temp"])
    if task == "pretraining":
        extra["use_momentum_distillation"] = (
            "visual_encoder_m.cls_token" in state if momentum is None else bool(momentum)
        )
    elif task == "retrieval":
        extra["use_momentum_distillation"] = bool(momentum)
    return blip_config(image_size=vision["image_size"], embed_dim=embed_dim, vision=vision, text=text, **extra)


def resize_position_embedding(position_embedding: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(1, 1 + g*g, D) -> (1, 1 + num_patches, D): bicubic on the patch grid, class token kept (`interpolate_pos_embed`)."""
    old = int(round((position_embedding.shape[1] - 1) ** 0.5))
    new = int(round(num_patches**0.5))
    if old == new:
        return position_embedding
    width = position_embedding.shape[-1]
    grid = position_embedding[:, 1:].reshape(1, old, old, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([position_embedding[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


def _check_ties(model, mapped):
    """Weights the hf_vlp model ties (LM head, encoder/decoder sharing) must be equal in the checkpoint."""
    for target, source in model.all_tied_weights_keys.items():
        if target in mapped and source in mapped and not torch.equal(mapped[target], mapped[source]):
            raise ConversionError(
                f"the checkpoint stores different values for {target} and {source}, which {type(model).__name__} ties"
            )


def _load_into(model_class, config, mapped):
    model = model_class(config)
    position_key = "vision_model.embeddings.position_embedding"
    for key in (position_key, "vision_model_m.embeddings.position_embedding"):
        if key in mapped:
            mapped[key] = resize_position_embedding(mapped[key], model.vision_model.embeddings.num_patches)
    _check_ties(model, mapped)
    allow_missing = ()
    if model_class is BlipForVisualReasoning and "cls_head.0.weight" not in mapped:  # from a pretraining file
        allow_missing = (r"^cls_head\.", r"\.crossattention\.output\.merge_layer\.")
    if model_class is BlipForPreTraining or model_class is BlipForImageTextRetrieval:
        # BLIP_Pretrain has no idx_queue (nothing to match by image id): the fresh one says "no id" (-100)
        allow_missing = (
            (r"^idx_queue$",)
            if "image_queue" in mapped
            else (r"^(idx_queue|image_queue|text_queue|queue_ptr|temp)$", r"_m\.")
        )
    load_mapped_state(model, mapped, allow_missing=allow_missing)
    if getattr(model, "use_momentum_distillation", False) and "vision_model_m.embeddings.class_embedding" not in mapped:
        model.copy_params_to_momentum()
    return model.eval()


def convert(checkpoint, config=None, task=None, image_size=None, momentum=None, **options):
    """Original BLIP `.pth` -> hf_vlp BLIP model (eval mode).

    config: the original med/BERT config JSON (path or dict) for the attention heads, eps and dropout.
    task: "pretraining", "vqa", "captioning" or "retrieval"; default: the checkpoint's own layout.
    image_size: input resolution of the converted model (position table resized when it differs).
    momentum: keep momentum encoders + queues (default: yes for pretraining, no for retrieval).
    """
    check_options(convert, options)
    state, run_config = load_original(checkpoint)
    detected = detect_task(state)
    task = task or detected
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {sorted(TASKS)}, got {task!r}")
    needed = {
        "pretraining": ("text_encoder.", "text_decoder.", "vision_proj."),
        "vqa": ("text_encoder.", "text_decoder."),
        "captioning": ("text_decoder.",),
        "retrieval": ("text_encoder.", "itm_head."),
        "nlvr2": ("text_encoder.",),
    }[task]
    missing = [p for p in needed if not any(k.startswith(p) for k in state)]
    if missing:
        raise ConversionError(f"a {detected} checkpoint cannot become a {task} model: it has no {missing} weights")
    if (detected == "nlvr2") != (task == "nlvr2") and not (task == "nlvr2" and detected == "pretraining"):
        raise ConversionError(
            f"a {detected} checkpoint cannot become a {task} model: NLVR2's text encoder has two cross-attentions "
            "per layer (convert an NLVR2 file as nlvr2, or a pretraining file into nlvr2)"
        )
    if task == "nlvr2" and detected != "nlvr2":
        state = twin_cross_attention(state)
    if config is None and run_config.get("_fixture_med_config"):
        candidate = Path(checkpoint).parent / run_config["_fixture_med_config"]
        config = candidate if candidate.exists() else None
    med_config = config if isinstance(config, dict) or config is None else read_json(config)
    if task == "retrieval" and momentum and "visual_encoder_m.cls_token" not in state:
        raise ConversionError("momentum=True needs a checkpoint with momentum encoders (visual_encoder_m.*)")
    hf_config = config_from_original(state, run_config, med_config, image_size, momentum, task)
    if task == "nlvr2":
        merged = [int(k.split(".")[3]) for k in state if ".crossattention.output.merge_layer.weight" in k]
        # BLIP_NLVR merges from layer 6 on (`layer_num >= 6`); a file converted from pretraining has no merge layers
        hf_config.nlvr2_merge_from_layer = min(merged) if merged else 6
    keys = key_map(task)
    if task == "retrieval" and hf_config.use_momentum_distillation:
        keys = KeyMap(renames=keys.renames, drops=[d for d in keys.drops if d[0] != PARTS["momentum"]])
    if task == "pretraining" and not hf_config.use_momentum_distillation:
        keys = KeyMap(renames=keys.renames, drops=keys.drops + [(PARTS["momentum"], DROP_REASONS["momentum"])])
    mapped, _dropped = keys.apply(state)
    return _load_into(TASKS[task], hf_config, mapped)


def derive(model, task, image_size=None):
    """Another head built from a converted model's weights (e.g. the captioner `blip_decoder(pretrained=...)` makes
    from a pretraining file), with the position table resized to `image_size`."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    if image_size is not None:
        config.vision_config.image_size = int(image_size)
    keep = {
        "vqa": r"^(vision_model|text_encoder|text_decoder)\.",
        "captioning": r"^(vision_model|text_decoder)\.",
        "retrieval": r"^((vision_model|text_encoder|vision_proj|text_proj|itm_head)\.|temp$)",
        "pretraining": r".",
    }[task]
    import re

    mapped = {k: v.clone() for k, v in model.state_dict().items() if re.search(keep, k)}
    if task == "retrieval":
        config.use_momentum_distillation = False
    return _load_into(TASKS[task], config, mapped)


# ------------------------------------------------------------------------------------------------------------------
# --verify: recompute the outputs of shared/fixtures/blip (README there) with the converted model
# ------------------------------------------------------------------------------------------------------------------


def _pretraining_outputs(model, inputs):
    out = {}
    pixels, ids, mask = inputs["pretrain.pixel_values"], inputs["pretrain.input_ids"], inputs["pretrain.attention_mask"]
    config = model.config
    image_embeds, text_embeds, image_feat, text_feat = model._itc_features(pixels, ids, mask)
    out.update(
        {
            "pretrain.image_embeds": image_embeds,
            "pretrain.text_embeds": text_embeds,
            "pretrain.image_feat": image_feat,
            "pretrain.text_feat": text_feat,
            "pretrain.temp": model.temp,
            "pretrain.sim_i2t": image_feat @ text_feat.T / model.temp,
            "pretrain.sim_t2i": text_feat @ image_feat.T / model.temp,
        }
    )
    if model.use_momentum_distillation:
        image_embeds_m = model.vision_model_m(pixel_values=pixels).last_hidden_state
        out["pretrain.image_embeds_m"] = image_embeds_m
        out["pretrain.image_feat_m"] = F.normalize(model.vision_proj_m(image_embeds_m[:, 0]), dim=-1)
        text_m = model.text_encoder_m(input_ids=ids, attention_mask=mask).last_hidden_state
        out["pretrain.text_feat_m"] = F.normalize(model.text_proj_m(text_m[:, 0]), dim=-1)
    enc_ids = with_first_token(ids, pretraining_setting(config, "enc_token_id"))
    fused = model.text_encoder(
        input_ids=enc_ids, attention_mask=mask, encoder_hidden_states=image_embeds
    ).last_hidden_state
    out["pretrain.multimodal_embeds"] = fused
    out["pretrain.itm_logits"] = model.itm_head(fused[:, 0])
    negative = inputs["pretrain.itm_neg_image_index"]
    fused_neg = model.text_encoder(input_ids=enc_ids, attention_mask=mask, encoder_hidden_states=image_embeds[negative])
    out["pretrain.itm_logits_neg"] = model.itm_head(fused_neg.last_hidden_state[:, 0])
    labels = inputs["pretrain.dec_labels"]
    dec_ids = with_first_token(ids, config.text_config.bos_token_id)
    decoded = model.text_decoder(
        input_ids=dec_ids, attention_mask=mask, encoder_hidden_states=image_embeds, labels=labels
    )
    out["pretrain.decoder_logits"], out["pretrain.decoder_loss"] = decoded.logits, decoded.loss
    out["pretrain.decoder_loss_per_sample"] = model.text_decoder(
        input_ids=dec_ids, attention_mask=mask, encoder_hidden_states=image_embeds, labels=labels, reduction="none"
    ).loss

    # the complete training forward (EMA step, queues, hard negatives, enqueue) on a copy, with the original's
    # max_length=30 padding and RNG seed
    if model.use_momentum_distillation:
        import copy

        trainee = copy.deepcopy(model).eval()
        padding = PRETRAIN_MAX_LENGTH - ids.shape[1]
        padded_ids, padded_mask = F.pad(ids, (0, max(padding, 0))), F.pad(mask, (0, max(padding, 0)))
        torch.manual_seed(7)
        result = trainee(
            pixels, padded_ids, padded_mask, alpha=float(pretraining_setting(config, "alpha")), update_momentum=True
        )
        out["pretrain.forward.loss_ita"] = result.itc_loss
        out["pretrain.forward.loss_itm"] = result.itm_loss
        out["pretrain.forward.loss_lm"] = result.lm_loss
        out["pretrain.forward.image_queue_after"] = trainee.image_queue
        out["pretrain.forward.queue_ptr_after"] = trainee.queue_ptr

    # models the original loaders build from the pretraining file
    retrieval = derive(model, "retrieval")
    itm_ids, itm_mask = inputs["itm_model.input_ids"], inputs["itm_model.attention_mask"]
    out["itm_model.itm_logits"] = retrieval(input_ids=itm_ids, pixel_values=pixels, attention_mask=itm_mask).itm_score
    out["itm_model.itc_sim"] = retrieval(
        input_ids=itm_ids, pixel_values=pixels, attention_mask=itm_mask, use_itm_head=False
    ).itm_score
    caption_pixels = inputs["vqa.pixel_values"]  # the captioner runs at the VQA image size
    captioner = derive(model, "captioning", image_size=caption_pixels.shape[-1])
    out["caption.pos_embed_after_load"] = captioner.vision_model.embeddings.position_embedding
    result = captioner(
        pixel_values=caption_pixels,
        input_ids=inputs["caption.input_ids"],
        attention_mask=inputs["caption.attention_mask"],
        labels=inputs["caption.labels"],
    )
    out["caption.image_embeds"], out["caption.decoder_logits"], out["caption.loss"] = (
        result.image_embeds,
        result.logits,
        result.loss,
    )
    return out


def _vqa_outputs(model, inputs):
    out = {}
    pixels, question, question_mask = (
        inputs["vqa.pixel_values"],
        inputs["vqa.question_ids"],
        inputs["vqa.question_mask"],
    )
    result = model(
        input_ids=question,
        pixel_values=pixels,
        attention_mask=question_mask,
        labels=inputs["vqa.answer_labels"],
        decoder_attention_mask=inputs["vqa.answer_mask"],
        answer_question_index=inputs["vqa.answer_question_index"],
        answer_weights=inputs["vqa.weights"],
    )
    out["vqa.image_embeds"], out["vqa.question_states"] = result.image_embeds, result.question_embeds
    out["vqa.answer_logits"], out["vqa.answer_loss_per_answer"] = result.logits, result.answer_losses
    out["vqa.train_loss"] = result.loss
    ranking = model.rank_answers(
        question,
        pixels,
        inputs["vqa.candidate_ids"],
        inputs["vqa.candidate_mask"],
        attention_mask=question_mask,
        k=int(inputs["vqa.k_test"]),
    )
    out["vqa.rank_first_token_logits"], out["vqa.rank_max_ids"] = ranking.first_token_logits, ranking.answer_index
    return out


def fixture_outputs(model, fixture_dir):
    from safetensors import safe_open
    from safetensors.torch import load_file

    inputs = load_file(Path(fixture_dir) / "inputs.safetensors")
    outputs = {}
    if isinstance(model, BlipForPreTraining):
        outputs.update(_pretraining_outputs(model, inputs))
    if isinstance(model, BlipForQuestionAnswering):
        outputs.update(_vqa_outputs(model, inputs))
    with safe_open(Path(fixture_dir) / "outputs.safetensors", "pt") as reference:
        for name in reference.keys():
            if name not in outputs:
                source = "VQA" if name.startswith("vqa.") else "pretraining"
                outputs[name] = Skipped(f"computed from the {source} checkpoint")
    return outputs
