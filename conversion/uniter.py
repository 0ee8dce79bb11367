"""Convert original UNITER / VILLA checkpoints (github.com/ChenRocks/UNITER) to hf_vlp.

Accepted files: the pretraining checkpoints (`uniter-{base,large}.pt`, `villa-*.pt`: backbone + MLM/MRFR/MRC/ITM
heads), BERT-initialised `*-init.pt`, and fine-tuned `ckpt/model_step_N.pt` of VQA, SNLI-VE, NLVR2 (paired,
triplet, paired-attn), retrieval and RefCOCO runs. The head is read from the keys; sizes from the original config
JSON and the tensor shapes. A fine-tuning run directory can be given as `--checkpoint` (its `log/model.json`,
`log/hps.json` and `ckpt/ans2label.json` are used). VCR fine-tuned checkpoints (`vcr_output.*`, 4 token types,
word embeddings extended by the VCR special tokens) -> `UniterForVisualCommonsenseReasoning`; the second-stage VCR
pretraining checkpoints (`UniterForPretrainingForVCR`: the pretraining heads on the extended embeddings) ->
`UniterForPreTraining`, sizes read from the tensors.

Input mapping (original batch -> hf_vlp): `input_ids` as is; `attention_mask` = text part of `attn_masks`;
`img_feat` -> `visual_feats`; `img_pos_feat[..., :4]` -> `visual_pos`; the stored 7-d `img_pos_feat` may be passed
as `visual_location_feats` (the image DB rounds w and h to fp16 separately from x2-x1); `img_masks` ->
`region_mask`; `txt_labels` (-1) -> `labels` (-100). hf_vlp keeps `[padded text | padded regions]`; the original's
packed sequence is `torch.gather(ours, 1, gather_index)`.
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from hf_vlp.modeling.uniter import (
    UniterConfig,
    UniterForImageTextRetrieval,
    UniterForPreTraining,
    UniterForReferringExpression,
    UniterForVisualCommonsenseReasoning,
    UniterForVisualEntailment,
    UniterForVisualQuestionAnswering,
    UniterForVisualReasoning,
)

from .common import ConversionError, KeyMap, Skipped, check_options, load_checkpoint, load_mapped_state, read_json

# shared/fixtures/uniter/README.md suggests atol=1e-4, rtol=1e-4 (an independent re-implementation
# matched within 5.7e-6); rtol 1e-5 absorbs fp32 rounding of large outputs and stays far below every typical mistake
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 1e-5

KEY_MAP = KeyMap(
    renames=[
        (r"^uniter\.img_embeddings\.mask_embedding\.weight$", "uniter.img_embeddings.mask_embedding"),
        (r"^uniter\.", "uniter."),
        (r"^cls\.predictions\.bias$", "mlm_head.decoder.bias"),  # hf_vlp's MLM bias is the decoder's own
        (r"^cls\.predictions\.", "mlm_head."),
        (r"^feat_regress\.net\.", "region_feature_head.transform."),
        (r"^feat_regress\.bias$", "region_feature_head.bias"),
        (r"^region_classifier\.net\.", "region_class_head."),
        (r"^itm_output\.", "itm_head."),
        (r"^rank_output\.", "rank_head."),
        (r"^vqa_output\.", "classifier."),
        (r"^nlvr2_output\.", "classifier."),
        (r"^(attn1|attn2|fc|attn_pool)\.", r"\1."),
        (r"^re_output\.", "region_scorer."),
        (r"^vcr_output\.", "vcr_output."),
    ],
    drops=[
        (r"^cls\.predictions\.decoder\.weight$", "tied copy of uniter.embeddings.word_embeddings.weight"),
        (r"^feat_regress\.weight$", "tied copy of uniter.img_embeddings.img_linear.weight (used transposed)"),
        (r"^cls\.seq_relationship\.", "BERT next-sentence head of *-init.pt files; UNITER never uses it"),
    ],
    # row 0 of the original nn.Embedding(2, D) is zeroed before every use: only row 1 (masked regions) matters
    transforms={"uniter.img_embeddings.mask_embedding": lambda weight: weight[1]},
)

# head keys -> model class
HEADS = [
    ("nlvr2_output.weight", UniterForVisualReasoning),
    ("rank_output.weight", UniterForImageTextRetrieval),
    ("re_output.weight", UniterForReferringExpression),
    ("re_output.0.weight", UniterForReferringExpression),
    ("vqa_output.3.weight", UniterForVisualQuestionAnswering),
    ("vcr_output.3.weight", UniterForVisualCommonsenseReasoning),
]


def _run_directory_files(checkpoint: Path):
    """A fine-tuning output dir: newest ckpt/model_step_N.pt, log/model.json, log/hps.json, ckpt/ans2label.json."""
    steps = sorted(checkpoint.glob("ckpt/model_step_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not steps:
        raise ConversionError(f"{checkpoint} is a directory without ckpt/model_step_*.pt")
    config = checkpoint / "log" / "model.json"
    hps = checkpoint / "log" / "hps.json"
    answers = checkpoint / "ckpt" / "ans2label.json"
    return (
        steps[-1],
        config if config.exists() else None,
        hps if hps.exists() else None,
        answers if answers.exists() else None,
    )


def config_from_original(
    original: dict, state: dict, hps: dict | None = None, answers: dict | None = None
) -> UniterConfig:
    """UniterConfig from an original config JSON, completed by the tensor shapes (sizes the code hard-codes)."""
    known = (
        "vocab_size hidden_size num_hidden_layers num_attention_heads intermediate_size hidden_act "
        "hidden_dropout_prob attention_probs_dropout_prob max_position_embeddings type_vocab_size initializer_range"
    ).split()
    kwargs = {k: original[k] for k in known if k in original}
    kwargs["vocab_size"] = state["uniter.embeddings.word_embeddings.weight"].shape[0]
    kwargs["hidden_size"] = state["uniter.embeddings.word_embeddings.weight"].shape[1]
    kwargs["max_position_embeddings"] = state["uniter.embeddings.position_embeddings.weight"].shape[0]
    kwargs["type_vocab_size"] = state["uniter.embeddings.token_type_embeddings.weight"].shape[0]
    kwargs["num_hidden_layers"] = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("uniter.encoder.layer."))
    kwargs["intermediate_size"] = state["uniter.encoder.layer.0.intermediate.dense.weight"].shape[0]
    if "uniter.img_embeddings.img_linear.weight" in state:
        kwargs["visual_feat_dim"] = state["uniter.img_embeddings.img_linear.weight"].shape[1]
    if "region_classifier.net.3.weight" in state:
        kwargs["num_region_classes"] = state["region_classifier.net.3.weight"].shape[0]
    if "vqa_output.3.weight" in state:
        kwargs["num_labels"] = state["vqa_output.3.weight"].shape[0]
        if answers:
            kwargs["id2label"] = {int(i): a for a, i in answers.items()}
    if "nlvr2_output.weight" in state:
        if "attn1.in_proj_weight" in state:
            kwargs["nlvr2_head"] = "paired-attn"
        elif state["nlvr2_output.weight"].shape[1] == 2 * kwargs["hidden_size"]:
            kwargs["nlvr2_head"] = "paired"
        else:
            kwargs["nlvr2_head"] = "triplet"
        if hps and hps.get("model") and hps["model"] != kwargs["nlvr2_head"]:
            raise ConversionError(
                f"hps.json says model={hps['model']!r} but the keys are those of {kwargs['nlvr2_head']!r}"
            )
    if "re_output.0.weight" in state:
        kwargs["referring_head_layers"] = 2
    if "num_attention_heads" not in kwargs:
        raise ConversionError("the original config JSON must give num_attention_heads (it is not in the tensor shapes)")
    return UniterConfig(**kwargs)


def model_class_for(state: dict, config: UniterConfig):
    if "vcr_output.3.weight" in state and config.type_vocab_size < 4:
        raise ConversionError(
            f"a VCR checkpoint has 4 token types (question, region, answer, rationale); this one has "
            f"{config.type_vocab_size}"
        )
    for key, cls in HEADS:
        if key in state:
            if cls is UniterForVisualQuestionAnswering and config.num_labels == 3:
                return UniterForVisualEntailment
            return cls
    return UniterForPreTraining


def convert(checkpoint, config=None, **options):
    """Original UNITER checkpoint (file or fine-tuning run directory) -> hf_vlp model with the matching head.

    `config`: the original model config JSON (e.g. `config/uniter-base.json`); defaults to the run directory's
    `log/model.json`. Pretraining heads absent from the file (e.g. `*-init.pt`) are freshly initialised.
    """
    check_options(convert, options)
    checkpoint = Path(checkpoint)
    hps = answers = None
    if checkpoint.is_dir():
        checkpoint, run_config, hps_path, answers_path = _run_directory_files(checkpoint)
        config = config or run_config
        hps = read_json(hps_path) if hps_path else None
        answers = read_json(answers_path) if answers_path else None
    if config is None:
        raise ConversionError("UNITER checkpoints carry no config: pass the original model config JSON (--config)")
    state = load_checkpoint(checkpoint)
    if "uniter.embeddings.word_embeddings.weight" not in state:
        raise ConversionError(
            f"{checkpoint} is not a UNITER checkpoint: no 'uniter.embeddings.word_embeddings.weight' "
            f"(first keys: {list(state)[:5]})"
        )
    hf_config = config_from_original(read_json(config) if not isinstance(config, dict) else config, state, hps, answers)
    model_class = model_class_for(state, hf_config)
    mapped, _dropped = KEY_MAP.apply(state)
    model = model_class(hf_config)
    # *-init.pt files (BERT weights) have no image embeddings or pretraining heads yet
    allow_missing = (r"^uniter\.img_embeddings\.", r"_head\.") if model_class is UniterForPreTraining else ()
    if model_class is UniterForImageTextRetrieval and "rank_head.weight" not in mapped:
        model.init_rank_head_from_itm()
    return load_mapped_state(model, mapped, allow_missing=allow_missing).eval()


# ------------------------------------------------------------------------------------------------------------------
# --verify: recompute the outputs of shared/fixtures/uniter (README there) with the converted model
# ------------------------------------------------------------------------------------------------------------------


def fixture_batch(inputs: dict, prefix: str = "") -> dict:
    """An original batch (keys with `prefix`) -> hf_vlp keyword arguments, plus `gather_index` for packing."""
    get = lambda name: inputs[prefix + name]  # noqa: E731
    input_ids = get("input_ids")
    text_lengths = (input_ids != 0).sum(1)  # [PAD] = 0 only on padding
    region_counts = get("attn_masks").sum(1) - text_lengths
    regions = get("img_feat").shape[1]
    batch = dict(
        input_ids=input_ids,
        attention_mask=(input_ids != 0).long(),
        visual_feats=get("img_feat"),
        visual_pos=get("img_pos_feat")[..., :4],
        visual_location_feats=get("img_pos_feat"),
        visual_attention_mask=(torch.arange(regions)[None] < region_counts[:, None]).long(),
    )
    return batch, get("gather_index")


def _packed(sequence, gather_index):
    """hf_vlp's `[text | regions]` layout -> the original's packed layout (every position, padding included)."""
    return torch.gather(sequence, 1, gather_index[..., None].expand(-1, -1, sequence.shape[-1]))


def _scatter_rows(mask, rows, fill):
    """Place per-masked-region rows (row-major) back into a (B, R, ...) tensor."""
    out = torch.full((*mask.shape, *rows.shape[1:]), fill, dtype=rows.dtype)
    out[mask] = rows
    return out


def fixture_outputs(model, fixture_dir):
    from safetensors.torch import load_file

    inputs = load_file(Path(fixture_dir) / "inputs.safetensors")
    outputs = {}
    backbone = model.uniter
    batch, gather_index = fixture_batch(inputs)

    # backbone outputs (any checkpoint carries the same backbone)
    encoded = backbone(**batch, output_hidden_states=True)
    outputs["uniter.txt_embeddings"] = backbone.embeddings(batch["input_ids"])
    outputs["uniter.img_embeddings"] = backbone.embed_regions(
        batch["visual_feats"], batch["visual_pos"], visual_location_feats=batch["visual_location_feats"]
    )
    outputs["uniter.embedding_output"] = _packed(encoded.hidden_states[0], gather_index)
    for layer, hidden in enumerate(encoded.hidden_states[1:]):
        outputs[f"uniter.encoded_layers.{layer}"] = _packed(hidden, gather_index)
    outputs["uniter.sequence_output"] = _packed(encoded.last_hidden_state, gather_index)
    outputs["uniter.pooled_output"] = encoded.pooler_output

    pretraining = isinstance(model, UniterForPreTraining)
    pretrain_names = ("mlm.", "mrfr.", "mrc.", "mrckl.", "itm.")
    if pretraining:
        outputs.update(_pretraining_outputs(model, inputs))
    if isinstance(model, UniterForVisualQuestionAnswering) and "vqa.targets" in inputs:
        logits = model(**batch).logits
        outputs["vqa.answer_scores"] = logits
        outputs["vqa.loss"] = F.binary_cross_entropy_with_logits(logits, inputs["vqa.targets"], reduction="none")

    from safetensors import safe_open

    with safe_open(Path(fixture_dir) / "outputs.safetensors", "pt") as reference:
        for name in reference.keys():
            if name not in outputs:
                if name.startswith(pretrain_names) and not pretraining:
                    outputs[name] = Skipped("needs the pretraining checkpoint's heads")
                elif name.startswith("vqa.") and not isinstance(model, UniterForVisualQuestionAnswering):
                    outputs[name] = Skipped("needs the fine-tuned VQA checkpoint")
    return outputs


def _pretraining_outputs(model, inputs):
    outputs = {}
    # MLM
    batch, _ = fixture_batch(inputs, "mlm.")
    labels = inputs["mlm.txt_labels"].masked_fill(inputs["mlm.txt_labels"] == -1, -100)
    result = model(**batch, labels=labels)
    outputs["mlm.prediction_scores"] = result.mlm_logits
    outputs["mlm.loss"] = F.cross_entropy(result.mlm_logits, labels[labels != -100], reduction="none")

    # MRFR
    batch, _ = fixture_batch(inputs, "mrfr.")
    region_mask = inputs["mrfr.img_masks"].bool()
    targets = _scatter_rows(region_mask, inputs["mrfr.feat_targets"], 0.0)
    result = model(**batch, region_mask=region_mask, region_feature_labels=targets)
    outputs["mrfr.prediction_feat"] = result.region_feature_predictions
    outputs["mrfr.loss"] = F.mse_loss(result.region_feature_predictions, inputs["mrfr.feat_targets"], reduction="none")

    # MRC and MRC-KL: same batch, same head, two losses
    batch, _ = fixture_batch(inputs, "mrc.")
    region_mask = inputs["mrc.img_masks"].bool()
    soft = inputs["mrc.label_targets"]
    hard = soft[:, 1:].argmax(-1) + 1  # the background class is never the target
    result = model(
        **batch,
        region_mask=region_mask,
        region_class_labels=_scatter_rows(region_mask, hard, -100),
        region_soft_labels=_scatter_rows(region_mask, soft, 0.0),
    )
    logits = result.region_class_logits
    outputs["mrc.prediction_soft_label"] = logits
    outputs["mrckl.prediction_soft_label"] = logits
    outputs["mrc.loss"] = F.cross_entropy(logits, hard, reduction="none")
    outputs["mrckl.loss"] = F.kl_div(F.log_softmax(logits, -1), soft, reduction="none")

    # ITM + word-region alignment
    batch, _ = fixture_batch(inputs, "itm.")
    targets = inputs["itm.targets"]
    result = model(**batch, itm_labels=targets)
    outputs["itm.itm_scores"] = result.itm_logits
    outputs["itm.loss"] = F.cross_entropy(result.itm_logits, targets, reduction="none")
    if result.ot_distances is not None:
        outputs["itm.ot_pos_dist"] = result.ot_distances[targets == 1]
        outputs["itm.ot_neg_dist"] = result.ot_distances[targets == 0]
        outputs["itm.ot_loss"] = result.wra_loss
    return outputs
