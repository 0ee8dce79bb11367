"""Convert original Oscar / VinVL checkpoints (github.com/microsoft/Oscar) to hf_vlp.

Accepted: a released checkpoint folder (`pytorch_model.bin` + `config.json` [+ `vocab.txt`, `training_args.bin`]) or
the `pytorch_model.bin` file with `--config`. The original class is recognised from the keys:

| keys | original class | hf_vlp class |
| --- | --- | --- |
| `cls.predictions.*` + `cls.seq_relationship.*` | `BertImgForPreTraining` | `OscarForPreTraining` |
| `cls.predictions.*` only | `BertForImageCaptioning` | `OscarForConditionalGeneration` |
| `classifier.*` on `hidden_size` inputs | `ImageBertForSequenceClassification` | `OscarForVisualQuestionAnswering` (VQA, GQA), `OscarForImageTextRetrieval` (`finetuning_task` "ir" or `head="retrieval"`) |
| `classifier.*` on `num_choice * hidden_size` inputs | `ImageBertForMultipleChoice` | `OscarForVisualReasoning` |

Oscar v1 and VinVL differ only in config: `use_img_layernorm` (the image LayerNorm `bert.LayerNorm.*`, and the
middle LayerNorm of the NLVR2 MLP head) and the size of `cls.seq_relationship` (2 or 3 contrastive classes).

Input mapping (original batch -> hf_vlp): `img_feats[..., :2048]` -> `visual_feats`, `img_feats[..., 2048:2052]` ->
`visual_pos` (the model derives w, h itself); a 2-D `attention_mask` (B, T + R) splits into `attention_mask[:, :T]`
and `visual_attention_mask[:, T:]`; a 3-D captioning mask may be passed as is; `masked_lm_labels` -1 -> `labels`
-100 over the text part; `next_sentence_label` -> `contrastive_labels`; captioning `masked_pos` / `masked_ids` ->
`labels` holding `masked_ids` at the `masked_pos` positions.
"""

import argparse
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from hf_vlp.layers import BOX_FEATURE_SIZES
from hf_vlp.modeling.oscar import (
    OscarConfig,
    OscarForConditionalGeneration,
    OscarForImageTextRetrieval,
    OscarForPreTraining,
    OscarForVisualQuestionAnswering,
    OscarForVisualReasoning,
)

from .common import (
    ConversionError,
    KeyMap,
    Masked,
    Skipped,
    check_options,
    load_checkpoint,
    load_mapped_state,
    read_json,
)

logger = logging.getLogger(__name__)

# shared/fixtures/oscar/README.md: atol 1e-4 for hidden states (vocabulary logits matched within 2e-5, losses 2e-6);
# no relative term. Captioning rows of the all-masked padding are compared only where valid (`Masked`).
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 0.0

KEY_MAP = KeyMap(
    renames=[
        (r"^bert\.embeddings\.", "oscar.embeddings."),
        (r"^bert\.encoder\.", "oscar.encoder."),
        (r"^bert\.pooler\.", "oscar.pooler."),
        (r"^bert\.img_embedding\.", "oscar.region_embeddings.projection."),
        (r"^bert\.LayerNorm\.", "oscar.region_embeddings.LayerNorm."),  # VinVL's image LayerNorm
        (r"^cls\.predictions\.decoder\.weight$", "mlm_head.decoder.weight"),
        (r"^cls\.predictions\.bias$", "mlm_head.decoder.bias"),
        (r"^cls\.predictions\.transform\.", "mlm_head.transform."),
        (r"^cls\.seq_relationship\.", "contrastive_head."),
        (r"^classifier\.", "classifier."),
    ],
    drops=[
        (r"^cls\.predictions\.decoder\.bias$", "duplicate of cls.predictions.bias written by newer transformers"),
    ],
)

TIED_DECODER_DROP = (r"^cls\.predictions\.decoder\.weight$", "tied to bert.embeddings.word_embeddings.weight")

RETRIEVAL_TASKS = ("ir", "retrieval", "coco_ir", "flickr_ir")


def _checkpoint_files(checkpoint: Path, config):
    if checkpoint.is_dir():
        weights = checkpoint / "pytorch_model.bin"
        if not weights.exists():
            candidates = sorted(checkpoint.glob("*.bin")) + sorted(checkpoint.glob("*.safetensors"))
            candidates = [c for c in candidates if c.name != "training_args.bin"]
            if len(candidates) != 1:
                raise ConversionError(f"{checkpoint}: expected pytorch_model.bin, found {[c.name for c in candidates]}")
            weights = candidates[0]
        folder = checkpoint
    else:
        weights, folder = checkpoint, checkpoint.parent
    if config is None:
        config = folder / "config.json"
        if not config.exists():
            raise ConversionError(f"no config.json next to {weights}: pass the original config with --config")
    return weights, config, folder


def _training_args(folder: Path):
    """`training_args.bin` (a pickled argparse.Namespace) read with weights_only=True and Namespace allow-listed."""
    path = folder / "training_args.bin"
    if not path.exists():
        return {}
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            args = torch.load(path, map_location="cpu", weights_only=True)
        return vars(args)
    except Exception as error:  # not needed for the weights; only the captioning tag offset comes from it
        logger.warning("could not read %s (%s); captioning settings fall back to defaults", path, error)
        return {}


def _special_token_ids(folder: Path) -> dict:
    """[PAD]/[CLS]/[SEP]/[MASK] ids from the folder's vocab.txt (bert-base-uncased: 0/101/102/103)."""
    vocab = folder / "vocab.txt"
    if not vocab.exists():
        return {}
    index = {token.rstrip("\n"): i for i, token in enumerate(vocab.read_text(encoding="utf-8").splitlines())}
    names = {"pad_token_id": "[PAD]", "bos_token_id": "[CLS]", "eos_token_id": "[SEP]", "mask_token_id": "[MASK]"}
    return {key: index[token] for key, token in names.items() if token in index}


def _model_class(state, original, head):
    if "cls.seq_relationship.weight" in state:
        return OscarForPreTraining
    if "cls.predictions.bias" in state:
        return OscarForConditionalGeneration
    first = "classifier.weight" if "classifier.weight" in state else "classifier.0.weight"
    if first not in state:
        raise ConversionError(
            "no Oscar head found (cls.predictions.*, cls.seq_relationship.*, classifier.*); a bare BertImgModel "
            f"state dict cannot be told apart from a head checkpoint: first keys {list(state)[:5]}"
        )
    hidden = state["bert.embeddings.word_embeddings.weight"].shape[1]
    if state[first].shape[1] != hidden:
        return OscarForVisualReasoning
    if head == "retrieval" or (head is None and original.get("finetuning_task") in RETRIEVAL_TASKS):
        return OscarForImageTextRetrieval
    if head not in (None, "vqa"):
        raise ConversionError(
            f"`head` must be 'vqa' or 'retrieval' for a sequence-classification checkpoint, got {head!r}"
        )
    return OscarForVisualQuestionAnswering


def config_from_original(
    original: dict, state: dict, model_class, box_feature_kind="xyxy_wh", **overrides
) -> OscarConfig:
    """OscarConfig from the original config.json, with every size checked against the tensor shapes."""
    known = [
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "max_position_embeddings",
        "type_vocab_size",
        "initializer_range",
        "layer_norm_eps",
    ]
    kwargs = {k: original[k] for k in known if k in original}
    if "num_attention_heads" not in kwargs:
        raise ConversionError("config.json must give num_attention_heads (it is not in the tensor shapes)")
    if str(original.get("img_feature_type", "")).startswith("dis_code"):
        raise ConversionError(
            "img_feature_type 'dis_code*' (discrete region codes) is not supported; only region features"
        )
    words = state["bert.embeddings.word_embeddings.weight"]
    kwargs["vocab_size"], kwargs["hidden_size"] = words.shape
    kwargs["max_position_embeddings"] = state["bert.embeddings.position_embeddings.weight"].shape[0]
    kwargs["type_vocab_size"] = state["bert.embeddings.token_type_embeddings.weight"].shape[0]
    kwargs["num_hidden_layers"] = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("bert.encoder.layer."))
    kwargs["intermediate_size"] = state["bert.encoder.layer.0.intermediate.dense.weight"].shape[0]

    # regions: Linear(img_feature_dim -> hidden), img_feature_dim = feature + location vector
    img_feature_dim = state["bert.img_embedding.weight"].shape[1]
    if original.get("img_feature_dim", img_feature_dim) != img_feature_dim:
        raise ConversionError(
            f"config img_feature_dim={original['img_feature_dim']} but bert.img_embedding takes {img_feature_dim}"
        )
    box = BOX_FEATURE_SIZES[box_feature_kind] if box_feature_kind is not None else 0
    if img_feature_dim <= box:
        raise ConversionError(f"img_feature_dim {img_feature_dim} leaves no room for a {box}-d location vector")
    kwargs["visual_feat_dim"] = img_feature_dim - box
    kwargs["box_feature_kind"] = box_feature_kind

    # the image LayerNorm: the flag decides in the original; its keys must agree
    use_ln = bool(original.get("use_img_layernorm", 0))
    has_ln = "bert.LayerNorm.weight" in state
    if use_ln != has_ln:
        raise ConversionError(
            f"config use_img_layernorm={original.get('use_img_layernorm')} but the checkpoint "
            f"{'has' if has_ln else 'lacks'} bert.LayerNorm.*: the original would "
            f"{'ignore those weights' if has_ln else 'apply a freshly initialised LayerNorm'}; fix config.json"
        )
    kwargs["use_img_layer_norm"] = use_ln
    kwargs["img_layer_norm_eps"] = original.get("img_layer_norm_eps", 1e-12)

    if "cls.seq_relationship.weight" in state:
        kwargs["num_contrast_classes"] = state["cls.seq_relationship.weight"].shape[0]
    elif "num_contrast_classes" in original:
        kwargs["num_contrast_classes"] = original["num_contrast_classes"]

    hidden = kwargs["hidden_size"]
    if "classifier.weight" in state:  # linear head
        kwargs["classifier_type"] = "linear"
        in_size, num_labels = state["classifier.weight"].shape[1], state["classifier.weight"].shape[0]
    elif "classifier.0.weight" in state:  # Linear, ReLU, [LayerNorm], Linear
        kwargs["classifier_type"] = "mlp"
        width, in_size = state["classifier.0.weight"].shape
        if width % hidden:
            raise ConversionError(f"classifier.0 width {width} is not a multiple of hidden_size {hidden}")
        kwargs["classifier_hidden_scale"] = width // hidden
        has_middle_ln = "classifier.3.weight" in state
        last = "classifier.3.weight" if has_middle_ln else "classifier.2.weight"
        num_labels = state[last].shape[0]
        kwargs["classifier_layer_norm"] = has_middle_ln
        if has_middle_ln and model_class is not OscarForVisualReasoning:
            raise ConversionError("a LayerNorm inside the classifier exists only in the NLVR2 (multiple-choice) head")
    if "classifier" in original and kwargs.get("classifier_type", original["classifier"]) != original["classifier"]:
        raise ConversionError(f"config classifier={original['classifier']!r} disagrees with the classifier keys")
    if model_class is OscarForVisualReasoning:
        if in_size % hidden:
            raise ConversionError(f"NLVR2 classifier input {in_size} is not a multiple of hidden_size {hidden}")
        kwargs["num_choices"] = in_size // hidden
        if original.get("num_choice", kwargs["num_choices"]) != kwargs["num_choices"]:
            raise ConversionError(
                f"config num_choice={original['num_choice']} but the classifier takes {kwargs['num_choices']} pooled vectors"
            )
    if model_class in (OscarForVisualQuestionAnswering, OscarForVisualReasoning):
        kwargs["num_labels"] = num_labels
    elif model_class is OscarForImageTextRetrieval:
        if num_labels != 2:
            raise ConversionError(f"a retrieval head has 2 outputs (match / no match), this one has {num_labels}")
        kwargs["num_labels"] = 2
    # VQA loss: the original's `loss_type` bce (VQA v2) or xe / sfmx (one answer per question)
    kwargs["vqa_loss"] = "bce" if original.get("loss_type") == "bce" else "ce"

    # captioning training options stored in config.json by run_captioning.py
    kwargs["caption_label_smoothing"] = original.get("label_smoothing", 0.0)
    kwargs["caption_drop_worst_ratio"] = original.get("drop_worst_ratio", 0.0)
    kwargs["caption_drop_worst_after"] = original.get("drop_worst_after", 0)
    kwargs["freeze_word_embeddings"] = bool(original.get("freeze_embedding", False))
    kwargs.update(overrides)
    return OscarConfig(**kwargs)


def convert(checkpoint, config=None, head=None, box_feature_kind="xyxy_wh", tag_position_offset=None, **options):
    """Original Oscar / VinVL checkpoint (folder or `pytorch_model.bin`) -> hf_vlp model with the matching head.

    head: "vqa" or "retrieval" for `ImageBertForSequenceClassification` checkpoints (default: retrieval when
        `finetuning_task` is "ir", else VQA).
    tag_position_offset: for captioning, the training `max_seq_a_length` (position of the first tag); read from
        `training_args.bin` when the folder has it, else `OscarConfig`'s default (40, the released models).
    """
    check_options(convert, options)
    if isinstance(box_feature_kind, str) and box_feature_kind.lower() == "none":  # from `--option` on the CLI
        box_feature_kind = None
    weights, config_path, folder = _checkpoint_files(Path(checkpoint), config)
    original = config if isinstance(config, dict) else read_json(config_path)
    state = load_checkpoint(weights)
    if "bert.embeddings.word_embeddings.weight" not in state or "bert.img_embedding.weight" not in state:
        raise ConversionError(
            f"{weights} is not an Oscar checkpoint: no bert.embeddings.word_embeddings / bert.img_embedding "
            f"(first keys: {list(state)[:5]})"
        )
    model_class = _model_class(state, original, head)
    overrides = _special_token_ids(folder)

    # the MLM decoder: BertImgForPreTraining always ties it to the word embeddings, BertForImageCaptioning when
    # `tie_weights` is set; tying happens after loading, so the stored decoder is then unused
    key_map = KEY_MAP
    if "cls.predictions.bias" in state:
        tied = model_class is OscarForPreTraining or bool(original.get("tie_weights", False))
        overrides["tie_word_embeddings"] = tied
        if tied:
            decoder = state.get("cls.predictions.decoder.weight")
            if decoder is not None and not torch.equal(decoder, state["bert.embeddings.word_embeddings.weight"]):
                logger.warning("the stored decoder differs from the word embeddings; the original ties them, so do we")
            key_map = KeyMap(KEY_MAP.renames, [TIED_DECODER_DROP, *KEY_MAP.drops], KEY_MAP.transforms)
        elif "cls.predictions.decoder.weight" not in state:
            raise ConversionError("an untied captioning checkpoint must contain cls.predictions.decoder.weight")
    if model_class is OscarForConditionalGeneration:
        args = _training_args(folder)
        if tag_position_offset is None and "max_seq_a_length" in args:
            tag_position_offset = args["max_seq_a_length"]
        if tag_position_offset is not None:
            overrides["caption_tag_position_offset"] = int(tag_position_offset)
        if "max_gen_length" in args:
            overrides["caption_max_length"] = int(args["max_gen_length"])

    hf_config = config_from_original(original, state, model_class, box_feature_kind, **overrides)
    mapped, _dropped = key_map.apply(state)
    model = model_class(hf_config)
    return load_mapped_state(model, mapped).eval()


def build_processor(checkpoint, config=None, tokenizer=None):
    """An `OscarProcessor` for a converted checkpoint folder: its own `vocab.txt` (lower-cased WordPiece, as the
    original `BertTokenizer(do_lower_case=True)`) + the region-feature processor. Object tags are then given as
    class names (`region_labels`); None if the folder has no vocabulary."""
    from transformers import BertTokenizer

    from hf_vlp.modeling.oscar import OscarProcessor
    from hf_vlp.processing.region import RegionFeatureProcessor

    folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    folder = Path(tokenizer) if tokenizer else folder  # --tokenizer DIR overrides the checkpoint folder's vocab
    if not (folder / "vocab.txt").exists():
        return None
    tokenizer = BertTokenizer.from_pretrained(str(folder), do_lower_case=True)
    return OscarProcessor(RegionFeatureProcessor(), tokenizer)


# ------------------------------------------------------------------------------------------------------------------
# --verify: recompute the outputs of shared/fixtures/oscar (README there) with the converted model
# ------------------------------------------------------------------------------------------------------------------

PREFIXES = {
    OscarForPreTraining: "pretrain.",
    OscarForVisualQuestionAnswering: "vqa.",
    OscarForVisualReasoning: "nlvr2.",
    OscarForConditionalGeneration: "captioning",  # captioning.* and captioning_gen.*
}


def region_inputs(img_feats, visual_feat_dim):
    """The original's `img_feats` (..., feature + 6) -> (`visual_feats`, `visual_pos`)."""
    return img_feats[..., :visual_feat_dim], img_feats[..., visual_feat_dim : visual_feat_dim + 4]


def fixture_batch(inputs, prefix, visual_feat_dim):
    """An original batch with a 2-D joint attention mask -> hf_vlp keyword arguments."""
    input_ids = inputs[prefix + "input_ids"]
    text_len = input_ids.shape[-1]
    mask = inputs[prefix + "attention_mask"]
    visual_feats, visual_pos = region_inputs(inputs[prefix + "img_feats"], visual_feat_dim)
    return dict(
        input_ids=input_ids,
        token_type_ids=inputs[prefix + "token_type_ids"],
        attention_mask=mask[..., :text_len],
        visual_feats=visual_feats,
        visual_pos=visual_pos,
        visual_attention_mask=mask[..., text_len:],
    )


def caption_batch(inputs, prefix, visual_feat_dim):
    """A captioning batch with the original's 3-D mask -> hf_vlp keyword arguments with (B, T) / (B, R) padding
    masks (the diagonal of the 3-D mask: padding rows and columns are all zero there); the model rebuilds the
    captioning mask from them and the segment ids."""
    input_ids = inputs[prefix + "input_ids"]
    text_len = input_ids.shape[1]
    valid = inputs[prefix + "attention_mask"].diagonal(dim1=1, dim2=2).long()
    visual_feats, visual_pos = region_inputs(inputs[prefix + "img_feats"], visual_feat_dim)
    return dict(
        input_ids=input_ids,
        token_type_ids=inputs[prefix + "token_type_ids"],
        attention_mask=valid[:, :text_len],
        visual_feats=visual_feats,
        visual_pos=visual_pos,
        visual_attention_mask=valid[:, text_len:],
    )


def fixture_outputs(model, fixture_dir):
    from safetensors.torch import load_file

    fixture_dir = Path(fixture_dir)
    inputs = load_file(fixture_dir / "inputs.safetensors")
    meta_path = fixture_dir / "fixture_meta.json"
    meta = read_json(meta_path) if meta_path.exists() else {}
    reference = load_file(fixture_dir / "outputs.safetensors")
    reference_names = list(reference)
    dim = model.config.visual_feat_dim

    outputs = {}
    if isinstance(model, OscarForPreTraining):
        outputs.update(_pretraining_outputs(model, inputs, dim))
    elif isinstance(model, OscarForVisualQuestionAnswering):
        outputs.update(_vqa_outputs(model, inputs, dim))
    elif isinstance(model, OscarForVisualReasoning):
        outputs.update(_nlvr2_outputs(model, inputs, dim))
    elif isinstance(model, OscarForConditionalGeneration):
        outputs.update(_captioning_outputs(model, inputs, dim, reference))
        outputs.update(_generation_outputs(model, inputs, dim, meta.get("captioning_generation_params", {})))
    own = PREFIXES.get(type(model))
    for name in reference_names:
        if name not in outputs:
            checkpoint = name.split(".")[0]
            outputs[name] = Skipped(
                f"needs the {checkpoint.replace('_gen', '')} checkpoint"
                if own is None or not name.startswith(own)
                else "not computed by this converter"
            )
    return outputs


def _pretraining_outputs(model, inputs, dim):
    batch = fixture_batch(inputs, "pretrain.", dim)
    text_len = batch["input_ids"].shape[1]
    original_labels = inputs["pretrain.masked_lm_labels"]
    if (original_labels[:, text_len:] != -1).any():
        raise ConversionError("the fixture masks region positions; Oscar masks words and tags only")
    labels = original_labels[:, :text_len].masked_fill(original_labels[:, :text_len] == -1, -100)
    trained = model(**batch, labels=labels, contrastive_labels=inputs["pretrain.next_sentence_label"])
    plain = model(**batch, output_hidden_states=True)
    encoded = model.oscar(**batch)
    return {
        "pretrain.sequence_output": encoded.last_hidden_state,
        "pretrain.pooled_output": encoded.pooler_output,
        # mlm_logits are row-major over the masked positions, the order of `masked_positions`
        "pretrain.prediction_scores_at_masked": trained.mlm_logits,
        "pretrain.prediction_scores_cls_token": plain.prediction_logits[:, 0],
        "pretrain.seq_relationship_score": trained.contrastive_logits,
        "pretrain.total_loss": trained.loss,
        "pretrain.masked_lm_loss": trained.mlm_loss,
    }


def _vqa_outputs(model, inputs, dim):
    batch = fixture_batch(inputs, "vqa.", dim)
    result = model(**batch, labels=inputs["vqa.labels"])
    encoded = model.oscar(**batch)
    return {
        "vqa.sequence_output": encoded.last_hidden_state,
        "vqa.pooled_output": encoded.pooler_output,
        "vqa.logits": result.logits,
        "vqa.loss": result.loss,
    }


def _nlvr2_outputs(model, inputs, dim):
    batch = fixture_batch(inputs, "nlvr2.", dim)
    result = model(**batch, labels=inputs["nlvr2.labels"])
    encoded = model.oscar(**{k: v.flatten(0, 1) for k, v in batch.items()})
    return {
        "nlvr2.sequence_output": encoded.last_hidden_state,
        "nlvr2.pooled_output": encoded.pooler_output,
        "nlvr2.logits": result.logits,
        "nlvr2.loss": result.loss,
    }


def _captioning_outputs(model, inputs, dim, reference):
    batch = caption_batch(inputs, "captioning.", dim)
    text_len = batch["input_ids"].shape[1]
    full_mask = inputs["captioning.attention_mask"]
    own_valid = full_mask.any(dim=-1).long()  # rows that attend to something
    # the model's own captioning mask must equal the original's on every valid row
    ours = model._caption_mask(
        batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["visual_feats"],
        batch["visual_pos"], batch["visual_attention_mask"],
    )[0]  # fmt: skip
    if not torch.equal(ours, full_mask.long()):
        raise ConversionError("the captioning mask built from padding masks and segment ids differs from the fixture's")

    masked_pos = inputs["captioning.masked_pos"].bool()
    masked_ids = inputs["captioning.masked_ids"]
    labels = torch.full_like(batch["input_ids"], -100)
    labels[masked_pos] = masked_ids[masked_ids != 0]  # both row-major, as the original pairs them
    trained = model(**batch, labels=labels)
    plain = model(**batch)
    encoded = model.oscar(
        **{k: v for k, v in batch.items() if k not in ("attention_mask", "visual_attention_mask")}, attention_mask=ours
    )
    # README: every 97th vocabulary id plus every id occurring in the captioning inputs; the logits are compared
    # on the fixture's own list (the README defines the subset by it), our reconstruction is checked against it
    vocab = model.config.vocab_size
    subset = torch.cat([torch.arange(0, vocab, 97), batch["input_ids"].flatten(), masked_ids.flatten()]).unique()
    compared = reference.get("captioning.eval_logits_vocab_subset_ids", subset)
    outputs = {
        "captioning.masked_loss": trained.loss,
        "captioning.class_logits_masked": trained.masked_logits,
        "captioning.pooled_output": encoded.pooler_output,
        "captioning.valid_row_mask": own_valid,
    }
    outputs["captioning.eval_logits_argmax"] = plain.logits.argmax(-1)
    outputs["captioning.eval_logits_vocab_subset_ids"] = subset
    outputs["captioning.sequence_output"] = _valid_rows_only(
        "captioning.sequence_output", encoded.last_hidden_state, own_valid, reference
    )
    outputs["captioning.eval_logits_subset"] = _valid_rows_only(
        "captioning.eval_logits_subset", plain.logits[..., compared], own_valid[:, :text_len], reference
    )
    return outputs


def _valid_rows_only(name, produced, valid, reference):
    """README: compare captioning `sequence_output` / `eval_logits_subset` on valid rows only. A padding row of the
    original's 3-D mask is all zero, so the original attends there over every key with scores shifted by -10000,
    and fp32 rounding at that magnitude moves those rows by up to ~2e-3; no loss or decoding reads them."""
    return Masked(produced, valid, "valid rows only: README excludes padding rows of the 3-D mask")


def _generation_outputs(model, inputs, dim, params):
    """README: greedy and 2-beam captions of the original `generate()` with its cached ("past") decoding. Greedy goes
    through `model.generate` (transformers' GenerationMixin); the beams need the released beam search with its cache
    quirk (`original_beam_search`)."""
    batch = caption_batch(inputs, "captioning_gen.", dim)
    config = model.config
    mask_token_id = params.get("mask_token_id", config.mask_token_id)
    if mask_token_id != config.mask_token_id:
        raise ConversionError(f"the fixture decodes at [MASK]={mask_token_id}, the config says {config.mask_token_id}")
    max_length = params.get("max_length") or config.caption_max_length
    special = {
        "bos_token_id": params.get("bos_token_id", config.bos_token_id),
        "eos_token_id": (params.get("eos_token_ids") or [config.eos_token_id])[0],
        "pad_token_id": params.get("pad_token_id", config.pad_token_id),
    }
    offset = params.get("od_labels_start_posid", config.caption_tag_position_offset)
    batch_size = batch["input_ids"].shape[0]
    greedy = model.generate(
        **batch, max_length=max_length, tag_position_offset=offset, forced_eos_token_id=special["eos_token_id"],
        return_dict_in_generate=True, output_logits=True, **special,
    )  # fmt: skip
    greedy_ids = F.pad(greedy.sequences, (0, max_length - greedy.sequences.shape[1]), value=special["pad_token_id"])
    beam_ids, beam_scores = original_beam_search(
        model, batch, num_beams=2, max_length=max_length, length_penalty=params.get("length_penalty", 1.0),
        tag_position_offset=offset, **special,
    )  # fmt: skip
    return {
        "captioning_gen.greedy_ids": greedy_ids.view(batch_size, 1, -1),
        "captioning_gen.greedy_logprobs": original_greedy_scores(
            greedy.sequences, greedy.logits, special["eos_token_id"]
        ).view(batch_size, 1),
        "captioning_gen.beam2_ids": beam_ids,
        "captioning_gen.beam2_logprobs": beam_scores,
    }


def original_greedy_scores(sequences, step_logits, eos_token_id):
    """The released greedy search's caption score from `generate(..., output_logits=True)`: the mean log-probability
    of the argmax token of each step up to the first [SEP]. A forced final [SEP] counts with the log-probability of
    the argmax it replaced, as the original overwrites that token after scoring it."""
    step_log_probs = torch.stack(step_logits, dim=1).float().log_softmax(-1).max(-1).values  # (B, steps)
    is_eos = (sequences[:, 1:] == eos_token_id).long()
    counted = (is_eos.cumsum(1) - is_eos) == 0  # steps up to and including the first [SEP]
    return (step_log_probs * counted).sum(1) / counted.sum(1)


@torch.no_grad()
def original_beam_search(
    model, batch, num_beams, max_length, length_penalty=1.0, num_return_sequences=1, tag_position_offset=None,
    bos_token_id=None, eos_token_id=None, pad_token_id=None,
):  # fmt: skip
    """The released cached beam search (`CaptionPreTrainedModel._generate_beam_search`, `output_hidden_states=True`),
    kept only to verify the fixture's `beam2_*` outputs; `model.generate(num_beams=...)` is the search to use.

    Per step the `2 * num_beams` best (beam, token) continuations are read in order of score; a [SEP] (or any token
    at the last step) closes a hypothesis `sequence so far + [SEP]` scored `sum log p / cur_len ** length_penalty`;
    the first `num_beams` other continuations are the next beams; an example is done once it holds
    `num_return_sequences` hypotheses none of its beams can beat. The released code's cache quirk: when beams are
    re-ranked only the newest cached caption token follows its beam, older cached tokens stay in their slots (so a
    beam may attend to another beam's earlier tokens). Returns ids (B, num_return_sequences, max_length) padded with
    [PAD] and scores (B, num_return_sequences).
    """
    config = model.config
    bos = config.bos_token_id if bos_token_id is None else bos_token_id
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    pad = config.pad_token_id if pad_token_id is None else pad_token_id
    conditioning = model.caption_decoding_inputs(
        **batch, max_length=max_length, tag_position_offset=tag_position_offset
    )
    rows = {k: v.repeat_interleave(num_beams, dim=0) for k, v in conditioning.items() if v is not None}
    device = rows["visual_feats"].device
    examples = rows["visual_feats"].shape[0] // num_beams
    candidates, keep = 2 * num_beams, num_return_sequences  # the original's TOPN_PER_BEAM = 2
    sequences = torch.full((examples * num_beams, 1), bos, dtype=torch.long, device=device)
    beam_scores = torch.zeros(examples, num_beams, device=device)
    beam_scores[:, 1:] = torch.finfo(beam_scores.dtype).min  # identical beams at first: expand only one
    beam_scores = beam_scores.view(-1)
    hyp_scores = torch.full((examples, keep), -float("inf"), device=device)
    hyp_tokens = torch.full((examples, keep, max_length), pad, dtype=torch.long, device=device)
    hyp_count = torch.zeros(examples, dtype=torch.long, device=device)
    done = torch.zeros(examples, dtype=torch.bool, device=device)
    first_row = torch.arange(examples, device=device)[:, None] * num_beams
    cache = DynamicCache(config=config)
    step = dict(input_ids=sequences, **rows)
    while sequences.shape[1] < max_length:
        cur_len = sequences.shape[1]
        logits = model(**step, cache=cache).logits[:, -1].float()
        vocab = logits.shape[-1]
        scores = logits.log_softmax(-1) + beam_scores[:, None]
        next_scores, next_words = scores.view(examples, num_beams * vocab).topk(candidates, dim=1)
        # BeamHypotheses.is_done with the best candidate, checked before this step's candidates are added
        worst = hyp_scores.min(dim=1).values
        done |= (hyp_count >= keep) & (worst >= next_scores[:, 0] / (max_length - 1) ** length_penalty)
        beam_ids, words = next_words // vocab, next_words % vocab
        closes = (words == eos) | (cur_len + 1 == max_length)
        continues = ~closes
        read = (continues.cumsum(1) - continues.long()) < num_beams  # read until num_beams continuations
        new_hyps = read & closes & ~done[:, None]
        rows_of = first_row + beam_ids  # (examples, candidates) rows of `sequences`
        closed = torch.full((examples, candidates, max_length), pad, dtype=torch.long, device=device)
        closed[:, :, :cur_len] = sequences[rows_of]
        closed[:, :, cur_len] = eos
        pool_scores = torch.cat(
            [hyp_scores, torch.where(new_hyps, next_scores / cur_len**length_penalty, -float("inf"))], dim=1
        )
        order = pool_scores.sort(dim=1, descending=True, stable=True).indices[:, :keep]  # ties keep the earlier
        hyp_scores = pool_scores.gather(1, order)
        hyp_tokens = torch.cat([hyp_tokens, closed], dim=1).gather(1, order[..., None].expand(-1, -1, max_length))
        hyp_count = (hyp_count + new_hyps.sum(1)).clamp(max=keep)
        chosen = (read & continues).long().argsort(dim=1, descending=True, stable=True)[:, :num_beams]
        beam_scores = next_scores.gather(1, chosen).view(-1)
        beam_rows = rows_of.gather(1, chosen).view(-1)
        sequences = torch.cat([sequences[beam_rows], words.gather(1, chosen).view(-1, 1)], dim=1)
        for layer in cache.layers:  # the quirk: only the newest cached entry (the token just encoded) follows its beam
            layer.keys = torch.cat([layer.keys[:, :, :-1], layer.keys[beam_rows, :, -1:]], dim=2)
            layer.values = torch.cat([layer.values[:, :, :-1], layer.values[beam_rows, :, -1:]], dim=2)
        if done.all():
            break
        step = dict(
            input_ids=sequences[:, -1:],
            position_ids=torch.full_like(sequences[:, -1:], cur_len),
            tag_attention_mask=rows["tag_attention_mask"],
            visual_attention_mask=rows["visual_attention_mask"],
        )
    return hyp_tokens, hyp_scores
