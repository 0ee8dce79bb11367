"""Convert the original SOHO checkpoints (github.com/researchmm/soho) to hf_vlp's SOHO classes.

Accepted files: what the original's `commons.runner.save_checkpoint` writes, `torch.save({'meta': {...},
'state_dict': OrderedDict})` (the released `soho_res18_fp16_40-9441cdd3.pth` may also carry `optimizer` / `amp`
entries, which are never read), in two layouts:

* pretraining (`SOHOSingleStreamPre`): ResNet + `SimpleVDforPreGate` neck (visual dictionary, gate, `pos_line`,
  mask embedding) + `VLBertModel` + `MLM_MVM_ITM_head` + the tied `mask_l_fc` -> `SohoForPreTraining`;
* VQA (`SOHOSingleStreamVQA`): ResNet + `SimpleVDforVQA` neck (no dictionary) + `VLBertModel` +
  `SOHO_DownStream_VQA_head` -> `SohoForVisualQuestionAnswering`.

The file is read with `weights_only=True` (`common.load_checkpoint`): nothing in it is executed. Sizes come from the
tensors (vocabulary, widths, layer and block counts, dictionary size, answers); the optional `config` (the fixture's
`config.json`, `{"model": <mmcv model dict>}` or the model dict itself; JSON, never the original's Python config)
supplies what tensors cannot say: attention heads (default hidden_size / 64, BERT's head width), the ResNet's
`frozen_stages`, the dictionary's `decay` and `mask_prob`.
"""

import json
import re
from pathlib import Path

import torch

from hf_vlp.modeling.soho import SohoConfig, SohoForPreTraining, SohoForVisualQuestionAnswering, SohoModel

from ..common import ConversionError, KeyMap, Skipped, check_options, load_checkpoint, load_mapped_state

# shared/fixtures/soho/README.md: random weights, fp32 on CPU; the largest difference is ~1e-6 (last hidden state,
# losses), docs/soho.md; no relative term
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 0.0
TASKS = ("pretraining", "vqa", "base")

KEY_MAP = KeyMap(
    renames=[
        (r"^backbone\.", "soho.backbone."),
        (r"^neck\.conv\.conv\.", "soho.visual_embeddings.projection.conv."),
        (r"^neck\.conv\.bn\.", "soho.visual_embeddings.projection.norm."),
        (r"^neck\.ln\.", "soho.visual_embeddings.LayerNorm."),
        (r"^neck\.mask_emb\.", "soho.visual_embeddings.mask_embedding."),
        (r"^neck\.vq\.(embed|cluster_size|cluster_sum|embed_avg)$", r"soho.visual_embeddings.dictionary.\1"),
        (r"^neck\.gate_fc\.conv\.", "soho.visual_embeddings.gate.conv."),
        (r"^neck\.gate_fc\.bn\.", "soho.visual_embeddings.gate.norm."),
        (r"^neck\.pos_line\.", "soho.visual_embeddings.dictionary_projection."),
        (r"^language\.bert\.embeddings\.", "soho.embeddings."),
        (r"^language\.bert\.encoder\.layer\.", "soho.encoder.layer."),
        (r"^head\.match_class\.weight$", "itm_head.weight"),
        (r"^head\.vqa\.(0|3)\.", r"vqa_head.\1."),
    ],
    drops=[
        (r"^mask_l_fc\.weight$", "the MLM decoder is the word-embedding matrix (tied; the original stores both keys)"),
        (r"^language\.bert\.pooler\.", "the original never reads a pooler (ITM and VQA read the first token)"),
    ],
)

# what a head does not use, by task: dropped with the reason
_TASK_DROPS = {
    "vqa": [
        (
            r"^soho\.visual_embeddings\.(dictionary|dictionary_projection|gate|mask_embedding)\.",
            "the VQA model has no visual dictionary (the original's SimpleVDforVQA neck)",
        ),
        (r"^itm_head\.", "pretraining head"),
    ],
    "base": [(r"^(itm_head|vqa_head)\.", "task head")],
    "pretraining": [],
}


def load_original_state(path) -> dict:
    """The checkpoint's `state_dict`, read with `weights_only=True`. The mmcv `meta` entry holds plain values plus
    the `torch.__version__` string (a `TorchVersion`, a `str` subclass), which is the one class allowed besides
    tensors; `optimizer` / `amp` entries are skipped by the unwrapping."""
    with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
        return load_checkpoint(path)


def _model_dict(config):
    """The mmcv model dict from `config` (path or dict, `{"model": {...}}` or the model dict), or {}."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config {str(path)!r} does not exist")
        if path.suffix != ".json":
            raise ConversionError(
                f"config {path.name!r}: give the model settings as JSON (the original's Python config files are not "
                "executed); the fixture's config.json is the format"
            )
        config = json.loads(path.read_text())
    return config.get("model", config)


def _count(state, pattern):
    return len({m.group(1) for key in state if (m := re.match(pattern, key))})


def config_from_state(state: dict, model_dict: dict) -> SohoConfig:
    """A `SohoConfig` with every size read from the tensors, and what tensors cannot say from the model dict."""
    if "language.bert.embeddings.word_embeddings.weight" not in state:
        raise ConversionError("not a SOHO checkpoint: no 'language.bert.embeddings.word_embeddings.weight'")
    language = model_dict.get("language", {})
    backbone = model_dict.get("backbone", {})
    neck = model_dict.get("neck", {})
    words = state["language.bert.embeddings.word_embeddings.weight"]
    hidden = words.shape[1]
    bottleneck = any(k.startswith("backbone.layer1.0.conv3.") for k in state)
    stage_width = state["backbone.layer1.0.conv1.weight"].shape[0]
    values = dict(
        vocab_size=words.shape[0],
        hidden_size=hidden,
        num_hidden_layers=_count(state, r"language\.bert\.encoder\.layer\.(\d+)\."),
        num_attention_heads=language.get("num_attention_heads", max(hidden // 64, 1)),
        intermediate_size=state["language.bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["language.bert.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["language.bert.embeddings.token_type_embeddings.weight"].shape[0],
        layer_norm_eps=language.get("layer_norm_eps", 1e-12),
        hidden_act=language.get("hidden_act", "gelu"),
        pad_token_id=language.get("pad_token_id", 0),
        num_channels=state["backbone.conv1.weight"].shape[1],
        backbone_block="bottleneck" if bottleneck else "basic",
        backbone_layers=[_count(state, rf"backbone\.layer{i}\.(\d+)\.") for i in range(1, 5)],
        backbone_stem_channels=state["backbone.conv1.weight"].shape[0],
        # a bottleneck's first 1x1 conv is `planes` wide (groups 1, width 64), a basic block's first conv too
        backbone_base_channels=stage_width,
        backbone_frozen_stages=backbone.get("frozen_stages", 1),
        backbone_stride_in_1x1=backbone.get("style", "pytorch") == "caffe",
        dictionary_decay=neck.get("decay", 0.1),  # SOHO_Pre_VD's default when the config does not say
        visual_mask_prob=neck.get("mask_prob", 0.015),
    )
    if "neck.vq.embed" in state:
        values["num_visual_tokens"] = state["neck.vq.embed"].shape[0]
    elif "num_tokens" in neck:
        values["num_visual_tokens"] = neck["num_tokens"]
    if "head.vqa.3.weight" in state:
        values["num_labels"] = state["head.vqa.3.weight"].shape[0]
        values["vqa_hidden_multiplier"] = state["head.vqa.0.weight"].shape[0] // hidden
    if state["neck.conv.conv.weight"].shape[0] != hidden:
        raise ConversionError(
            f"the neck projects to {state['neck.conv.conv.weight'].shape[0]} channels but BERT is {hidden} wide"
        )
    return SohoConfig(**values, use_visual_dictionary="neck.vq.embed" in state)


def convert(checkpoint, config=None, task=None, **options):
    """Original SOHO checkpoint -> hf_vlp model.

    task: "pretraining" (`SohoForPreTraining`, needs the pretraining layout), "vqa" (`SohoForVisualQuestionAnswering`;
        from a pretraining checkpoint the dictionary is dropped and the answer head is newly initialised, the
        original's fine-tuning start) or "base" (`SohoModel`). Default: the checkpoint's own layout.
    config: the model settings as JSON (see the module docstring); optional.
    """
    check_options(convert, options)
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    state = load_original_state(checkpoint)
    hf_config = config_from_state(state, _model_dict(config))
    pretraining_layout = "neck.vq.embed" in state
    if task is None:
        task = "pretraining" if pretraining_layout else "vqa"
    if task == "pretraining" and not pretraining_layout:
        raise ConversionError(f"{checkpoint} has no visual dictionary (a VQA checkpoint): convert it with task='vqa'")
    mapped, _dropped = KEY_MAP.apply(state)
    for pattern, _reason in _TASK_DROPS[task]:
        mapped = {k: v for k, v in mapped.items() if not re.search(pattern, k)}
    if task == "pretraining":
        model = SohoForPreTraining(hf_config)
    elif task == "vqa":
        model = SohoForVisualQuestionAnswering(hf_config)
    else:
        mapped = {k[len("soho.") :]: v for k, v in mapped.items()}
        model = SohoModel(hf_config)
    allow_missing = (r"^vqa_head\.",) if task == "vqa" and pretraining_layout else ()
    return load_mapped_state(model, mapped, allow_missing=allow_missing).eval()


# ------------------------------------------------------------------------------------------------------------------
# --verify: recompute shared/fixtures/soho/<kind>/outputs.safetensors (README there)
# ------------------------------------------------------------------------------------------------------------------


def fixture_inputs(fixture_dir):
    """The fixture's inputs as hf_vlp keyword arguments: `pixel_mask` painted from each image's `img_shape`."""
    from safetensors.torch import load_file

    inputs = load_file(Path(fixture_dir) / "inputs.safetensors")
    pixel_values = inputs["img"]
    if "pad_shape" in inputs and int(inputs["pad_shape"][:, 0].max()) != pixel_values.shape[-2]:
        # the original's canvas side is max(pad_shape[0]); hf_vlp takes it from the batch's padded height
        raise ConversionError(
            f"{fixture_dir}: the largest pad_shape height {int(inputs['pad_shape'][:, 0].max())} is not the padded "
            f"height {pixel_values.shape[-2]} of `img`"
        )
    pixel_mask = torch.zeros(pixel_values.shape[0], *pixel_values.shape[-2:], dtype=torch.long)
    for index, (height, width, _) in enumerate(inputs["img_shape"].tolist()):
        pixel_mask[index, :height, :width] = 1
    return inputs, dict(
        input_ids=inputs["language_tokens"],
        attention_mask=inputs["language_attention"],
        pixel_values=pixel_values,
        pixel_mask=pixel_mask,
    )


def fixture_outputs(model, fixture_dir):
    import torch.nn.functional as F
    from safetensors import safe_open

    inputs, kwargs = fixture_inputs(fixture_dir)
    base = model if isinstance(model, SohoModel) else model.soho
    encoded = base(**kwargs)
    outputs = {
        "backbone_last": encoded.feature_map,
        "visual_tokens": encoded.visual_tokens,
        "visual_attention": encoded.visual_attention_mask,
        "last_hidden_state": encoded.last_hidden_state,
    }
    if isinstance(model, SohoForPreTraining):
        result = model(**kwargs, labels=inputs.get("mlm_labels"), itm_labels=inputs.get("itm_labels"))
        outputs.update(
            mlm_logits=result.mlm_logits,
            mvm_scores=result.mvm_scores,
            itm_logits=result.itm_logits,
            mvm_labels=result.mvm_labels,
            loss_mlm=result.mlm_loss,
            loss_mvm=result.mvm_loss,
            loss_itm=result.itm_loss,
        )
        if "itm_labels" in inputs:
            outputs["loss_itm_per_sample"] = F.cross_entropy(result.itm_logits, inputs["itm_labels"], reduction="none")
    elif isinstance(model, SohoForVisualQuestionAnswering):
        result = model(**kwargs, labels=inputs.get("vqa_labels"))
        outputs.update(vqa_logits=result.logits, loss_vqa=result.loss)
    with safe_open(Path(fixture_dir) / "outputs.safetensors", "pt") as reference:
        names = list(reference.keys())
    # a VQA model made from a pretraining checkpoint has the VQA neck (no dictionary), and the other way round
    if ("mvm_scores" in names) != (base.visual_embeddings.dictionary is not None):
        for name in ("visual_tokens", "last_hidden_state"):
            outputs[name] = Skipped("the fixture's neck differs from this model's (visual dictionary or not)")
    for name in names:
        if name not in outputs:
            outputs[name] = Skipped(f"an output of another head than {type(model).__name__}")
    return outputs


__all__ = ["KEY_MAP", "VERIFY_ATOL", "VERIFY_RTOL", "config_from_state", "convert", "fixture_inputs", "fixture_outputs"]
