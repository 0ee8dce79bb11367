"""Convert released ERNIE-ViL parameters (PaddlePaddle/ERNIE `ernie-vil`, Paddle Fluid 1.8) to hf_vlp — without Paddle.

A release archive (`model-ernie-vil-{base,large}-en.1.tar.gz`, VCR task-pretrained variants) extracts to a folder
with `vocab.txt`, the model config JSON (`ernie_vil_config.*.json`) and `params/`, a folder with one file per
variable in Paddle's tensor format (read by `conversion.paddle_format`, byte layout documented there). Pass the
extracted folder or its `params/` folder as `checkpoint`; the JSON is found next to `params/` or given as `config`.

Mapping (table `PARAM_TABLE`): Paddle `fc` weights are `[in, out]` and are transposed; embeddings and LayerNorm
scales/biases are copied. Co-attention block K: `encoder_colayer_K_multi_head_att_*` (queries on the text stream,
keys/values on the visual stream) -> `c_layer.K.text_attention`, `..._vl_multi_head_att_*` -> `visual_attention`.
Heads of the fine-tuning code (`ernie-vil/finetune.py`): VCR `<task_prefix>_fc` (`vcr_qa`, `vcr_qar`, ...; pick one
with `task_prefix` when a file holds several), VQA `vqa_fc_w_0/b_0`, `vqa_fc_w_1/b_1`, Flickr30k `match_fc`,
RefCOCO+ `cls_seq_label_vl_out_w/_b`. The pretraining heads are not in the released code; `mask_lm_trans_fc`,
`mask_lm_trans_layer_norm_*` and `mask_lm_out_fc.b_0` (the ERNIE text models' LM-head names) are mapped onto the
MLM head on the assumption that ERNIE-ViL kept them — unverified. Optimizer state of `save_persistables`
checkpoints (moments, beta powers, learning rate, loss scaling) is dropped; any other unknown name is an error
unless `ignore_unknown=True` (then the names are reported in a warning).

Without a head in the file and no `head=` the result is `ErnieVilModel`; `head="pretraining" | "vqa" | "vcr" |
"retrieval" | "refexp"` builds that class, freshly initialising a head the file lacks.
"""

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from hf_vlp.modeling.ernie_vil import (
    ErnieVilConfig,
    ErnieVilForImageTextRetrieval,
    ErnieVilForMultipleChoice,
    ErnieVilForPreTraining,
    ErnieVilForReferringExpression,
    ErnieVilForVisualQuestionAnswering,
    ErnieVilModel,
)

from .common import ConversionError, KeyMap, Skipped, check_options, load_mapped_state, read_json
from .paddle_format import read_paddle_combined, read_paddle_params, write_paddle_params

# no shared fixture (tests dump one from the Paddle layout): the shared default, no relative term
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 0.0

# (Paddle name template, hf_vlp key template); {L} text layer, {V} visual layer, {K} co-attention block.
_BLOCK = [
    ("multi_head_att_query_fc.w_0", "attention.self.query.weight"),
    ("multi_head_att_query_fc.b_0", "attention.self.query.bias"),
    ("multi_head_att_key_fc.w_0", "attention.self.key.weight"),
    ("multi_head_att_key_fc.b_0", "attention.self.key.bias"),
    ("multi_head_att_value_fc.w_0", "attention.self.value.weight"),
    ("multi_head_att_value_fc.b_0", "attention.self.value.bias"),
    ("multi_head_att_output_fc.w_0", "attention.output.dense.weight"),
    ("multi_head_att_output_fc.b_0", "attention.output.dense.bias"),
    ("post_att_layer_norm_scale", "attention.output.LayerNorm.weight"),
    ("post_att_layer_norm_bias", "attention.output.LayerNorm.bias"),
    ("ffn_fc_0.w_0", "intermediate.dense.weight"),
    ("ffn_fc_0.b_0", "intermediate.dense.bias"),
    ("ffn_fc_1.w_0", "output.dense.weight"),
    ("ffn_fc_1.b_0", "output.dense.bias"),
    ("post_ffn_layer_norm_scale", "output.LayerNorm.weight"),
    ("post_ffn_layer_norm_bias", "output.LayerNorm.bias"),
]
# co-attention block: text queries `multi_head_att_*` / visual queries `vl_multi_head_att_*`, then each stream's FFN
_CO = [
    (prefix + paddle, f"{stream}_{ours}")
    for stream, prefix in (("text", ""), ("visual", "vl_"))
    for paddle, ours in _BLOCK
]

PARAM_TABLE = (
    [
        ("word_embedding", "ernie_vil.embeddings.word_embeddings.weight"),
        ("pos_embedding", "ernie_vil.embeddings.position_embeddings.weight"),
        ("sent_embedding", "ernie_vil.embeddings.token_type_embeddings.weight"),
        ("pre_encoder_layer_norm_scale", "ernie_vil.embeddings.LayerNorm.weight"),
        ("pre_encoder_layer_norm_bias", "ernie_vil.embeddings.LayerNorm.bias"),
        ("image_emb.w_0", "ernie_vil.v_embeddings.image_embeddings.weight"),
        ("image_emb.b_0", "ernie_vil.v_embeddings.image_embeddings.bias"),
        ("image_loc.w_0", "ernie_vil.v_embeddings.image_location_embeddings.weight"),
        ("image_loc.b_0", "ernie_vil.v_embeddings.image_location_embeddings.bias"),
        ("vl_pre_encoder_layer_norm_scale", "ernie_vil.v_embeddings.LayerNorm.weight"),
        ("vl_pre_encoder_layer_norm_bias", "ernie_vil.v_embeddings.LayerNorm.bias"),
        ("pooled_fc_text.w_0", "ernie_vil.t_pooler.dense.weight"),
        ("pooled_fc_text.b_0", "ernie_vil.t_pooler.dense.bias"),
        ("pooled_fc_image.w_0", "ernie_vil.v_pooler.dense.weight"),
        ("pooled_fc_image.b_0", "ernie_vil.v_pooler.dense.bias"),
    ]
    + [(f"encoder_layer_{{L}}_{p}", f"ernie_vil.encoder.layer.{{L}}.{h}") for p, h in _BLOCK]
    + [(f"encoder_vlayer_{{V}}_{p}", f"ernie_vil.encoder.v_layer.{{V}}.{h}") for p, h in _BLOCK]
    + [(f"encoder_colayer_{{K}}_{p}", f"ernie_vil.encoder.c_layer.{{K}}.{h}") for p, h in _CO]
    + [
        # fine-tuning heads (ernie-vil/finetune.py)
        ("vqa_fc_w_0", "vqa_classifier.0.weight"),
        ("vqa_fc_b_0", "vqa_classifier.0.bias"),
        ("vqa_fc_w_1", "vqa_classifier.3.weight"),
        ("vqa_fc_b_1", "vqa_classifier.3.bias"),
        ("match_fc.w_0", "pair_scorer.weight"),
        ("match_fc.b_0", "pair_scorer.bias"),
        ("cls_seq_label_vl_out_w", "region_scorer.weight"),
        ("cls_seq_label_vl_out_b", "region_scorer.bias"),
        ("{P}_fc.w_0", "pair_scorer.weight"),  # VCR: {P} = task_prefix (vcr, vcr_qa, vcr_qar)
        ("{P}_fc.b_0", "pair_scorer.bias"),
        # ERNIE's LM-head names (assumed for ERNIE-ViL pretraining; unverified)
        ("mask_lm_trans_fc.w_0", "mlm_head.transform.dense.weight"),
        ("mask_lm_trans_fc.b_0", "mlm_head.transform.dense.bias"),
        ("mask_lm_trans_layer_norm_scale", "mlm_head.transform.LayerNorm.weight"),
        ("mask_lm_trans_layer_norm_bias", "mlm_head.transform.LayerNorm.bias"),
        ("mask_lm_out_fc.b_0", "mlm_head.decoder.bias"),
    ]
)

# Paddle fc weights ([in, out]) to transpose
FC_WEIGHT = re.compile(r"(\.w_\d+|_w_\d+|_out_w)$")
OPTIMIZER_STATE = [
    (r"_moment[12]_\d+$", "Adam moment (optimizer state of a save_persistables checkpoint)"),
    (r"_beta[12]_pow_acc_\d+$", "Adam beta power (optimizer state)"),
    (r"^learning_rate_\d+$", "learning-rate variable (optimizer state)"),
    (r"@LR_DECAY_COUNTER@", "learning-rate schedule counter"),
    (r"^(loss_scaling|num_good_steps|num_bad_steps)_\d+$", "AMP loss-scaling state"),
    (r"^tmp_\d+$", "temporary variable"),
]
PLACEHOLDERS = {"L": r"\d+", "V": r"\d+", "K": r"\d+", "P": r"vcr\w*"}

HEAD_CLASSES = {
    "pretraining": ErnieVilForPreTraining,
    "vqa": ErnieVilForVisualQuestionAnswering,
    "vcr": ErnieVilForMultipleChoice,
    "retrieval": ErnieVilForImageTextRetrieval,
    "refexp": ErnieVilForReferringExpression,
}


def _template_regex(template):
    """A name template with {L}/{V}/{K}/{P} placeholders -> an anchored regex with named groups."""
    pattern = re.escape(template)
    for name, value in PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{value})")
    return "^" + pattern + "$"


def _key_map():
    renames = []
    for paddle, ours in PARAM_TABLE:
        replacement = ours
        for name in PLACEHOLDERS:
            replacement = replacement.replace("{" + name + "}", rf"\g<{name}>")
        renames.append((_template_regex(paddle), replacement))
    return KeyMap(renames=renames, drops=OPTIMIZER_STATE)


KEY_MAP = _key_map()


def _head_of(names):
    if "vqa_fc_w_0" in names:
        return "vqa"
    if "match_fc.w_0" in names:
        return "retrieval"
    if "cls_seq_label_vl_out_w" in names:
        return "refexp"
    if any(re.match(r"^vcr\w*_fc\.w_0$", n) for n in names):
        return "vcr"
    if "mask_lm_trans_fc.w_0" in names:
        return "pretraining"
    return None


def _find_params(checkpoint):
    """The `params/` folder (or a combined parameter file) and the config JSON next to it, from an extracted archive,
    the params folder or the combined file."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_file():  # a combined file (`save_params(filename=...)`), `__model__` next to it
        configs = sorted(checkpoint.parent.glob("*.json")) or sorted(checkpoint.parent.parent.glob("*.json"))
        configs = [c for c in configs if "config" in c.name] or configs
        return checkpoint, configs[0] if len(configs) == 1 else None
    if not checkpoint.is_dir():
        raise ConversionError(f"{checkpoint} does not exist: give the extracted release folder or its params/ folder")
    params = checkpoint / "params" if (checkpoint / "params").is_dir() else checkpoint
    configs = sorted(params.parent.glob("*.json")) if params != checkpoint else sorted(checkpoint.glob("*.json"))
    configs = [c for c in configs if "config" in c.name] or configs
    return params, configs[0] if len(configs) == 1 else None


ORIGINAL_KEYS = (
    "hidden_size num_hidden_layers num_attention_heads v_hidden_size v_num_attention_heads v_intermediate_size "
    "co_hidden_size co_num_attention_heads co_intermediate_size vocab_size class_size class_attr_size "
    "max_position_embeddings sent_type_vocab_size task_type_vocab_size hidden_act hidden_dropout_prob "
    "attention_probs_dropout_prob v_biattention_id t_biattention_id initializer_range"
).split()


def config_from_original(original: dict | None, params: dict, **overrides) -> ErnieVilConfig:
    """ErnieVilConfig from the original JSON (None = ERNIE-ViL base defaults) checked against the tensor shapes."""
    original = dict(original or {})
    unknown = sorted(set(original) - set(ORIGINAL_KEYS))
    if unknown:
        warnings.warn(f"ERNIE-ViL config keys not read by the original model code, ignored: {unknown}", stacklevel=3)
    kwargs = {k: original[k] for k in ORIGINAL_KEYS if k in original}
    if kwargs.get("num_hidden_layers") is not None and "t_biattention_id" in kwargs:
        if kwargs["num_hidden_layers"] != kwargs["t_biattention_id"][-1] + 1:
            raise ConversionError(
                f"config num_hidden_layers={kwargs['num_hidden_layers']} but the original code builds "
                f"t_biattention_id[-1] + 1 = {kwargs['t_biattention_id'][-1] + 1} text layers"
            )
    shapes = {
        "vocab_size": ("word_embedding", 0),
        "hidden_size": ("word_embedding", 1),
        "max_position_embeddings": ("pos_embedding", 0),
        "sent_type_vocab_size": ("sent_embedding", 0),
        "v_feature_size": ("image_emb.w_0", 0),
        "v_hidden_size": ("image_emb.w_0", 1),
        "intermediate_size": ("encoder_layer_0_ffn_fc_0.w_0", 1),
        "v_intermediate_size": ("encoder_vlayer_0_ffn_fc_0.w_0", 1),
        "co_hidden_size": ("encoder_colayer_0_multi_head_att_query_fc.w_0", 1),
        "vqa_hidden_size": ("vqa_fc_w_0", 1),
        "num_labels": ("vqa_fc_w_1", 1),
    }
    for name, (key, dim) in shapes.items():
        if key in params:
            size = params[key].shape[dim]
            if name in original and original[name] != size:
                raise ConversionError(f"config {name}={original[name]} but {key} has shape {tuple(params[key].shape)}")
            kwargs[name] = size
    counts = {}
    for name, pattern in (
        ("text", r"^encoder_layer_(\d+)_"),
        ("visual", r"^encoder_vlayer_(\d+)_"),
        ("co", r"^encoder_colayer_(\d+)_"),
    ):
        indices = {int(m.group(1)) for m in (re.match(pattern, n) for n in params) if m}
        counts[name] = 1 + max(indices, default=-1)
    if not original:  # no JSON: the released base (or large, by width) layout
        reference = ErnieVilConfig.large() if kwargs.get("hidden_size") == 1024 else ErnieVilConfig()
        for name in (
            "num_attention_heads",
            "v_num_attention_heads",
            "co_num_attention_heads",
            "v_biattention_id",
            "t_biattention_id",
        ):
            kwargs.setdefault(name, getattr(reference, name))
    t_ids = kwargs.get("t_biattention_id", ErnieVilConfig().t_biattention_id)
    v_ids = kwargs.get("v_biattention_id", ErnieVilConfig().v_biattention_id)
    if counts["co"] and (
        len(t_ids) != counts["co"] or t_ids[-1] + 1 != counts["text"] or v_ids[-1] + 1 != counts["visual"]
    ):
        raise ConversionError(
            f"the parameters hold {counts['text']} text / {counts['visual']} visual layers and {counts['co']} co-attention "
            f"blocks, which t_biattention_id={t_ids}, v_biattention_id={v_ids} do not describe: pass the original config JSON"
        )
    kwargs.update(overrides)
    try:
        return ErnieVilConfig(**kwargs)
    except ValueError as error:
        raise ConversionError(f"invalid ERNIE-ViL config: {error}") from error


def _flag(value):
    """`hf-vlp convert --option name=value` passes strings: "true" / "false" -> bool."""
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ConversionError(f"expected true or false, got {value!r}")
        return value.lower() in ("true", "1")
    return value


def convert(checkpoint, config=None, head=None, task_prefix=None, ignore_unknown=False, **options):
    """Released ERNIE-ViL parameter folder -> hf_vlp model (see the module docstring)."""
    ignore_unknown = _flag(ignore_unknown)
    check_options(convert, options)
    params_dir, found_config = _find_params(checkpoint)
    try:
        params = read_paddle_combined(params_dir) if params_dir.is_file() else read_paddle_params(params_dir)
    except ValueError as error:
        raise ConversionError(str(error)) from error
    if "word_embedding" not in params:
        raise ConversionError(
            f"{params_dir} is not an ERNIE-ViL parameter folder: no 'word_embedding' (found {sorted(params)[:5]})"
        )
    config = config or found_config
    original = None if config is None else (config if isinstance(config, dict) else read_json(config))

    vcr_prefixes = sorted({m.group(1) for m in (re.match(r"^(vcr\w*)_fc\.[wb]_0$", n) for n in params) if m})
    if len(vcr_prefixes) > 1 or task_prefix is not None:
        if task_prefix not in vcr_prefixes:
            raise ConversionError(f"the file holds the VCR heads {vcr_prefixes}: choose one with task_prefix=")
        params = {
            n: v
            for n, v in params.items()
            if not re.match(r"^vcr\w*_fc\.[wb]_0$", n) or n.startswith(task_prefix + "_fc.")
        }

    state, unknown = {}, []
    for name, array in params.items():
        tensor = torch.from_numpy(np.ascontiguousarray(array)).float()
        state[name] = tensor.t().contiguous() if FC_WEIGHT.search(name) and tensor.dim() == 2 else tensor
    known = [p for p, _ in KEY_MAP.renames] + [p for p, _ in KEY_MAP.drops]
    unknown = [n for n in state if not any(re.search(p, n) for p in known)]
    if unknown:
        if not ignore_unknown:
            raise ConversionError(
                f"{len(unknown)} parameter(s) are neither mapped nor known optimizer state: {unknown[:20]} "
                "(pretraining heads of unknown layout? pass ignore_unknown=True to convert the rest)"
            )
        warnings.warn(f"ignored {len(unknown)} unknown ERNIE-ViL parameters: {unknown}", stacklevel=2)
        state = {n: v for n, v in state.items() if n not in unknown}
    mapped, _dropped = KEY_MAP.apply(state)

    hf_config = config_from_original(original, params)
    head = head or _head_of(params)
    if head is not None and head not in HEAD_CLASSES:
        raise ConversionError(f"`head` must be one of {sorted(HEAD_CLASSES)}, got {head!r}")
    model_class = HEAD_CLASSES[head] if head else ErnieVilModel
    model = model_class(hf_config)
    if model_class is ErnieVilModel:
        mapped = {k[len("ernie_vil.") :]: v for k, v in mapped.items() if k.startswith("ernie_vil.")}
    expected = set(model.state_dict())
    extra = sorted(set(mapped) - expected)
    if extra and head is not None:
        raise ConversionError(f"parameters that {model_class.__name__} has no place for: {extra[:10]}")
    head_params = (r"^(mlm_head|region_head|itm_head|vqa_classifier|pair_scorer|region_scorer)\.",)
    try:
        return load_mapped_state(model, mapped, allow_missing=head_params).eval()
    except RuntimeError as error:
        raise ConversionError(f"parameters do not fit {model_class.__name__}: {error}") from error


# heads of ErnieVilForPreTraining whose Paddle names were never released: `to_paddle_params` leaves them out
NO_PADDLE_NAME = (r"^region_head\.", r"^itm_head\.")


def to_paddle_params(model, task_prefix="vcr") -> dict:
    """The inverse mapping: an hf_vlp ERNIE-ViL model -> {Paddle variable name: numpy array} (fc weights
    transposed back to [in, out]); the heads in `NO_PADDLE_NAME` are left out. Used to test the converter on
    files in the exact release layout."""
    vcr = isinstance(model, ErnieVilForMultipleChoice)
    inverse = [
        (_template_regex(ours), paddle.replace("{P}", task_prefix))
        for paddle, ours in PARAM_TABLE
        if ("{P}" in paddle) == vcr or "pair_scorer" not in ours
    ]
    state = model.state_dict()
    if isinstance(model, ErnieVilModel):
        state = {"ernie_vil." + k: v for k, v in state.items()}
    out = {}
    for key, value in state.items():
        if key == "mlm_head.decoder.weight" or any(re.match(p, key) for p in NO_PADDLE_NAME):
            continue  # the decoder is tied to `word_embedding`
        for pattern, paddle in inverse:
            match = re.match(pattern, key)
            if match:
                name = paddle
                for placeholder, number in match.groupdict().items():
                    name = name.replace("{" + placeholder + "}", number)
                array = value.detach().cpu().numpy()
                out[name] = array.T.copy() if FC_WEIGHT.search(name) and array.ndim == 2 else array
                break
        else:
            raise ConversionError(f"no Paddle name for {key}")
    return out


def save_paddle_params(model, directory, task_prefix="vcr"):
    """Write `model` as a Paddle parameter folder (one tensor file per variable)."""
    write_paddle_params(directory, to_paddle_params(model, task_prefix))


# ------------------------------------------------------------------------------------------------------------------
# --verify: outputs dumped from the original Paddle program (no public fixture exists; docs/ernie_vil.md)
# ------------------------------------------------------------------------------------------------------------------


def fixture_outputs(model, fixture_dir):
    """`inputs.safetensors` with the original feed names (`src_ids`, `pos_ids`, `sent_ids`, `input_mask`,
    `image_embeddings`, `image_loc`, `image_mask`; trailing 1-dims allowed) -> `enc_out`, `enc_vl_out`,
    `pooled_text`, `pooled_image`, `fused`, as a user dumps them from `ErnieVilModel` (docs/ernie_vil.md)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    fixture_dir = Path(fixture_dir)
    inputs = load_file(fixture_dir / "inputs.safetensors")
    squeeze = lambda t: t[..., 0] if t.dim() == 3 and t.shape[-1] == 1 else t  # noqa: E731
    batch = dict(
        input_ids=squeeze(inputs["src_ids"]).long(),
        position_ids=squeeze(inputs["pos_ids"]).long(),
        token_type_ids=squeeze(inputs["sent_ids"]).long(),
        attention_mask=squeeze(inputs["input_mask"]).long(),
        visual_feats=inputs["image_embeddings"],
        visual_pos=inputs["image_loc"][..., :4],
        visual_attention_mask=squeeze(inputs["image_mask"]).long(),
    )
    encoded = model.base_model(**batch) if not isinstance(model, ErnieVilModel) else model(**batch)
    outputs = {
        "enc_out": encoded.text_hidden_state,
        "enc_vl_out": encoded.visual_hidden_state,
        "pooled_text": encoded.text_pooler_output,
        "pooled_image": encoded.visual_pooler_output,
        "fused": encoded.pooler_output,
    }
    with safe_open(fixture_dir / "outputs.safetensors", "pt") as reference:
        for name in reference.keys():
            if name not in outputs:
                outputs[name] = Skipped("not an output hf_vlp knows for ERNIE-ViL")
            elif name in ("enc_out", "enc_vl_out"):
                # the original also masks padded query rows; compare real positions only
                mask = batch["attention_mask" if name == "enc_out" else "visual_attention_mask"].bool()
                expected = reference.get_tensor(name)
                outputs[name] = torch.where(mask[..., None], outputs[name], expected)
    return outputs


__all__ = [
    "KEY_MAP",
    "PARAM_TABLE",
    "config_from_original",
    "convert",
    "fixture_outputs",
    "save_paddle_params",
    "to_paddle_params",
]
