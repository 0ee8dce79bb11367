"""Convert original LXMERT checkpoints (github.com/airsplay/lxmert) to hf_vlp.

Accepted files:
* pre-training: `model_LXRT.pth` (the released default), `EpochNN_LXRT.pth`, `BEST_EVAL_LOSS_LXRT.pth` — the
  `state_dict()` of `src/lxrt/modeling.py::LXRTPretraining` (`module.` prefix when run with `--multiGPU`), with the
  heads the run enabled (`cls`, `obj_predict_head`, `answer_head`) -> `LxmertForPreTraining`;
* fine-tuned VQA / GQA: `snap/<task>/<name>/BEST.pth` / `LAST.pth` as `VQA.save` / `GQA.save` write them
  (`lxrt_encoder.model.[module.]bert.*` + `logit_fc.*`) -> `LxmertForVisualQuestionAnswering`.
* fine-tuned NLVR2: `snap/nlvr2/<name>/BEST.pth` as `NLVR2.save` writes it (`lxrt_encoder.model.bert.*` + `logit_fc.*`
  over the two concatenated pooled outputs) -> `LxmertForVisualReasoning` (`logit_fc` -> `classifier`).

`config`: the original BERT config (`bert_config.json` of "bert-base-uncased"): the number of attention heads is not
stored in the weights; without it a 768-wide model is taken as bert-base (12 heads), as every released model is.
Layer counts (`--llayers/--xlayers/--rlayers`) are counted from the keys; object/attribute/answer counts come from
the head shapes. The converted config sets `visual_loss_normalizer` to the original's exact 1/0.15. `answers`: an
optional answer table (`trainval_label2ans.json` list or `trainval_ans2label.json` dict) for `id2label`.

Input mapping (original -> transformers/hf_vlp): `feats` -> `visual_feats`, `boxes` (x1/W, y1/H, x2/W, y2/H) ->
`visual_pos`, `input_mask` -> `attention_mask`, `segment_ids` -> `token_type_ids`, `masked_lm_labels` / `ans` (-1)
-> `labels` / `ans` (-100); `obj_labels` keeps its layout.
"""

from pathlib import Path

import torch
from transformers import LxmertConfig

from hf_vlp.modeling.lxmert import (
    ORIGINAL_VISUAL_LOSS_NORMALIZER,
    LxmertForPreTraining,
    LxmertForVisualQuestionAnswering,
    LxmertForVisualReasoning,
)

from .common import (
    ConversionError,
    KeyMap,
    Skipped,
    check_options,
    load_checkpoint,
    load_mapped_state,
    read_json,
)

# shared/fixtures/lxmert/README.md suggests atol=1e-4, rtol=1e-4. Rounding grows with magnitude (an
# output near 2,500 differs by 2.4e-4 from fp32 rounding alone), so a relative term is needed; 1e-5 is enough for that
# and keeps the check tighter than the README's (its smallest listed mistake, tanh GELU, moves outputs by 8.8e-4)
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 1e-5
# options other than the keyword parameters of `convert` override fields of the converted config
CONFIG_OVERRIDES = LxmertConfig

KEY_MAP = KeyMap(
    renames=[
        (r"^lxrt_encoder\.model\.(module\.)?bert\.", "lxmert."),
        (r"^logit_fc\.", "answer_head.logit_fc."),
        (r"^bert\.", "lxmert."),
        (r"^(cls|obj_predict_head|answer_head)\.", r"\1."),
    ],
)


# NLVR2 files: the same encoder, and `logit_fc` classifies the two images' concatenated pooled outputs
NLVR2_KEY_MAP = KeyMap(
    renames=[
        (r"^lxrt_encoder\.model\.(module\.)?bert\.", "lxmert."),
        (r"^logit_fc\.", "classifier."),
    ],
)


def _original_state(checkpoint):
    state = load_checkpoint(checkpoint)  # strips a `module.` prefix carried by every key
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def _count(state, prefix):
    indices = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
    if indices != set(range(len(indices))):
        raise ConversionError(f"layer indices under {prefix!r} are not contiguous: {sorted(indices)}")
    return len(indices)


def config_from_original(mapped: dict, sizes: dict, answers=None, **overrides) -> LxmertConfig:
    """LxmertConfig from the mapped tensor shapes and the original BERT config (heads, dropout, act)."""
    words = mapped["lxmert.embeddings.word_embeddings.weight"]
    kwargs = {
        k: sizes[k]
        for k in (
            "hidden_act",
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "initializer_range",
            "num_attention_heads",
        )
        if k in sizes
    }
    kwargs.update(
        vocab_size=words.shape[0],
        hidden_size=words.shape[1],
        intermediate_size=mapped["lxmert.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=mapped["lxmert.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=mapped["lxmert.embeddings.token_type_embeddings.weight"].shape[0],
        l_layers=_count(mapped, "lxmert.encoder.layer."),
        x_layers=_count(mapped, "lxmert.encoder.x_layers."),
        r_layers=_count(mapped, "lxmert.encoder.r_layers."),
        visual_feat_dim=mapped["lxmert.encoder.visn_fc.visn_fc.weight"].shape[1],
        visual_pos_dim=mapped["lxmert.encoder.visn_fc.box_fc.weight"].shape[1],
        visual_loss_normalizer=ORIGINAL_VISUAL_LOSS_NORMALIZER,
        pad_token_id=0,  # bert-base-uncased's [PAD]
        task_mask_lm="cls.predictions.bias" in mapped,
        task_matched="cls.seq_relationship.weight" in mapped,
        task_obj_predict=any(k.startswith("obj_predict_head.") for k in mapped),
        task_qa="answer_head.logit_fc.3.weight" in mapped,
    )
    for key, field in (("obj", "num_object_labels"), ("attr", "num_attr_labels")):
        weight = mapped.get(f"obj_predict_head.decoder_dict.{key}.weight")
        kwargs[f"visual_{key}_loss"] = weight is not None
        if weight is not None:
            kwargs[field] = weight.shape[0]
    feat = mapped.get("obj_predict_head.decoder_dict.feat.weight")
    kwargs["visual_feat_loss"] = feat is not None
    if feat is not None and feat.shape[0] != kwargs["visual_feat_dim"]:
        raise ConversionError(
            f"feature regression size {feat.shape[0]} != region feature size {kwargs['visual_feat_dim']}"
        )
    if kwargs["task_qa"]:
        kwargs["num_qa_labels"] = mapped["answer_head.logit_fc.3.weight"].shape[0]
    if answers is not None:
        table = answers if isinstance(answers, (list, dict)) else read_json(answers)
        label2ans = table if isinstance(table, list) else sorted(table, key=table.get)
        if len(label2ans) != kwargs.get("num_qa_labels"):
            raise ConversionError(
                f"the answer table has {len(label2ans)} answers but the head has {kwargs.get('num_qa_labels')}"
            )
        kwargs["id2label"] = dict(enumerate(label2ans))
    for k in ("hidden_size", "intermediate_size", "vocab_size"):
        if k in sizes and sizes[k] != kwargs[k]:
            raise ConversionError(f"the config says {k}={sizes[k]} but the weights have {kwargs[k]} (wrong config?)")
    if "num_attention_heads" not in kwargs:
        if kwargs["hidden_size"] != 768:
            raise ConversionError(
                f"the number of attention heads is not stored in the weights and hidden size {kwargs['hidden_size']} "
                "is not bert-base's: pass the original bert_config.json as `config`"
            )
        kwargs["num_attention_heads"] = 12  # bert-base-uncased, the backbone of every released LXMERT
    kwargs.update(overrides)
    return LxmertConfig(**kwargs)


def convert(checkpoint, config=None, answers=None, **options):
    """Original LXMERT checkpoint -> `LxmertForPreTraining` (pre-training files), `LxmertForVisualQuestionAnswering`
    (fine-tuned VQA / GQA files) or `LxmertForVisualReasoning` (NLVR2). Other options override config fields."""
    overrides = _config_overrides(options)
    state = _original_state(checkpoint)
    fine_tuned = any(k.startswith("lxrt_encoder.") for k in state)
    if not any(k.endswith("bert.encoder.visn_fc.visn_fc.weight") for k in state):
        raise ConversionError(
            f"{checkpoint} is not an original LXMERT checkpoint: no '[module.]bert.encoder.visn_fc.visn_fc.weight' or "
            f"'lxrt_encoder.model.bert.encoder.visn_fc.visn_fc.weight' (first keys: {list(state)[:5]})"
        )
    if fine_tuned and "logit_fc.3.weight" not in state:
        raise ConversionError(f"{checkpoint}: a fine-tuned LXMERT file without the VQA/GQA answer head logit_fc.*")
    # VQA's logit_fc starts Linear(H, 2H); NLVR2's Linear(2H, 2H) over the two pooled outputs
    nlvr2 = fine_tuned and state["logit_fc.0.weight"].shape[1] != state["logit_fc.2.weight"].shape[0] // 2
    if nlvr2 and state["logit_fc.3.weight"].shape[0] != 2:
        raise ConversionError(
            f"{checkpoint}: an NLVR2 head (logit_fc over two pooled outputs) must end in 2 classes, got "
            f"{state['logit_fc.3.weight'].shape[0]}"
        )
    if nlvr2 and answers is not None:
        raise ConversionError("`answers` is a VQA / GQA answer table; an NLVR2 file has the two classes False / True")
    decoder = state.get("cls.predictions.decoder.weight")
    if decoder is not None and not torch.equal(decoder, state["bert.embeddings.word_embeddings.weight"]):
        raise ConversionError("cls.predictions.decoder.weight differs from the word embeddings it is tied to")

    mapped, _ = (NLVR2_KEY_MAP if nlvr2 else KEY_MAP).apply(state)
    sizes = {} if config is None else (config if isinstance(config, dict) else read_json(config))
    hf_config = config_from_original(mapped, sizes, answers, **overrides)
    if nlvr2:
        hf_config.id2label, hf_config.label2id = {0: "False", 1: "True"}, {"False": 0, "True": 1}
        model = LxmertForVisualReasoning(hf_config)
    elif fine_tuned:
        model = LxmertForVisualQuestionAnswering(hf_config)
    else:
        model = LxmertForPreTraining(hf_config)
        if not (hf_config.task_mask_lm and hf_config.task_matched):
            raise ConversionError("a pre-training checkpoint needs cls.predictions and cls.seq_relationship")
    return load_mapped_state(model, mapped).eval()


def _config_overrides(options):
    return check_options(convert, options, CONFIG_OVERRIDES)


# ------------------------------------------------------------------------------------------------------------------
# --verify: recompute the outputs of shared/fixtures/lxmert (README there) with the converted model
# ------------------------------------------------------------------------------------------------------------------


def _ignore(labels):
    return labels.masked_fill(labels == -1, -100)


def pretraining_batch(inputs, prefix="pretrain"):
    """`LXRTPretraining.forward` arguments -> `LxmertForPreTraining` keyword arguments (labels included)."""
    get = lambda name: inputs[f"{prefix}.{name}"]  # noqa: E731
    obj_labels = {
        key: (get(f"obj_labels.{key}.label"), get(f"obj_labels.{key}.mask_conf"))
        for key in ("obj", "attr", "feat")
        if f"{prefix}.obj_labels.{key}.label" in inputs
    }
    return dict(
        input_ids=get("input_ids"),
        attention_mask=get("attention_mask"),
        token_type_ids=get("token_type_ids"),
        visual_feats=get("visual_feats"),
        visual_pos=get("pos"),
        labels=_ignore(get("masked_lm_labels")),
        obj_labels=obj_labels,
        matched_label=get("matched_label"),
        ans=_ignore(get("ans")),
    )


def _capture(module, store, name):
    return module.register_forward_hook(lambda _module, _inputs, output: store.__setitem__(name, output))


def fixture_outputs(model, fixture_dir):
    from safetensors import safe_open
    from safetensors.torch import load_file

    fixture_dir = Path(fixture_dir)
    inputs = load_file(fixture_dir / "inputs.safetensors")
    outputs = {}
    pretraining = isinstance(model, LxmertForPreTraining)
    vqa = isinstance(model, LxmertForVisualQuestionAnswering)

    if pretraining and "pretrain.input_ids" in inputs:
        captured = {}
        hooks = [
            _capture(model.lxmert.embeddings, captured, "embedding_output"),
            _capture(model.lxmert.encoder.visn_fc, captured, "visual_embedding_output"),
        ]
        try:
            result = model(**pretraining_batch(inputs), output_hidden_states=True)
        finally:
            for hook in hooks:
                hook.remove()
        config = model.config
        outputs["pretrain.embedding_output"] = captured["embedding_output"]
        outputs["pretrain.visual_embedding_output"] = captured["visual_embedding_output"]
        # language_hidden_states: l_layers then x_layers; vision_hidden_states: r_layers then x_layers
        for i in range(config.l_layers):
            outputs[f"pretrain.l_layers.{i}"] = result.language_hidden_states[i]
        for i in range(config.r_layers):
            outputs[f"pretrain.r_layers.{i}"] = result.vision_hidden_states[i]
        for i in range(config.x_layers):
            outputs[f"pretrain.x_layers.{i}.lang"] = result.language_hidden_states[config.l_layers + i]
            outputs[f"pretrain.x_layers.{i}.visn"] = result.vision_hidden_states[config.r_layers + i]
        outputs["pretrain.lang_feats"] = result.language_output
        outputs["pretrain.visn_feats"] = result.vision_output
        outputs["pretrain.pooled_output"] = result.pooled_output
        outputs["pretrain.lang_prediction_scores"] = result.prediction_logits
        outputs["pretrain.cross_relationship_score"] = result.cross_relationship_score
        outputs["pretrain.answer_score"] = result.question_answering_score
        outputs["pretrain.visn_prediction_scores.obj"] = result.obj_logits
        outputs["pretrain.visn_prediction_scores.attr"] = result.attr_logits
        outputs["pretrain.visn_prediction_scores.feat"] = result.feat_predictions
        # the original's order: Mask_LM, Matched, Obj, Attr, Feat, QA
        names = ("mlm_loss", "matched_loss", "obj_loss", "attr_loss", "feat_loss", "qa_loss")
        outputs["pretrain.losses"] = torch.stack([getattr(result, name) for name in names])
        outputs["pretrain.total_loss"] = result.loss

    if pretraining and "encoder.input_ids" in inputs:
        # entry.LXRTEncoder(mode="lxr") with the pre-training checkpoint's backbone
        encoded = model.lxmert(
            input_ids=inputs["encoder.input_ids"],
            attention_mask=inputs["encoder.attention_mask"],
            token_type_ids=inputs["encoder.token_type_ids"],
            visual_feats=inputs["encoder.visual_feats"],
            visual_pos=inputs["encoder.visual_pos"],
            visual_attention_mask=inputs["encoder.visual_attention_mask"],
        )
        outputs["encoder.lang_feats"] = encoded.language_output
        outputs["encoder.visn_feats"] = encoded.vision_output
        outputs["encoder.pooled_output"] = encoded.pooled_output

    if vqa and "vqa.input_ids" in inputs:
        result = model(
            input_ids=inputs["vqa.input_ids"],
            attention_mask=inputs["vqa.attention_mask"],
            token_type_ids=inputs["vqa.token_type_ids"],
            visual_feats=inputs["vqa.feat"],
            visual_pos=inputs["vqa.pos"],
            labels=inputs["vqa.target"],
        )
        outputs["vqa.logits"] = result.logits
        outputs["vqa.loss"] = result.loss

    with safe_open(fixture_dir / "outputs.safetensors", "pt") as reference:
        for name in reference.keys():
            if name not in outputs:
                if name.startswith(("pretrain.", "encoder.")) and not pretraining:
                    outputs[name] = Skipped("computed with the pre-training checkpoint")
                elif name.startswith("vqa.") and not vqa:
                    outputs[name] = Skipped("computed with the fine-tuned VQA checkpoint")
    return outputs
