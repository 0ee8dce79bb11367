"""Convert original ViLBERT checkpoints (facebookresearch/vilbert-multi-task, jiasenlu/vilbert_beta) to hf_vlp.

Accepted files (layouts in shared/fixtures/vilbert/README.md):
  * `pretrained_model.bin`: `BertForMultiModalPreTraining` state dict (Conceptual Captions pretraining)
    -> `VilbertForPreTraining`;
  * `multi_task_model.bin` (12-in-1) and `train_tasks.py` outputs `pytorch_model_<epoch>.bin`: `VILBertForVLTasks`
    state dict with task tokens -> `VilbertForMultiTask`, or one task's class with `head="vqa" | "gqa" |
    "retrieval" | "vcr" | "nlvr2" | "entailment" | "refexp"`;
  * `pytorch_ckpt_latest.tar` / `pytorch_ckpt_<epoch>.tar`: `{"model_state_dict": ...}` wrappers of the above.
Legacy (pre-1.6) pickles, `module.` prefixes and fp16 tensors are handled. Weight-normalised `vil_prediction.main.*`
heads of vilbert_beta are refused (a different head architecture); `drop_task_heads=True` converts their backbone.

`config`: the original JSON (`config/bert_base_6layer_6conect.json`, read like `BertConfig.from_json_file`: keys
absent from the JSON keep the original's constructor defaults). Without it, the released base configuration is used
(head counts and the connection schedule are not in the tensor shapes). `task_specific_tokens` is read from the
checkpoint (`bert.embeddings.task_embeddings.weight`), the region-head target and the answer counts from shapes.

Input mapping (original -> hf_vlp): `input_ids`, `token_type_ids`, `attention_mask` as they are; `image_feat` ->
`visual_feats`; `image_loc[..., :4]` -> `visual_pos` (the model recomputes the 5th entry, the normalized area);
`image_attention_mask` -> `visual_attention_mask`; `task_ids` as is; `co_attention_mask` has no effect in the
original and is not an input. Output conventions: the alignment head is stored with its rows reordered so that
`itm_logits[:, 1]` means "matches" (the original's index 0); `vision_logit` adds -10000 at padded regions where
hf_vlp uses the dtype's lowest value.
"""

from pathlib import Path

import torch

from hf_vlp.modeling.vilbert import (
    VilbertConfig,
    VilbertForGQA,
    VilbertForImageTextRetrieval,
    VilbertForMultipleChoice,
    VilbertForMultiTask,
    VilbertForPreTraining,
    VilbertForReferringExpression,
    VilbertForVisualEntailment,
    VilbertForVisualQuestionAnswering,
    VilbertForVisualReasoning,
)

from .common import ConversionError, KeyMap, Skipped, check_options, load_checkpoint, load_mapped_state, read_json

# shared/fixtures/vilbert/README.md's suggested tolerance (atol=5e-5, rtol=1e-5): tight enough to catch LayerNorm eps 1e-5
# instead of 1e-12; a larger rtol would hide that mistake on logits of size ~10
VERIFY_ATOL = 5e-5
VERIFY_RTOL = 1e-5

_C = r"^bert\.encoder\.c_layer\.(\d+)\."
_OURS_C = r"vilbert.encoder.c_layer.\1."

KEY_MAP = KeyMap(
    renames=[
        # co-attention: "1" = visual-stream projections, "2" = text-stream projections; text queries (query2) attend
        # over visual keys/values (key1, value1) and go through dense2/LayerNorm2 with the text residual.
        (_C + r"biattention\.query1\.", _OURS_C + "visual_attention.self.query."),
        (_C + r"biattention\.key1\.", _OURS_C + "text_attention.self.key."),
        (_C + r"biattention\.value1\.", _OURS_C + "text_attention.self.value."),
        (_C + r"biattention\.query2\.", _OURS_C + "text_attention.self.query."),
        (_C + r"biattention\.key2\.", _OURS_C + "visual_attention.self.key."),
        (_C + r"biattention\.value2\.", _OURS_C + "visual_attention.self.value."),
        (_C + r"biOutput\.dense1\.", _OURS_C + "visual_attention.output.dense."),
        (_C + r"biOutput\.LayerNorm1\.", _OURS_C + "visual_attention.output.LayerNorm."),
        (_C + r"biOutput\.dense2\.", _OURS_C + "text_attention.output.dense."),
        (_C + r"biOutput\.LayerNorm2\.", _OURS_C + "text_attention.output.LayerNorm."),
        (_C + r"v_intermediate\.", _OURS_C + "visual_intermediate."),
        (_C + r"v_output\.", _OURS_C + "visual_output."),
        (_C + r"t_intermediate\.", _OURS_C + "text_intermediate."),
        (_C + r"t_output\.", _OURS_C + "text_output."),
        # embeddings, single-stream layers and poolers keep BERT / ViLBERT names
        (r"^bert\.", "vilbert."),
        (r"^cls\.predictions\.bias$", "mlm_head.decoder.bias"),  # hf_vlp's MLM bias is the decoder's own
        (r"^cls\.predictions\.", "mlm_head."),
        (r"^cls\.imagePredictions\.", "region_head."),
        (r"^cls\.bi_seq_relationship\.", "itm_head."),
        (r"^vil_prediction\.logit_fc\.", "vqa_classifier."),
        (r"^vil_prediction_gqa\.logit_fc\.", "gqa_classifier."),
        (r"^vil_binary_prediction\.logit_fc\.", "nlvr2_classifier."),
        (r"^vil_logit\.", "pair_scorer."),
        (r"^vil_tri_prediction\.", "entailment_classifier."),
        (r"^vision_logit\.", "region_scorer."),
        (r"^linguisic_logit\.", "token_scorer."),
    ],
    drops=[
        (r"^cls\.predictions\.decoder\.weight$", "tied copy of bert.embeddings.word_embeddings.weight"),
        (r"\.biOutput\.q_dense[12]\.", "exists in BertBiOutput but is never used in the forward"),
    ],
    # ViLBERT's alignment label 0 means "matches" (next_sentence_label); hf_vlp's itm_labels use 1 = matches
    transforms={"itm_head.weight": lambda w: w.flip(0), "itm_head.bias": lambda b: b.flip(0)},
)

HEAD_CLASSES = {
    "vqa": VilbertForVisualQuestionAnswering,
    "gqa": VilbertForGQA,
    "retrieval": VilbertForImageTextRetrieval,
    "vcr": VilbertForMultipleChoice,
    "nlvr2": VilbertForVisualReasoning,
    "entailment": VilbertForVisualEntailment,
    "refexp": VilbertForReferringExpression,
}

# keys of the original JSON that the original code reads, and keys it never reads or only uses in training
CONFIG_KEYS = (
    "vocab_size hidden_size num_hidden_layers num_attention_heads intermediate_size hidden_act hidden_dropout_prob "
    "attention_probs_dropout_prob max_position_embeddings type_vocab_size initializer_range v_feature_size "
    "v_target_size v_hidden_size v_num_hidden_layers v_num_attention_heads v_intermediate_size v_hidden_act "
    "v_hidden_dropout_prob v_attention_probs_dropout_prob bi_hidden_size bi_num_attention_heads v_biattention_id "
    "t_biattention_id fusion_method task_specific_tokens"
).split()
IGNORED_CONFIG_KEYS = {
    "bi_intermediate_size": "never read by the original code",
    "bi_attention_type": "never read by the original code",
    "pooling_method": "never read (fusion is `fusion_method`)",
    "v_initializer_range": "initialisation only",
    "fast_mode": "training-time batching option",
    "in_batch_pairs": "training-time batching option",
    "fixed_t_layer": "training-time layer freezing",
    "fixed_v_layer": "training-time layer freezing",
    "objective": "pretraining data option",
    "num_negative": "NCE negatives (hf_vlp uses every in-batch region)",
    "visualization": "attention-map export switch",
    "visual_target": "read from the region head's shape",
}
UNSUPPORTED_CONFIG = {
    "dynamic_attention": (True, "dynamic attention gates (dyLinear_*) are not implemented"),
    "with_coattention": (False, "models without co-attention are not supported"),
    "model": ("roberta", "RoBERTa text streams are not supported"),
}


def _load_state(path) -> dict:
    """Flat fp32 state dict; also unwraps the `{"model_state_dict": ...}` of `pytorch_ckpt_*.tar`."""
    try:
        return load_checkpoint(path)
    except ConversionError as error:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if not (isinstance(raw, dict) and isinstance(raw.get("model_state_dict"), dict)):
            raise error
        state = dict(raw["model_state_dict"])
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module.") :]: v for k, v in state.items()}
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def config_from_original(
    original: dict | None, state: dict, visual_target=None, task_specific_tokens=None
) -> VilbertConfig:
    """VilbertConfig from an original JSON (None = the released base) completed and checked by the tensor shapes."""
    original = dict(original or {})
    for key, (bad, why) in UNSUPPORTED_CONFIG.items():
        if original.get(key) == bad:
            raise ConversionError(f"config {key}={bad!r}: {why}")
    unknown = sorted(set(original) - set(CONFIG_KEYS) - set(IGNORED_CONFIG_KEYS) - set(UNSUPPORTED_CONFIG))
    if unknown:
        raise ConversionError(f"unknown keys in the original ViLBERT config: {unknown}")
    kwargs = {k: original[k] for k in CONFIG_KEYS if k in original}

    has_task_tokens = "bert.embeddings.task_embeddings.weight" in state
    wanted = task_specific_tokens if task_specific_tokens is not None else kwargs.get("task_specific_tokens")
    if wanted is False and has_task_tokens:
        raise ConversionError(
            "the checkpoint has task tokens (bert.embeddings.task_embeddings.weight: a 12-in-1 / train_tasks.py "
            "model) but the config asks for a model without them (task_specific_tokens=False)"
        )
    if wanted and not has_task_tokens:
        raise ConversionError(
            "task_specific_tokens=True but the checkpoint has no bert.embeddings.task_embeddings.weight"
        )
    kwargs["task_specific_tokens"] = has_task_tokens
    if has_task_tokens:
        kwargs["num_task_tokens"] = state["bert.embeddings.task_embeddings.weight"].shape[0]

    # sizes the tensors pin down (an inconsistent JSON fails loudly instead of silently)
    shapes = {
        "vocab_size": ("bert.embeddings.word_embeddings.weight", 0),
        "hidden_size": ("bert.embeddings.word_embeddings.weight", 1),
        "max_position_embeddings": ("bert.embeddings.position_embeddings.weight", 0),
        "type_vocab_size": ("bert.embeddings.token_type_embeddings.weight", 0),
        "v_feature_size": ("bert.v_embeddings.image_embeddings.weight", 1),
        "v_hidden_size": ("bert.v_embeddings.image_embeddings.weight", 0),
        "intermediate_size": ("bert.encoder.layer.0.intermediate.dense.weight", 0),
        "v_intermediate_size": ("bert.encoder.v_layer.0.intermediate.dense.weight", 0),
        "bi_hidden_size": ("bert.encoder.c_layer.0.biattention.query1.weight", 0),
    }
    for name, (key, dim) in shapes.items():
        if key not in state:
            continue
        size = state[key].shape[dim]
        if name in original and original[name] != size:
            raise ConversionError(f"config {name}={original[name]} but {key} has shape {tuple(state[key].shape)}")
        kwargs[name] = size
    for name, prefix in (
        ("num_hidden_layers", "bert.encoder.layer."),
        ("v_num_hidden_layers", "bert.encoder.v_layer."),
    ):
        count = 1 + max((int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)), default=-1)
        if name in original and original[name] != count:
            raise ConversionError(f"config {name}={original[name]} but the checkpoint has {count} such layers")
        kwargs[name] = count
    connections = 1 + max((int(k.split(".")[3]) for k in state if k.startswith("bert.encoder.c_layer.")), default=-1)
    defaults = VilbertConfig()
    ids = {k: kwargs.get(k, getattr(defaults, k)) for k in ("v_biattention_id", "t_biattention_id")}
    if any(len(v) != connections for v in ids.values()):
        where = "the config" if original else "the released base config (pass the original JSON with --config)"
        raise ConversionError(
            f"the checkpoint has {connections} co-attention layers but {where} lists v_biattention_id="
            f"{ids['v_biattention_id']}, t_biattention_id={ids['t_biattention_id']}"
        )
    if not original:
        for name, default in (("hidden_size", 768), ("v_hidden_size", 1024), ("bi_hidden_size", 1024)):
            if kwargs.get(name, default) != default:
                raise ConversionError(
                    f"{name}={kwargs[name]} differs from the released base model: pass the original config JSON "
                    "(head counts and the connection schedule are not stored in the checkpoint)"
                )

    region_size = (
        state["cls.imagePredictions.decoder.weight"].shape[0]
        if "cls.imagePredictions.decoder.weight" in state
        else None
    )
    if region_size is not None and region_size != kwargs.get("v_target_size", defaults.v_target_size):
        if region_size != kwargs.get("v_feature_size", defaults.v_feature_size):
            raise ConversionError(f"region head width {region_size} is neither v_target_size nor v_feature_size")
        kwargs["visual_target"] = visual_target or "regression"  # --visual_target 1 or 2: a feature-wide head
    elif visual_target is not None:
        kwargs["visual_target"] = visual_target
    if "vil_prediction.logit_fc.3.weight" in state:
        kwargs["num_labels"] = state["vil_prediction.logit_fc.3.weight"].shape[0]
    if "vil_prediction_gqa.logit_fc.3.weight" in state:
        kwargs["gqa_num_labels"] = state["vil_prediction_gqa.logit_fc.3.weight"].shape[0]
    try:
        return VilbertConfig(**kwargs)
    except ValueError as error:
        raise ConversionError(f"invalid ViLBERT config: {error}") from error


def _flag(value):
    """`hf-vlp convert --option name=value` passes strings: "true" / "false" -> bool."""
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ConversionError(f"expected true or false, got {value!r}")
        return value.lower() in ("true", "1")
    return value


def convert(
    checkpoint, config=None, head=None, visual_target=None, task_specific_tokens=None, drop_task_heads=False, **options
):
    """Original ViLBERT checkpoint -> hf_vlp model (see the module docstring for the accepted files and options)."""
    task_specific_tokens, drop_task_heads = _flag(task_specific_tokens), _flag(drop_task_heads)
    check_options(convert, options)
    state = _load_state(checkpoint)
    if "bert.embeddings.word_embeddings.weight" not in state:
        raise ConversionError(
            f"{checkpoint} is not a ViLBERT checkpoint: no 'bert.embeddings.word_embeddings.weight' (first keys: {list(state)[:5]})"
        )
    if any(k.startswith("vil_prediction.main.") for k in state):
        if not drop_task_heads:
            raise ConversionError(
                "vil_prediction.main.* is the weight-normalised ReLU answer head of vilbert_beta, a different head "
                "architecture; pass drop_task_heads=True to convert the backbone and pretraining heads only"
            )
    if drop_task_heads:
        state = {k: v for k, v in state.items() if k.startswith(("bert.", "cls."))}
    original = None
    if config is not None:
        original = config if isinstance(config, dict) else read_json(config)
    hf_config = config_from_original(original, state, visual_target, task_specific_tokens)

    mapped, _dropped = KEY_MAP.apply(state)
    has_task_heads = any(k.startswith(("vil_", "vision_logit.", "linguisic_logit.")) for k in state)
    if head is not None:
        if head not in HEAD_CLASSES:
            raise ConversionError(f"`head` must be one of {sorted(HEAD_CLASSES)}, got {head!r}")
        if not has_task_heads:
            raise ConversionError(f"head={head!r} needs a multi-task / fine-tuned checkpoint with task heads")
        model_class = HEAD_CLASSES[head]
    elif has_task_heads:
        model_class = VilbertForMultiTask
    else:
        model_class = VilbertForPreTraining
    model = model_class(hf_config)
    expected = set(model.state_dict())
    # heads of the multi-task file that the chosen single-task class does not hold are dropped on request of `head`
    mapped = {k: v for k, v in mapped.items() if k in expected or head is None}
    # a backbone-only file (e.g. after drop_task_heads on a file without cls.*) has no pretraining heads yet
    allow_missing = (r"^(mlm_head|region_head|itm_head)\.",) if not any(k.startswith("cls.") for k in state) else ()
    try:
        return load_mapped_state(model, mapped, allow_missing=allow_missing).eval()
    except RuntimeError as error:  # size mismatches
        raise ConversionError(f"checkpoint tensors do not fit {model_class.__name__}: {error}") from error


# ------------------------------------------------------------------------------------------------------------------
# --verify: recompute the outputs of shared/fixtures/vilbert (README there) with the converted model
# ------------------------------------------------------------------------------------------------------------------


def fixture_batch(inputs: dict, task_tokens: bool) -> dict:
    """The fixture's original inputs -> hf_vlp keyword arguments."""
    batch = dict(
        input_ids=inputs["input_ids"],
        token_type_ids=inputs["token_type_ids"],
        attention_mask=inputs["attention_mask"],
        visual_feats=inputs["image_feat"],
        visual_pos=inputs["image_loc"][..., :4],
        visual_attention_mask=inputs["image_attention_mask"],
    )
    if task_tokens:
        batch["task_ids"] = inputs["task_ids"]
    return batch


def _original_vision_logit(model, outputs, visual_attention_mask):
    """The original's `vision_logit`: raw region scores + (1 - mask) * -10000 (hf_vlp fills padded regions with
    the dtype's lowest value instead)."""
    scores = model.region_scorer(outputs.visual_hidden_state)
    return scores + ((1.0 - visual_attention_mask.to(scores.dtype)) * -10000.0)[..., None]


def fixture_outputs(model, fixture_dir):
    from safetensors import safe_open
    from safetensors.torch import load_file

    fixture_dir = Path(fixture_dir)
    inputs = load_file(fixture_dir / "inputs.safetensors")
    task_tokens = model.config.task_specific_tokens
    prefix = "vl_tasks." if task_tokens else "pretraining."
    batch = fixture_batch(inputs, task_tokens)
    outputs = {}

    encoded = model.vilbert(**batch)
    outputs[prefix + "sequence_output_t"] = encoded.text_hidden_state
    outputs[prefix + "sequence_output_v"] = encoded.visual_hidden_state
    outputs[prefix + "pooled_output_t"] = encoded.text_pooler_output
    outputs[prefix + "pooled_output_v"] = encoded.visual_pooler_output

    if isinstance(model, VilbertForPreTraining):
        result = model(**batch)
        outputs[prefix + "prediction_scores_t"] = result.mlm_logits
        outputs[prefix + "prediction_scores_v"] = result.region_logits
        outputs[prefix + "seq_relationship_score"] = result.itm_logits.flip(-1)  # back to the original's order
    elif isinstance(model, VilbertForMultiTask):
        result = model(**batch)
        outputs.update(
            {
                prefix + "vil_prediction": result.vqa_logits,
                prefix + "vil_prediction_gqa": result.gqa_logits,
                prefix + "vil_logit": result.pair_scores[:, None],
                prefix + "vil_tri_prediction": result.entailment_logits,
                prefix + "vision_logit": _original_vision_logit(model, encoded, batch["visual_attention_mask"]),
                prefix + "linguisic_logit": result.token_scores[..., None],
                prefix + "linguisic_prediction": result.mlm_logits,
                prefix + "vision_prediction": result.region_logits,
            }
        )
        if result.nlvr2_logits is not None:
            outputs[prefix + "vil_binary_prediction"] = result.nlvr2_logits
    else:  # a single task head converted from the multi-task file
        single = {
            VilbertForVisualQuestionAnswering: "vil_prediction",
            VilbertForGQA: "vil_prediction_gqa",
            VilbertForImageTextRetrieval: "vil_logit",
            VilbertForVisualEntailment: "vil_tri_prediction",
        }
        name = next((n for cls, n in single.items() if type(model) is cls), None)
        if name is not None:
            logits = model(**batch).logits
            outputs[prefix + name] = logits[:, None] if name == "vil_logit" else logits
        elif isinstance(model, VilbertForReferringExpression):
            outputs[prefix + "vision_logit"] = _original_vision_logit(model, encoded, batch["visual_attention_mask"])

    with safe_open(fixture_dir / "outputs.safetensors", "pt") as reference:
        for name in reference.keys():
            if name in outputs:
                continue
            if not name.startswith(prefix):
                other = "pretrained_model.bin" if name.startswith("pretraining.") else "multi_task_model.bin"
                outputs[name] = Skipped(f"computed from {other}, not from this checkpoint")
            else:
                outputs[name] = Skipped(f"not an output of {type(model).__name__}")
    return outputs


def fixture_checkpoints(fixture_dir):
    """(checkpoint path, original config path) of every checkpoint in a ViLBERT fixture folder."""
    fixture_dir = Path(fixture_dir)
    configs = sorted(fixture_dir.glob("*.json"))
    if len(configs) != 1:
        raise ConversionError(f"expected one original config JSON in {fixture_dir}, found {[c.name for c in configs]}")
    return [(path, configs[0]) for path in sorted(fixture_dir.glob("*.bin"))]


__all__ = [
    "KEY_MAP",
    "VERIFY_ATOL",
    "VERIFY_RTOL",
    "config_from_original",
    "convert",
    "fixture_checkpoints",
    "fixture_outputs",
]
