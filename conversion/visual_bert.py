"""Convert original VisualBERT checkpoints (github.com/uclanlp/visualbert, `visualbert/` code) to hf_vlp.

Accepted files: what `models/model_wrapper.py::ModelWrapper.save_checkpoint` writes (`model_state_epoch_N.th`,
`best.th`) and the released files named after it: `{vqa,nlvr2}_coco_pre_trained.th`, `{vqa,nlvr2}_pre_trained.th`,
`vcr_coco_pre_train.th`, `vcr_pre_train.th` (pre-training heads -> `VisualBertForPreTraining`) and
`vqa_fine_tuned.th` (-> `VisualBertForVisualQuestionAnswering`), `nlvr2_fine_tuned.th` (-> `...ForVisualReasoning`),
`vcr_fine_tune.th` (-> `...ForMultipleChoice`). Plain state dicts, `bert.bert.*` backbone, no `module.` prefix
(a stray one is accepted). VCR files also hold an r2c-style detector (`detector.*`): transformers has no such
module, so those keys are dropped with a warning and 512-d region features must come from elsewhere.

`config`: the original BERT config JSON (`bert_config.json` of the "bert-base-uncased" archive) or the training
config (`configs/*/*.json`, whose `model` block names the head); the number of attention heads is not stored in the
weights. Without it, a 768-wide model is taken as bert-base-uncased (12 heads), what every released model uses.

Input mapping (original batch -> transformers/hf_vlp): `bert_input_ids` -> `input_ids`, `bert_input_mask` ->
`attention_mask`, `bert_input_type_ids` -> `token_type_ids`, `image_feat_variable` -> `visual_embeds`,
`arange(R) < image_dim_variable` -> `visual_attention_mask`, `visual_embeddings_type` (or zeros) ->
`visual_token_type_ids`, `masked_lm_labels` (-1) -> `labels` (-100), `is_random_next` (1 = match) ->
`sentence_image_labels`, `label` (soft VQA scores) -> `labels`.
"""

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import VisualBertConfig

from hf_vlp.modeling.visual_bert import (
    VisualBertForMultipleChoice,
    VisualBertForPreTraining,
    VisualBertForVisualQuestionAnswering,
    VisualBertForVisualReasoning,
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

# shared/fixtures/visual_bert/README.md suggests atol=1e-4, rtol=1e-4 (transformers matched within
# 5.5e-6); rtol 1e-5 absorbs fp32 rounding of large outputs, far below the smallest mistake listed (7.2e-4)
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 1e-5
# options other than the keyword parameters of `convert` override fields of the converted config
CONFIG_OVERRIDES = VisualBertConfig

logger = logging.getLogger(__name__)

KEY_MAP = KeyMap(
    renames=[
        (
            r"^bert\.bert\.embeddings\.token_type_embeddings_visual\.",
            "visual_bert.embeddings.visual_token_type_embeddings.",
        ),
        (
            r"^bert\.bert\.embeddings\.position_embeddings_visual\.",
            "visual_bert.embeddings.visual_position_embeddings.",
        ),
        (r"^bert\.bert\.embeddings\.projection\.", "visual_bert.embeddings.visual_projection."),
        (r"^bert\.bert\.", "visual_bert."),
        (r"^bert\.cls\.", "cls."),
        (r"^bert\.classifier\.", "cls."),
    ],
    drops=[
        (r"^bert\.cls\.predictions\.decoder\.weight$", "tied copy of the word embeddings (checked equal)"),
        (r"^detector\.", "VCR's r2c detector (ResNet-50 + RoI pooling): transformers has no such module"),
    ],
)

# transformers ties `cls.predictions.decoder.bias` to `cls.predictions.bias`; the original stores only the latter
DECODER_BIAS = ("cls.predictions.bias", "cls.predictions.decoder.bias")

HEAD_CLASSES = {
    "pretraining": VisualBertForPreTraining,
    "vqa": VisualBertForVisualQuestionAnswering,
    "nlvr": VisualBertForVisualReasoning,
    "multichoice": VisualBertForMultipleChoice,
}

# bert model name of the original training configs -> attention heads (not stored in the weights)
HEADS_BY_BERT_NAME = {"bert-base-uncased": 12, "bert-base-cased": 12, "bert-large-uncased": 16, "bert-large-cased": 16}


def _strip_module_prefix(state):
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def read_original_config(config):
    """(bert sizes dict, training head type or None) from a bert_config.json or a training config JSON."""
    if config is None:
        return {}, None
    original = config if isinstance(config, dict) else read_json(config)
    if "model" in original and isinstance(original["model"], dict):  # a training config (configs/*/*.json)
        model = original["model"]
        if model.get("bypass_transformer"):
            raise ConversionError(
                "training configs with bypass_transformer=true are not supported (no released model uses it)"
            )
        sizes = {}
        name = original.get("bert_model_name")
        if name in HEADS_BY_BERT_NAME:
            sizes["num_attention_heads"] = HEADS_BY_BERT_NAME[name]
        return sizes, model.get("training_head_type")
    return original, None


def head_type_from_keys(state, declared=None):
    """The original `training_head_type` the keys belong to (`declared` from the training config wins)."""
    if "bert.cls.seq_relationship.weight" in state or "bert.cls.predictions.bias" in state:
        head = "pretraining"
    elif "bert.classifier.weight" in state:
        outputs = state["bert.classifier.weight"].shape[0]
        head = {1: "multichoice", 2: "nlvr"}.get(outputs, "vqa")
    else:
        raise ConversionError("the checkpoint has no VisualBERT head (bert.cls.* or bert.classifier.*)")
    if declared is not None:
        if declared not in HEAD_CLASSES:
            raise ConversionError(
                f"training_head_type {declared!r} is not supported; supported: {sorted(HEAD_CLASSES)}"
            )
        if (declared == "pretraining") != (head == "pretraining"):
            raise ConversionError(
                f"the training config says {declared!r} but the checkpoint keys are those of {head!r}"
            )
        head = declared
    return head


def config_from_original(state, sizes: dict, head: str, **overrides) -> VisualBertConfig:
    """VisualBertConfig from the tensor shapes, completed by the original BERT config (heads, dropout, act)."""
    words = state["bert.bert.embeddings.word_embeddings.weight"]
    layers = {int(k.split(".")[4]) for k in state if k.startswith("bert.bert.encoder.layer.")}
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
        num_hidden_layers=len(layers),
        intermediate_size=state["bert.bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["bert.bert.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["bert.bert.embeddings.token_type_embeddings.weight"].shape[0],
        visual_embedding_dim=state["bert.bert.embeddings.projection.weight"].shape[1],
        layer_norm_eps=1e-12,  # BertLayerNorm / apex FusedLayerNorm with eps 1e-12 everywhere
        pad_token_id=0,  # bert-base-uncased's [PAD]
        special_visual_initialize=False,  # the visual tables are stored tensors, not copies of the text ones
    )
    if "num_attention_heads" not in kwargs:
        if kwargs["hidden_size"] != 768:
            raise ConversionError(
                f"the number of attention heads is not stored in the weights and hidden size {kwargs['hidden_size']} "
                "is not bert-base's: pass the original bert_config.json (or training config) as `config`"
            )
        kwargs["num_attention_heads"] = 12  # bert-base-uncased, the backbone of every released VisualBERT
    for k in ("hidden_size", "intermediate_size", "vocab_size", "num_hidden_layers"):
        if k in sizes and sizes[k] != kwargs[k]:
            raise ConversionError(f"the config says {k}={sizes[k]} but the weights have {kwargs[k]} (wrong config?)")
    if layers != set(range(len(layers))):
        raise ConversionError(f"encoder layer indices are not contiguous: {sorted(layers)}")
    if head != "pretraining":
        kwargs["num_labels"] = state["bert.classifier.weight"].shape[0]
    kwargs.update(overrides)
    return VisualBertConfig(**kwargs)


def convert(checkpoint, config=None, head=None, training_config=None, **options):
    """Original VisualBERT checkpoint -> the hf_vlp model of its head (pre-training, VQA, NLVR2, VCR).

    `config`: bert_config.json or the original training config (sizes / head type); `training_config`: the
    training config when `config` is the bert config (its `model.training_head_type` is checked against the keys);
    `head`: force the original `training_head_type` ("pretraining", "vqa", "nlvr", "multichoice"); other options
    override config fields.
    """
    overrides = _config_overrides(options)
    state = _strip_module_prefix(load_checkpoint(checkpoint))
    if "bert.bert.embeddings.word_embeddings.weight" not in state:
        raise ConversionError(
            f"{checkpoint} is not an original VisualBERT checkpoint: no 'bert.bert.embeddings.word_embeddings.weight' "
            f"(first keys: {list(state)[:5]})"
        )
    if "bert.bert.embeddings.projection.weight" not in state:
        raise ConversionError(f"{checkpoint} is a BERT checkpoint without VisualBERT's region embeddings (projection)")
    sizes, declared_head = read_original_config(config)
    if training_config is not None:
        declared_head = read_original_config(training_config)[1] or declared_head
    head = head_type_from_keys(state, head or declared_head)
    hf_config = config_from_original(state, sizes, head, **overrides)

    decoder = state.get("bert.cls.predictions.decoder.weight")
    if decoder is not None and not torch.equal(decoder, state["bert.bert.embeddings.word_embeddings.weight"]):
        raise ConversionError("bert.cls.predictions.decoder.weight differs from the word embeddings it is tied to")

    mapped, dropped = KEY_MAP.apply(state)
    detector = [k for k in dropped if k.startswith("detector.")]
    if detector:
        logger.warning(
            "dropped %d detector.* keys (VCR's r2c detector; transformers has no such module): the converted model "
            "expects 512-d region features from the original detector, computed elsewhere",
            len(detector),
        )
    if DECODER_BIAS[0] in mapped:
        mapped[DECODER_BIAS[1]] = mapped[DECODER_BIAS[0]]
    model = HEAD_CLASSES[head](hf_config)
    return load_mapped_state(model, mapped).eval()


def _config_overrides(options):
    return check_options(convert, options, CONFIG_OVERRIDES)


# ------------------------------------------------------------------------------------------------------------------
# --verify: recompute the outputs of shared/fixtures/visual_bert (README there) with the converted model
# ------------------------------------------------------------------------------------------------------------------


def fixture_batch(inputs: dict, prefix: str) -> dict:
    """An original batch (`<prefix>.<argument>`) -> transformers keyword arguments."""
    features = inputs[f"{prefix}.image_feat_variable"]
    regions = features.shape[1]
    batch = dict(
        input_ids=inputs[f"{prefix}.bert_input_ids"],
        attention_mask=inputs[f"{prefix}.bert_input_mask"],
        token_type_ids=inputs[f"{prefix}.bert_input_type_ids"],
        visual_embeds=features,
        visual_attention_mask=(torch.arange(regions)[None] < inputs[f"{prefix}.image_dim_variable"][:, None]).long(),
    )
    if f"{prefix}.visual_embeddings_type" in inputs:  # NLVR2-style two-image batches; otherwise the default 0
        batch["visual_token_type_ids"] = inputs[f"{prefix}.visual_embeddings_type"]
    return batch


def vqa_soft_accuracy(logits, labels):
    """The original's batch VQA accuracy: argmax over the answers except index 0 (the unknown answer, masked out
    by `masked_unk_softmax`), scored by its soft label, averaged over the batch."""
    probabilities = F.softmax(logits.float(), dim=-1)
    probabilities[:, 0] = 0
    best = probabilities.argmax(-1)
    return labels.gather(1, best[:, None]).sum() / labels.shape[0]


def _backbone_outputs(outputs, pooler, prefix):
    hidden = outputs.hidden_states
    result = {f"{prefix}.embedding_output": hidden[0], f"{prefix}.sequence_output": hidden[-1]}
    for layer, state in enumerate(hidden[1:]):
        result[f"{prefix}.encoded_layers.{layer}"] = state
    result[f"{prefix}.pooled_output"] = pooler(hidden[-1])
    return result


def fixture_outputs(model, fixture_dir):
    from safetensors import safe_open
    from safetensors.torch import load_file

    fixture_dir = Path(fixture_dir)
    inputs = load_file(fixture_dir / "inputs.safetensors")
    batches = sorted({name.split(".")[0] for name in inputs})
    outputs = {}
    pretraining = isinstance(model, VisualBertForPreTraining)
    vqa = isinstance(model, VisualBertForVisualQuestionAnswering)
    pooler = model.visual_bert.pooler

    for prefix in batches:
        batch = fixture_batch(inputs, prefix)
        if prefix.startswith("pretrain") and pretraining:
            labels = inputs.get(f"{prefix}.masked_lm_labels")
            matched = inputs.get(f"{prefix}.is_random_next")
            result = model(
                **batch,
                labels=None if labels is None else labels.masked_fill(labels == -1, -100),
                sentence_image_labels=matched,
                output_hidden_states=True,
            )
            outputs.update(_backbone_outputs(result, pooler, prefix))
            outputs[f"{prefix}.seq_relationship_score"] = result.seq_relationship_logits
            outputs[f"{prefix}.logits_text"] = result.prediction_logits[:, : batch["input_ids"].shape[1]]
            if result.masked_lm_loss is not None:
                outputs[f"{prefix}.masked_lm_loss"] = result.masked_lm_loss
            if result.sentence_image_loss is not None:
                outputs[f"{prefix}.next_sentence_loss"] = result.sentence_image_loss
            if result.loss is not None:
                outputs[f"{prefix}.loss"] = result.loss
        elif prefix == "vqa" and vqa:
            result = model(**batch, labels=inputs["vqa.label"], output_hidden_states=True)
            outputs.update(_backbone_outputs(result, pooler, prefix))
            outputs["vqa.logits"] = result.logits[:, None]  # the original keeps a singleton axis: [B, 1, answers]
            outputs["vqa.loss"] = result.loss
            outputs["vqa.accuracy"] = vqa_soft_accuracy(result.logits, inputs["vqa.label"])

    with safe_open(fixture_dir / "outputs.safetensors", "pt") as reference:
        for name in reference.keys():
            if name not in outputs:
                if name.startswith("pretrain") and not pretraining:
                    outputs[name] = Skipped("computed with the pre-training checkpoint")
                elif name.startswith("vqa.") and not vqa:
                    outputs[name] = Skipped("computed with the fine-tuned VQA checkpoint")
    return outputs
