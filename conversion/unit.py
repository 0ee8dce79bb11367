"""Convert MMF UniT checkpoints (github.com/facebookresearch/mmf, `mmf/models/unit`) to
`hf_vlp.modeling.unit.UnitForMultiTaskLearning`.

Accepted files: MMF's checkpoint `{'model': state_dict, 'config': {...}, ...}` or a bare state dict (MMF's loader
reads `ckpt.get('model', ckpt)`), with the legacy `detr_model.` prefix renamed to `unit_base_model.` as
`UniT.format_state_key` does. Loading is safe: `weights_only=True`, else the restricted unpickler of the ViLT
converter (no foreign code runs; an OmegaConf config then comes back opaque and `config=` must give it as JSON).

Config: MMF's model config (`model_config.unit`, or the `unit` dict itself) from `config=` (a JSON file / dict) or
the checkpoint's `config`. Sizes come from the tensor shapes (widths, layer and block counts, queries, classes,
labels, task-table rows, BERT sizes, the no-object weight); what no shape holds (attention heads, task indices, loss
types, `keep_only_bert_cls`, DC5 dilation, pre-norm, loss weights) from the config. Datasets are those of
`base_args.num_queries`, as MMF builds them.

Key layout (MMF -> hf_vlp): `unit_base_model.backbone.0.body.` -> `unit.backbone.`, `unit_base_model.input_proj.`
-> `unit.input_proj.`, `unit_base_model.transformer.encoder.` -> `unit.encoder.`, `transformer.{enc2dec_proj,
pos_embed_proj,task_embeddings_enc}` -> `unit.*`, shared decoder `transformer.decoder.` -> `unit.decoder.` (its
duplicates under `transformer.decoders.<type>.<ds>.` are checked identical and dropped), per-dataset decoders
`transformer.decoders.<type>.<ds>.` -> `unit.decoders.<ds>.`, `query_embeds.<type>.<ds>` -> `unit.query_embeds.<ds>`,
`bert_model.module.` -> `unit.text_encoder.` (the alias `bert_model.embeddings.`, `position_ids` and the unused
pooler dropped), `task_embeddings_lang` -> `unit.task_embeddings_lang`, `bert_projection` / `bert_pos_projection` ->
`unit.text_projection` / `unit.text_position_projection`, `classifiers.<type>.<ds>.` -> `classifiers.<ds>.`,
`class_embeds`, `bbox_embeds`, `det_losses` unchanged.

Inputs (fixture -> model): `<ds>.image` -> `pixel_values`; `pixel_mask` = 1 inside `<ds>.image_sizes` (the original
built the padding mask from the unpadded image list); `input_ids`, `input_mask` -> `attention_mask`, `segment_ids` ->
`token_type_ids`; detection targets `labels` -> `class_labels`.
"""

import re
from pathlib import Path

import torch

from hf_vlp.modeling.unit import UnitConfig, UnitForMultiTaskLearning

from .common import ConversionError, KeyMap, Skipped, check_options, load_mapped_state, read_json
from .vilt import load_lightning_checkpoint

VERIFY_ATOL = 1e-4
VERIFY_RTOL = 0.0
TASK_TYPES = ("detection", "vl", "glue")

KEY_MAP = KeyMap(
    renames=[
        (r"^unit_base_model\.backbone\.0\.body\.", "unit.backbone."),
        (r"^unit_base_model\.input_proj\.", "unit.input_proj."),
        (r"^unit_base_model\.transformer\.encoder\.", "unit.encoder."),
        (r"^unit_base_model\.transformer\.(enc2dec_proj|pos_embed_proj|task_embeddings_enc)\.", r"unit.\1."),
        (r"^unit_base_model\.transformer\.task_embeddings_lang\.", "unit.task_embeddings_lang."),
        (r"^unit_base_model\.transformer\.decoder\.", "unit.decoder."),
        (r"^unit_base_model\.transformer\.decoders\.(?:detection|vl|glue)\.(\w+)\.", r"unit.decoders.\1."),
        (r"^unit_base_model\.query_embeds\.(?:detection|vl|glue)\.(\w+)\.", r"unit.query_embeds.\1."),
        (r"^bert_model\.module\.", "unit.text_encoder."),
        (r"^task_embeddings_lang\.", "unit.task_embeddings_lang."),
        (r"^bert_projection\.", "unit.text_projection."),
        (r"^bert_pos_projection\.", "unit.text_position_projection."),
        (r"^classifiers\.(?:vl|glue)\.(\w+)\.", r"classifiers.\1."),
        (r"^(class_embeds|bbox_embeds|det_losses)\.", r"\1."),
    ],
    drops=[
        (r"^bert_model\.embeddings\.", "alias of bert_model.module.embeddings (checked identical)"),
        (r"\.embeddings\.position_ids$", "buffer of positions 0..max-1 (transformers <= 4.30 stored it)"),
        (r"^bert_model\.module\.pooler\.", "BERT pooler: UniT never uses it"),
        (r"\.num_batches_tracked$", "batch-norm step counter; the backbone's batch norm is frozen"),
    ],
)


def _unit_config(original) -> dict:
    """MMF's `model_config.unit` dict from whatever wraps it."""
    if original is None:
        return {}
    if not isinstance(original, dict):
        raise ConversionError(f"the MMF config must be a dict, got {type(original).__name__}")
    for path in (("model_config", "unit"), ("config", "model_config", "unit"), ("unit",)):
        node = original
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            return node
    return original if "base_args" in original else {}


def load_state_and_config(checkpoint, config=None):
    """(state dict with MMF key names, MMF `model_config.unit` dict) from a checkpoint path or an in-memory dict."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_lightning_checkpoint(checkpoint)
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{checkpoint}: expected an MMF checkpoint dict, got {type(ckpt).__name__}")
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise ConversionError(f"{checkpoint}: no state dict of tensors (top-level keys {sorted(ckpt)[:10]})")
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    state = {k.replace("detr_model.", "unit_base_model."): v for k, v in state.items()}  # UniT.format_state_key
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if config is not None:
        original = _unit_config(config if isinstance(config, dict) else read_json(config))
    else:
        original = _unit_config(ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None)
    if not original.get("base_args"):
        raise ConversionError(
            f"{checkpoint}: no readable MMF model config (`model_config.unit` with `base_args`): pass config= the "
            "run's config as JSON (attention heads, task indices and loss types are in no tensor shape)"
        )
    return state, original


def _count(state, pattern):
    """1 + the largest index captured by `pattern` among the keys (0 if none)."""
    found = [int(m.group(1)) for k in state if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


def _backbone_sizes(state, base_args):
    prefix = "unit_base_model.backbone.0.body."
    if prefix + "conv1.weight" not in state:
        raise ConversionError(f"not a UniT checkpoint: no '{prefix}conv1.weight'")
    layers = [_count(state, rf"^{re.escape(prefix)}layer{i}\.(\d+)\.") for i in range(1, 5)]
    if min(layers) < 1:
        raise ConversionError(f"the backbone lacks a stage: blocks per stage {layers}")
    return dict(
        backbone_block="bottleneck" if prefix + "layer1.0.conv3.weight" in state else "basic",
        backbone_layers=layers,
        backbone_stem_channels=state[prefix + "conv1.weight"].shape[0],
        backbone_base_channels=state[prefix + "layer1.0.conv1.weight"].shape[0],
        backbone_dilation=bool(base_args.get("dilation", False)),
        # MMF / DETR: with a backbone learning rate, the stem and layer1 stay frozen; without one, everything
        backbone_frozen_stages=1 if float(base_args.get("lr_backbone", 1e-5)) > 0 else 4,
    )


def _text_config(state, base_args):
    prefix = "bert_model.module."
    if prefix + "embeddings.word_embeddings.weight" not in state:
        raise ConversionError(f"not a UniT checkpoint: no '{prefix}embeddings.word_embeddings.weight'")
    from transformers import BertConfig

    given = {k: v for k, v in dict(base_args.get("bert_config") or {}).items() if k != "bert_model_name"}
    vocab, hidden = state[prefix + "embeddings.word_embeddings.weight"].shape
    sizes = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=_count(state, rf"^{re.escape(prefix)}encoder\.layer\.(\d+)\."),
        intermediate_size=state[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state[prefix + "embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state[prefix + "embeddings.token_type_embeddings.weight"].shape[0],
    )
    for name, value in sizes.items():
        if name in given and int(given[name]) != value and name != "type_vocab_size":
            raise ConversionError(f"bert_config.{name}={given[name]} but the checkpoint's tensors say {value}")
    text = {**BertConfig().to_dict(), **given, **sizes}
    if "num_attention_heads" not in given and hidden != 768:
        raise ConversionError(
            f"BERT hidden size {hidden} is not bert-base's: give bert_config.num_attention_heads in the config"
        )
    keep = set(BertConfig().to_dict())
    return {k: v for k, v in text.items() if k in keep and k not in ("architectures", "transformers_version")}


def _tasks(state, original):
    base_args = original["base_args"]
    heads = original.get("heads") or {}
    keep_cls = original.get("keep_only_bert_cls") or {}
    tasks = {}
    for kind, datasets in dict(base_args.get("num_queries") or {}).items():
        if kind not in TASK_TYPES:
            raise ConversionError(f"num_queries has an unknown task type {kind!r} (MMF knows {TASK_TYPES})")
        for name in datasets:
            query = f"unit_base_model.query_embeds.{kind}.{name}.weight"
            if query not in state:
                raise ConversionError(f"num_queries lists {kind}/{name} but the checkpoint has no {query}")
            head = dict((heads.get(kind) or {}).get(name) or {})
            if "task_idx" not in head:
                raise ConversionError(f"heads.{kind}.{name}.task_idx is missing from the config")
            spec = dict(type=kind, task_index=int(head["task_idx"]), num_queries=state[query].shape[0])
            if kind == "detection":
                spec["num_classes"] = state[f"class_embeds.{name}.weight"].shape[0] - 1
                spec["use_attributes"] = f"det_losses.{name}.attribute_head.cls_embed.weight" in state
            else:
                spec["num_labels"] = state[f"classifiers.{kind}.{name}.1.weight"].shape[0]
                spec["loss"] = head.get("loss_type", "cross_entropy")
                if name not in (keep_cls.get(kind) or {}):
                    raise ConversionError(f"keep_only_bert_cls.{kind}.{name} is missing from the config")
                spec["keep_only_cls"] = bool(keep_cls[kind][name])
                spec["scale_loss_by_num_labels"] = name == "vqa2"  # MMF: `if dataset_name == "vqa2": loss *= ...`
            tasks[name] = spec
    if not tasks:
        raise ConversionError("the config's base_args.num_queries lists no dataset")
    return tasks


def config_from_state(state, original) -> UnitConfig:
    base_args = original["base_args"]
    if base_args.get("position_embedding", "sine") != "sine":
        raise ConversionError(f"position_embedding={base_args['position_embedding']!r}: only 'sine' is supported")
    if not base_args.get("pass_pos_and_query", True):
        raise ConversionError("pass_pos_and_query=false is not supported (MMF itself refuses it for text tasks)")
    if base_args.get("use_bcl", False):
        raise ConversionError("use_bcl=true (balanced class loss) is not supported")
    encoder_hidden = state["unit_base_model.input_proj.weight"].shape[0]
    shared = any(k.startswith("unit_base_model.transformer.decoder.") for k in state)
    decoder_prefix = (
        "unit_base_model.transformer.decoder."
        if shared
        else next(
            m.group(0) for k in state if (m := re.match(r"^unit_base_model\.transformer\.decoders\.\w+\.\w+\.", k))
        )
    )
    decoder_hidden = state[decoder_prefix + "norm.weight"].shape[0]
    enc_table = state.get("unit_base_model.transformer.task_embeddings_enc.weight")
    lang_table = state.get(
        "task_embeddings_lang.weight", state.get("unit_base_model.transformer.task_embeddings_lang.weight")
    )
    det_buffers = [v for k, v in state.items() if re.match(r"^det_losses\.\w+\.empty_weight$", k)]
    eos_coef = float(det_buffers[0][-1]) if det_buffers else float(base_args.get("eos_coef", 0.1))
    attribute_weights = [v for k, v in state.items() if k.endswith("attribute_head.attr_linear2.weight")]
    values = dict(
        text_config=_text_config(state, base_args),
        tasks=_tasks(state, original),
        **_backbone_sizes(state, base_args),
        encoder_hidden_size=encoder_hidden,
        decoder_hidden_size=decoder_hidden,
        num_encoder_layers=_count(state, r"^unit_base_model\.transformer\.encoder\.layers\.(\d+)\."),
        num_decoder_layers=_count(state, rf"^{re.escape(decoder_prefix)}layers\.(\d+)\."),
        num_heads=int(base_args.get("nheads", 8)),
        ffn_size=state["unit_base_model.transformer.encoder.layers.0.linear1.weight"].shape[0],
        dropout=float(base_args.get("dropout", 0.1)),
        pre_norm=bool(base_args.get("pre_norm", False)),
        residual_in_encoder=bool(base_args.get("residual_in_encoder", True)),
        share_decoders=shared,
        use_task_embedding_in_img_encoder=enc_table is not None,
        use_task_embedding_in_lang_encoder=lang_table is not None,
        max_task_num=lang_table.shape[0] if lang_table is not None else int(original.get("max_task_num", 256)),
        max_image_task_num=enc_table.shape[0] if enc_table is not None else 256,
        set_cost_class=float(base_args.get("set_cost_class", 1.0)),
        set_cost_bbox=float(base_args.get("set_cost_bbox", 5.0)),
        set_cost_giou=float(base_args.get("set_cost_giou", 2.0)),
        bbox_loss_coef=float(base_args.get("bbox_loss_coef", 5.0)),
        giou_loss_coef=float(base_args.get("giou_loss_coef", 2.0)),
        attribute_loss_coef=float(base_args.get("attr_loss_coef", 1.0)),
        eos_coef=eos_coef,
        aux_loss=bool(base_args.get("aux_loss", True)),
        detection_loss_weight=float(original.get("detection_loss_weight", 1.0)),
        num_attributes=attribute_weights[0].shape[0]
        if attribute_weights
        else int(base_args.get("attribute_class_num", 401)),
        max_attributes=int(base_args.get("max_attribute_num", 16)),
        predict_attributes=bool(original.get("predict_attributes", False)),
        loss_on_all_hs=bool(original.get("loss_on_all_hs", False)),
    )
    if bool(base_args.get("share_decoders", shared)) != shared:
        raise ConversionError(
            f"share_decoders={base_args['share_decoders']} but the checkpoint's decoders say {shared}"
        )
    try:
        return UnitConfig(**values)
    except ValueError as error:
        raise ConversionError(f"the checkpoint's sizes make no valid UnitConfig: {error}") from None


def _check_duplicates(state, shared):
    """The copies MMF saves (shared decoder under every dataset, BERT embedding alias) must equal their original."""
    for key, value in state.items():
        if shared and (m := re.match(r"^unit_base_model\.transformer\.decoders\.\w+\.\w+\.(.*)$", key)):
            original = "unit_base_model.transformer.decoder." + m.group(1)
        elif key.startswith("bert_model.embeddings."):
            original = "bert_model.module." + key[len("bert_model.") :]
        else:
            continue
        if original not in state or not torch.equal(state[original], value):
            raise ConversionError(f"{key} is not an identical copy of {original}: the checkpoint is inconsistent")


def convert(checkpoint, config=None, **options):
    """MMF UniT checkpoint -> `UnitForMultiTaskLearning` (eval mode). config: MMF's model config as JSON (file or
    dict; the checkpoint's own `config` otherwise)."""
    check_options(convert, options)
    state, original = load_state_and_config(checkpoint, config)
    hf_config = config_from_state(state, original)
    _check_duplicates(state, hf_config.share_decoders)
    drops = list(KEY_MAP.drops)
    if hf_config.share_decoders:
        drops.append((r"^unit_base_model\.transformer\.decoders\.", "duplicate of the shared decoder (checked)"))
    mapped, _ = KeyMap(renames=KEY_MAP.renames, drops=drops).apply(state)
    model = UnitForMultiTaskLearning(hf_config)
    return load_mapped_state(model, mapped).eval()


def _targets(inputs, prefix, batch):
    targets = []
    for index in range(batch):
        key = f"{prefix}.targets.{index}."
        target = {"class_labels": inputs[key + "labels"], "boxes": inputs[key + "boxes"]}
        if key + "attributes" in inputs:
            target["attributes"] = inputs[key + "attributes"]
        targets.append(target)
    return targets


def fixture_outputs(model, fixture_dir):
    from safetensors import safe_open
    from safetensors.torch import load_file

    inputs = load_file(Path(fixture_dir) / "inputs.safetensors")
    outputs = {}
    datasets = sorted({name.split(".")[0] for name in inputs})
    for name in datasets:
        if name not in model.config.tasks:
            continue
        spec = model.config.tasks[name]
        kwargs = {"task": name}
        if spec["type"] in ("detection", "vl"):
            image = inputs[f"{name}.image"]
            mask = None  # without sizes, every image fills the padded frame
            if f"{name}.image_sizes" in inputs:
                mask = torch.zeros(image.shape[0], *image.shape[-2:], dtype=torch.long)
                for row, (height, width) in enumerate(inputs[f"{name}.image_sizes"].tolist()):
                    mask[row, :height, :width] = 1
            kwargs.update(pixel_values=image, pixel_mask=mask)
        if spec["type"] in ("vl", "glue"):
            kwargs.update(
                input_ids=inputs[f"{name}.input_ids"],
                attention_mask=inputs[f"{name}.input_mask"],
                token_type_ids=inputs[f"{name}.segment_ids"],
            )
        if spec["type"] == "detection":
            kwargs["labels"] = _targets(inputs, name, inputs[f"{name}.image"].shape[0])
        elif f"{name}.targets" in inputs:
            kwargs["labels"] = inputs[f"{name}.targets"]
        result = model(**kwargs)
        if spec["type"] == "detection":
            outputs[f"{name}.hidden_states"] = result.decoder_intermediate_hidden_states
            outputs[f"{name}.pred_logits"] = result.logits
            outputs[f"{name}.pred_boxes"] = result.pred_boxes
        else:
            outputs[f"{name}.scores"] = result.logits
        for loss_name, value in (result.loss_dict or {}).items():
            outputs[f"{name}.loss.{loss_name}"] = value
    with safe_open(Path(fixture_dir) / "outputs.safetensors", "pt") as reference:
        for key in reference.keys():
            if key.split(".")[0] not in model.config.tasks:
                outputs[key] = Skipped("dataset not in the converted model's config")
    return outputs


def build_processor(checkpoint, config=None, tokenizer=None):
    """UniT's image preprocessing at evaluation (DETR's): shorter side 800, longer side at most 1333, ImageNet
    mean / std, zero padding with a pixel mask. The text side is bert-base-uncased WordPiece, which the checkpoint
    does not carry: tokenize with that vocabulary (`tokenizer` is accepted for the CLI and not read)."""
    from hf_vlp.processing.cnn_images import CnnImageProcessor

    return CnnImageProcessor(shortest_edge=800, longest_edge=1333)
