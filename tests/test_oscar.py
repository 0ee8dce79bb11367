"""Oscar / VinVL: parity with the original code, heads, objectives, captioning decoding, plumbing and input checks."""

import argparse
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import fixture_dir
from safetensors.torch import load_file

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.conversion import common
from hf_vlp.conversion import oscar as oscar_conversion
from hf_vlp.modeling.oscar import (
    OscarConfig,
    OscarForConditionalGeneration,
    OscarForImageTextRetrieval,
    OscarForPreTraining,
    OscarForVisualQuestionAnswering,
    OscarForVisualReasoning,
    OscarModel,
    OscarProcessor,
)
from hf_vlp.modeling.oscar.modeling_oscar import caption_attention_mask, caption_loss
from hf_vlp.processing.region import RegionFeatureProcessor


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models run ~30x faster on one thread on the shared CPUs (thread start-up dominates)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides):
    sizes = dict(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        visual_feat_dim=12,
        num_labels=7,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        mask_token_id=3,
        caption_max_length=6,
        caption_tag_position_offset=8,
    )
    return OscarConfig(**{**sizes, **overrides})


def tiny_inputs(batch=2, text=7, regions=4, config=None, seed=0):
    """`[CLS] w w [SEP] tag tag [SEP]`-shaped rows: segment 1 from position 4 on, padding in row 1."""
    config = config or tiny_config()
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(batch, regions, 2, generator=generator) * 0.5
    sizes = torch.rand(batch, regions, 2, generator=generator) * 0.5
    token_type_ids = torch.zeros(batch, text, dtype=torch.long)
    token_type_ids[:, 4:] = 1
    attention_mask = torch.ones(batch, text, dtype=torch.long)
    attention_mask[1:, -2:] = 0
    return dict(
        input_ids=torch.randint(4, config.vocab_size, (batch, text), generator=generator),
        token_type_ids=token_type_ids * attention_mask,
        attention_mask=attention_mask,
        visual_feats=torch.rand(batch, regions, config.visual_feat_dim, generator=generator),
        visual_pos=torch.cat([corners, corners + sizes], dim=-1),
        visual_attention_mask=torch.tensor([[1] * regions] + [[1] * (regions - 1) + [0]] * (batch - 1)),
    )


def paired_inputs(config, batch=2):
    """NLVR2 inputs: two (text, image) pairs per example on dim 1."""
    one, two = tiny_inputs(batch, config=config, seed=1), tiny_inputs(batch, config=config, seed=2)
    return {k: torch.stack([one[k], two[k]], 1) for k in one}


def train_steps(model, inputs, steps=8, lr=3e-3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        output = model(**inputs)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    return output, losses


# ------------------------------------------------------------------------------------------------------------------
# parity with the original implementation
# ------------------------------------------------------------------------------------------------------------------


def _checkpoint_folders(folder):
    """The fixture's original checkpoint folders, found by content (a config.json and a pytorch_model.bin)."""
    folders = sorted(p.parent for p in folder.glob("*/pytorch_model.bin") if (p.parent / "config.json").exists())
    assert folders, f"no original checkpoint folders in {folder}"
    return folders


def test_fixture_parity_every_output_across_checkpoints():
    folder = fixture_dir("oscar")
    reference = load_file(folder / "outputs.safetensors")
    verified, report = {}, []
    for checkpoint in _checkpoint_folders(folder):
        model = oscar_conversion.convert(checkpoint)
        lines = []
        ok = common.verify(oscar_conversion, model, folder, atol=oscar_conversion.VERIFY_ATOL, print_fn=lines.append)
        report += [f"{checkpoint.name}: {line}" for line in lines if "skipped" not in line]
        assert ok, "\n".join(report)
        verified.update({line.split(":")[0]: line for line in lines if ": max_abs_diff=" in line and " ok" in line})
    missing = sorted(set(reference) - set(verified))
    assert not missing, f"outputs no checkpoint verified: {missing}"


def test_converter_recognises_each_original_class():
    folder = fixture_dir("oscar")
    expected = {
        "BertImgForPreTraining": OscarForPreTraining,
        "ImageBertForSequenceClassification": OscarForVisualQuestionAnswering,
        "ImageBertForMultipleChoice": OscarForVisualReasoning,
        "BertForImageCaptioning": OscarForConditionalGeneration,
    }
    meta = json.loads((folder / "fixture_meta.json").read_text())
    for entry in meta["models"].values():
        model = oscar_conversion.convert(folder / entry["dir"])
        assert type(model) is expected[entry["cls"]], entry
        original = json.loads((folder / entry["dir"] / "config.json").read_text())
        assert model.config.use_img_layer_norm == bool(original.get("use_img_layernorm", 0))
        if isinstance(model, (OscarForPreTraining, OscarForConditionalGeneration)) and model.config.tie_word_embeddings:
            assert model.mlm_head.decoder.weight is model.oscar.embeddings.word_embeddings.weight


def _folder_copy(source, target, state=None, config=None):
    target.mkdir()
    shutil.copy(source / "config.json", target / "config.json")
    shutil.copy(source / "vocab.txt", target / "vocab.txt")
    if state is None:
        shutil.copy(source / "pytorch_model.bin", target / "pytorch_model.bin")
    else:
        torch.save(state, target / "pytorch_model.bin")
    if config is not None:
        (target / "config.json").write_text(json.dumps(config))
    return target


def test_converter_rejects_unknown_keys_and_inconsistent_configs(tmp_path):
    folder = fixture_dir("oscar")
    source = folder / "pretrain"
    state = torch.load(source / "pytorch_model.bin", map_location="cpu", weights_only=True)
    original = json.loads((source / "config.json").read_text())
    unknown = _folder_copy(source, tmp_path / "unknown", {**state, "surprise.weight": torch.zeros(1)})
    with pytest.raises(common.ConversionError, match="surprise.weight"):
        oscar_conversion.convert(unknown)
    # VinVL's image LayerNorm: flag without weights (the original would use a fresh LayerNorm) is refused
    no_ln = {k: v for k, v in state.items() if not k.startswith("bert.LayerNorm.")}
    with pytest.raises(common.ConversionError, match="use_img_layernorm"):
        oscar_conversion.convert(_folder_copy(source, tmp_path / "no_ln", no_ln))
    flag_off = {k: v for k, v in original.items() if k != "use_img_layernorm"}
    with pytest.raises(common.ConversionError, match="use_img_layernorm"):
        oscar_conversion.convert(_folder_copy(source, tmp_path / "flag_off", config=flag_off))
    other = _folder_copy(source, tmp_path / "other", {"vilbert.embeddings.word_embeddings.weight": torch.zeros(4, 4)})
    with pytest.raises(common.ConversionError, match="not an Oscar checkpoint"):
        oscar_conversion.convert(other)


def test_converter_reads_oscar_v1_and_fine_tuned_head_layouts(tmp_path):
    """Layouts the fixture does not cover: Oscar v1 pretraining (2 contrastive classes, no image LN), an MLP VQA
    head, retrieval, the NLVR2 MLP without its LayerNorm, an untied captioning decoder, training_args.bin."""
    folder = fixture_dir("oscar")
    source = folder / "vqa"  # Oscar v1 style backbone: no image LayerNorm
    state = torch.load(source / "pytorch_model.bin", map_location="cpu", weights_only=True)
    original = json.loads((source / "config.json").read_text())
    backbone = {k: v for k, v in state.items() if k.startswith("bert.")}
    words = backbone["bert.embeddings.word_embeddings.weight"]
    vocab, hidden = words.shape

    def mlm_head():
        return {
            "cls.predictions.bias": torch.randn(vocab),
            "cls.predictions.transform.dense.weight": torch.randn(hidden, hidden),
            "cls.predictions.transform.dense.bias": torch.randn(hidden),
            "cls.predictions.transform.LayerNorm.weight": torch.randn(hidden),
            "cls.predictions.transform.LayerNorm.bias": torch.randn(hidden),
        }

    scale = 2
    mlp = {
        "classifier.0.weight": torch.randn(hidden * scale, hidden),
        "classifier.0.bias": torch.randn(hidden * scale),
        "classifier.2.weight": torch.randn(5, hidden * scale),
        "classifier.2.bias": torch.randn(5),
    }
    layouts = {
        "oscar_v1_pretrain": (
            {
                **backbone,
                **mlm_head(),
                "cls.predictions.decoder.weight": words,
                "cls.seq_relationship.weight": torch.randn(2, hidden),
                "cls.seq_relationship.bias": torch.randn(2),
            },
            {},
            OscarForPreTraining,
        ),
        "vqa_mlp": (
            {**backbone, **mlp},
            {"classifier": "mlp", "cls_hidden_scale": scale},
            OscarForVisualQuestionAnswering,
        ),
        "retrieval": (
            {**backbone, "classifier.weight": torch.randn(2, hidden), "classifier.bias": torch.randn(2)},
            {"finetuning_task": "ir", "loss_type": "sfmx", "num_labels": 2},
            OscarForImageTextRetrieval,
        ),
        "nlvr2_no_ln": (
            {
                **backbone,
                "classifier.0.weight": torch.randn(3 * hidden, 2 * hidden),
                "classifier.0.bias": torch.randn(3 * hidden),
                "classifier.2.weight": torch.randn(2, 3 * hidden),
                "classifier.2.bias": torch.randn(2),
            },
            {"classifier": "mlp", "cls_hidden_scale": 3, "num_choice": 2},
            OscarForVisualReasoning,
        ),
        "captioning_untied": (
            {**backbone, **mlm_head(), "cls.predictions.decoder.weight": torch.randn(vocab, hidden)},
            {"tie_weights": False},
            OscarForConditionalGeneration,
        ),
    }
    for name, (layout, config_changes, expected_class) in layouts.items():
        config = {**{k: v for k, v in original.items() if k not in ("classifier", "finetuning_task")}, **config_changes}
        target = _folder_copy(source, tmp_path / name, layout, config)
        if name == "captioning_untied":
            torch.save(argparse.Namespace(max_seq_a_length=17, max_gen_length=9), target / "training_args.bin")
        model = oscar_conversion.convert(target)
        assert type(model) is expected_class, name
        converted = model.state_dict()
        mapped, _ = oscar_conversion.KEY_MAP.apply(layout)
        for key, value in mapped.items():
            assert torch.equal(converted[key], value), (name, key)
    v1 = oscar_conversion.convert(tmp_path / "oscar_v1_pretrain")
    assert v1.config.num_contrast_classes == 2 and v1.oscar.region_embeddings.LayerNorm is None
    assert oscar_conversion.convert(tmp_path / "vqa_mlp").config.classifier_hidden_scale == scale
    assert not oscar_conversion.convert(tmp_path / "nlvr2_no_ln").config.nlvr2_layer_norm
    captioning = oscar_conversion.convert(tmp_path / "captioning_untied")
    assert captioning.mlm_head.decoder.weight is not captioning.oscar.embeddings.word_embeddings.weight
    assert (captioning.config.caption_tag_position_offset, captioning.config.caption_max_length) == (17, 9)


# ------------------------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------------------------


def _count(model_class, config):
    with torch.device("meta"):
        model = model_class(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", ["base", "large"])
def test_parameter_counts_are_bert_plus_the_region_projection(size):
    from transformers import BertConfig, BertModel

    oscar = OscarConfig() if size == "base" else OscarConfig.large()
    bert = BertConfig(
        **{
            k: getattr(oscar, k)
            for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        }
    )
    projection = oscar.img_feature_dim * oscar.hidden_size + oscar.hidden_size
    assert oscar.img_feature_dim == 2054
    assert _count(OscarModel, oscar) == _count(BertModel, bert) + projection
    vinvl = (
        OscarConfig.vinvl() if size == "base" else OscarConfig.large(use_img_layer_norm=True, num_contrast_classes=3)
    )
    assert _count(OscarModel, vinvl) == _count(OscarModel, oscar) + 2 * oscar.hidden_size  # the image LayerNorm


def test_vinvl_is_oscar_with_other_settings():
    vinvl = OscarConfig.vinvl()
    assert vinvl.model_type == OscarConfig().model_type == "oscar"
    assert vinvl.use_img_layer_norm and vinvl.num_contrast_classes == 3
    assert OscarForPreTraining(tiny_config(num_contrast_classes=3)).contrastive_head.out_features == 3


# ------------------------------------------------------------------------------------------------------------------
# model behaviour
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_class", [OscarModel, OscarForConditionalGeneration])
def test_sdpa_and_eager_attention_agree(model_class):
    torch.manual_seed(0)
    model = model_class(tiny_config(use_img_layer_norm=True)).eval()
    inputs = tiny_inputs()
    model.config._attn_implementation = "eager"
    eager = model(**inputs, output_hidden_states=True).hidden_states[-1]
    model.config._attn_implementation = "sdpa"
    sdpa = model(**inputs, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_forward_and_backward_are_finite():
    torch.manual_seed(0)
    model = OscarForConditionalGeneration(tiny_config(caption_label_smoothing=0.1))
    inputs = tiny_inputs()
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 2] = inputs["input_ids"][:, 2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(**inputs, labels=labels)
    output.loss.backward()
    assert output.loss.dtype == torch.float32 and torch.isfinite(output.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "model_class",
    [
        OscarModel,
        OscarForPreTraining,
        OscarForVisualQuestionAnswering,
        OscarForImageTextRetrieval,
        OscarForVisualReasoning,
        OscarForConditionalGeneration,
    ],
)
def test_every_head_initialises_its_weights_through_post_init(model_class):
    """`post_init` runs `_init_weights` on every module: Linear weights ~ N(0, initializer_range) with zero biases
    (PyTorch's own Linear init would give std ~ 1 / sqrt(3 * fan_in) ~ 0.14 here), LayerNorms 1 / 0, MLM bias 0."""
    torch.manual_seed(0)
    config = tiny_config(num_labels=2, classifier_type="mlp", classifier_hidden_scale=3, use_img_layer_norm=True)
    model = model_class(config)
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linears
    for name, module in linears:
        assert module.weight.std() < 1.5 * config.initializer_range, name
        assert module.bias is None or not module.bias.any(), name
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            assert (module.weight == 1).all() and not module.bias.any(), name
    if hasattr(model, "mlm_head"):
        assert not model.mlm_head.bias.any()


def test_region_location_is_the_six_d_box_vector():
    """The projection sees `[feature, x1, y1, x2, y2, w, h]`, as the original's 2054-d `img_feats`."""
    config = tiny_config()
    model = OscarModel(config).eval()
    feats, boxes = torch.rand(1, 2, 12), torch.tensor([[[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]]])
    original = torch.cat([feats, boxes, boxes[..., 2:] - boxes[..., :2]], -1)
    torch.testing.assert_close(model.region_embeddings(feats, boxes), model.region_embeddings.projection(original))


# ------------------------------------------------------------------------------------------------------------------
# objectives and heads learn
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("contrast_classes", [2, 3])
def test_pretraining_losses_fall(contrast_classes):
    """Masked token loss over words and tags + the contrastive loss (Oscar: binary, VinVL: 3-way)."""
    torch.manual_seed(0)
    config = tiny_config(num_contrast_classes=contrast_classes, use_img_layer_norm=contrast_classes == 3)
    model = OscarForPreTraining(config).train()
    inputs = tiny_inputs(config=config)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, [1, 5]] = inputs["input_ids"][:, [1, 5]]  # a word and a tag
    contrastive = torch.tensor([0, contrast_classes - 1])
    output, losses = train_steps(
        model, dict(**inputs, labels=labels, contrastive_labels=contrastive), steps=10, lr=1e-2
    )
    assert output.mlm_logits.shape == (4, config.vocab_size)
    assert output.contrastive_logits.shape == (2, contrast_classes)
    torch.testing.assert_close(output.loss, output.mlm_loss + output.contrastive_loss)
    assert losses[-1] < 0.7 * losses[0], losses


def test_pretraining_without_labels_returns_vocabulary_logits_for_the_text():
    model = OscarForPreTraining(tiny_config()).eval()
    output = model(**tiny_inputs())
    assert output.loss is None and output.prediction_logits.shape == (2, 7, 40)


def _vqa_scores(config):
    labels = torch.zeros(2, config.num_labels)
    labels[0, 1], labels[1, 4] = 1.0, 0.6
    return labels


HEADS = {
    "vqa_bce": (OscarForVisualQuestionAnswering, {}, lambda c: dict(labels=_vqa_scores(c))),
    "gqa_ce_mlp": (
        OscarForVisualQuestionAnswering,
        dict(vqa_loss="ce", classifier_type="mlp"),
        lambda c: dict(labels=torch.tensor([3, 5])),
    ),
    "retrieval": (OscarForImageTextRetrieval, {}, lambda c: dict(labels=torch.tensor([1, 0]))),
}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_task_heads_train(head):
    torch.manual_seed(0)
    model_class, overrides, make_labels = HEADS[head]
    config = tiny_config(**overrides)
    model = model_class(config).train()
    output, losses = train_steps(model, dict(**tiny_inputs(config=config), **make_labels(config)))
    assert losses[-1] < losses[0], losses
    if head == "retrieval":
        torch.testing.assert_close(output.scores, output.logits.softmax(-1)[:, 1])


def test_vqa_loss_is_the_originals_instance_bce():
    model = OscarForVisualQuestionAnswering(tiny_config()).eval()
    labels = _vqa_scores(model.config)
    output = model(**tiny_inputs(), labels=labels)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(output.logits, labels, reduction="sum") / 2
    torch.testing.assert_close(output.loss, expected)


@pytest.mark.parametrize("layer_norm", [True, False])
def test_nlvr2_paired_head_trains(layer_norm):
    torch.manual_seed(0)
    config = tiny_config(num_labels=2, classifier_type="mlp", classifier_hidden_scale=3, use_img_layer_norm=layer_norm)
    model = OscarForVisualReasoning(config).train()
    assert isinstance(model.classifier[2], torch.nn.LayerNorm) == layer_norm  # the original's key shift
    output, losses = train_steps(model, dict(**paired_inputs(config), labels=torch.tensor([1, 0])))
    assert output.logits.shape == (2, 2) and losses[-1] < losses[0]


def test_nlvr2_concatenates_pair_pooled_outputs_in_order():
    torch.manual_seed(0)
    config = tiny_config(num_labels=2)
    model = OscarForVisualReasoning(config).eval()
    inputs = paired_inputs(config)
    pooled = [model.oscar(**{k: v[:, i] for k, v in inputs.items()}).pooler_output for i in range(2)]
    torch.testing.assert_close(model(**inputs).logits, model.classifier(torch.cat(pooled, -1)), atol=1e-5, rtol=1e-5)


def test_captioning_trains_with_label_smoothing_and_drop_worst():
    torch.manual_seed(0)
    config = tiny_config(caption_label_smoothing=0.1, caption_drop_worst_ratio=0.25, caption_drop_worst_after=2)
    model = OscarForConditionalGeneration(config).train()
    model.training_step = 3  # past caption_drop_worst_after (CaptionDropWorstCallback sets it from the Trainer)
    inputs = tiny_inputs(config=config)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 1:4] = inputs["input_ids"][:, 1:4]
    inputs["input_ids"] = inputs["input_ids"].masked_fill(labels != -100, config.mask_token_id)
    output, losses = train_steps(model, dict(**inputs, labels=labels), steps=10, lr=1e-2)
    assert output.masked_logits.shape == (6, config.vocab_size)
    assert losses[-1] < 0.7 * losses[0], losses


def test_caption_loss_is_kl_to_the_smoothed_target_minus_the_worst():
    torch.manual_seed(0)
    logits, targets = torch.randn(8, 11), torch.randint(0, 11, (8,))
    target = torch.full((8, 11), 0.1 / 10).scatter(1, targets[:, None], 0.9)
    per_token = torch.nn.functional.kl_div(logits.log_softmax(-1), target, reduction="none").sum(1)
    torch.testing.assert_close(caption_loss(logits, targets, 0.1), per_token.mean())
    torch.testing.assert_close(caption_loss(logits, targets, 0.1, 0.25), per_token.sort().values[:6].mean())
    torch.testing.assert_close(caption_loss(logits, targets), torch.nn.functional.cross_entropy(logits, targets))


# ------------------------------------------------------------------------------------------------------------------
# captioning: mask and decoding
# ------------------------------------------------------------------------------------------------------------------


def test_caption_mask_is_causal_over_the_caption_and_hides_it_from_tags_and_regions():
    text_mask = torch.tensor([[1, 1, 1, 0, 1, 1]])  # caption [CLS] w [SEP] [PAD] | tag [SEP]
    is_caption = torch.tensor([[1, 1, 1, 1, 0, 0]])
    mask = caption_attention_mask(text_mask, torch.tensor([[1, 0]]), is_caption)[0]
    expected = torch.tensor([
        # c0 c1 c2 pad t0 t1 r0 r1(pad)
        [1, 0, 0, 0, 1, 1, 1, 0],
        [1, 1, 0, 0, 1, 1, 1, 0],
        [1, 1, 1, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ])  # fmt: skip
    assert torch.equal(mask, expected)


def _captioning_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = OscarForConditionalGeneration(tiny_config(**overrides)).eval()
    with torch.no_grad():  # sharper distributions than the 0.02 init, so beams differ
        for parameter in model.parameters():
            parameter.normal_(0, 0.5) if parameter.dim() > 1 else None
    return model


def _tags_and_regions(config, batch=3):
    inputs = tiny_inputs(batch, config=config)
    return dict(
        input_ids=inputs["input_ids"][:, 4:],  # tags [SEP] segment only
        attention_mask=inputs["attention_mask"][:, 4:],
        visual_feats=inputs["visual_feats"],
        visual_pos=inputs["visual_pos"],
        visual_attention_mask=inputs["visual_attention_mask"],
    )


# ------------------------------------------------------------------------------------------------------------------
# processor, Auto classes, save / load, LoRA
# ------------------------------------------------------------------------------------------------------------------

CLASS_NAMES = ["background", "circle", "square", "traffic light"]


def _processor(bert_tokenizer, use_tags=True, **kwargs):
    return OscarProcessor(
        RegionFeatureProcessor(**kwargs), bert_tokenizer, region_class_names=CLASS_NAMES, use_tags=use_tags
    )


def _regions(rng=None):
    rng = rng or np.random.default_rng(0)
    return dict(
        visual_feats=[rng.random((2, 12)), rng.random((3, 12))],
        boxes=[[[0, 0, 10, 20], [5, 5, 20, 40]], [[5, 5, 50, 40]] * 3],
        image_sizes=[(20, 40), (100, 80)],
    )


def test_processor_puts_object_tags_from_the_regions_in_segment_one(bert_tokenizer):
    processor = _processor(bert_tokenizer)
    batch = processor(
        text=["a red circle", "what is it?"], region_labels=[[1, 3], ["square", "circle", "circle"]], **_regions()
    )
    tokens = bert_tokenizer.convert_ids_to_tokens(batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist())
    assert tokens == ["[CLS]", "a", "red", "circle", "[SEP]", "circle", "traffic", "light", "[SEP]"]
    assert batch["token_type_ids"][0].tolist()[:9] == [0] * 5 + [1] * 4
    assert batch["visual_attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    torch.testing.assert_close(batch["visual_pos"][0, 0], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    model = OscarModel(tiny_config(vocab_size=len(bert_tokenizer))).eval()
    assert model(**batch).last_hidden_state.shape[:2] == (2, batch["input_ids"].shape[1] + 3)


def test_processor_truncates_longest_part_first_and_cuts_tags_with_regions(bert_tokenizer):
    processor = _processor(bert_tokenizer, max_regions=2)
    batch = processor(
        text=["one two three four five six"],
        region_labels=[[1, 2, 1]],
        max_length=8,
        **{k: v[1:] for k, v in _regions().items()},
    )
    tokens = bert_tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    # the third region is cut by max_regions, so is its tag; then the longer text loses its last tokens
    assert tokens == ["[CLS]", "one", "two", "three", "[SEP]", "circle", "square", "[SEP]"]


def test_processor_captioning_layout_feeds_training_and_generation(bert_tokenizer):
    processor = _processor(bert_tokenizer)
    train = processor(
        text=["a circle", "a big square"], region_labels=[[1, 1], [2, 2, 2]], caption_length=6, **_regions()
    )
    assert train["token_type_ids"][:, :6].sum() == 0 and (train["token_type_ids"][:, 6] == 1).all()
    assert train["attention_mask"][0, :6].tolist() == [1, 1, 1, 1, 0, 0]
    tags = processor(region_labels=[[1, 1], [2, 2, 2]], **_regions())
    assert tags["token_type_ids"].sum(1).tolist() == [3, 4]
    config = tiny_config(
        vocab_size=len(bert_tokenizer),
        bos_token_id=bert_tokenizer.cls_token_id,
        eos_token_id=bert_tokenizer.sep_token_id,
        mask_token_id=bert_tokenizer.mask_token_id,
        caption_tag_position_offset=6,
    )
    model = OscarForConditionalGeneration(config).eval()
    labels = torch.where(train["attention_mask"].bool() & (train["token_type_ids"] == 0), train["input_ids"], -100)
    assert model(**train, labels=labels).loss.isfinite()
    generated = model.generate(**tags, num_beams=2)
    assert generated.shape[0] == 2 and generated.shape[1] <= config.caption_max_length
    assert (generated[:, 0] == bert_tokenizer.cls_token_id).all()


def test_auto_classes_round_trip(tmp_path, bert_tokenizer):
    import transformers

    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(bert_tokenizer), use_img_layer_norm=True)
    inputs = tiny_inputs(config=config)
    for auto_name, model_class in [
        ("AutoModel", OscarModel),
        ("AutoModelForPreTraining", OscarForPreTraining),
        ("AutoModelForVisualQuestionAnswering", OscarForVisualQuestionAnswering),
        ("AutoModelForImageTextToText", OscarForConditionalGeneration),
    ]:
        model = model_class(config).eval()
        target = tmp_path / auto_name
        model.save_pretrained(target)
        reloaded = getattr(transformers, auto_name).from_pretrained(target).eval()
        assert type(reloaded) is model_class
        assert transformers.AutoConfig.from_pretrained(target).model_type == "oscar"
        ours, theirs = model(**inputs), reloaded(**inputs)
        torch.testing.assert_close(theirs[0], ours[0])
    tags = {k: v for k, v in _tags_and_regions(config).items()}
    torch.testing.assert_close(model.generate(**tags), reloaded.generate(**tags))
    _processor(bert_tokenizer).save_pretrained(tmp_path / "AutoModel")
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "AutoModel")
    assert isinstance(processor, OscarProcessor) and processor.region_class_names == CLASS_NAMES


def test_mlm_decoder_stays_tied_and_frozen_embeddings_stay_frozen(tmp_path):
    model = OscarForPreTraining(tiny_config())
    assert model.mlm_head.decoder.weight is model.oscar.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path / "pretraining")
    reloaded = OscarForPreTraining.from_pretrained(tmp_path / "pretraining")
    assert reloaded.mlm_head.decoder.weight is reloaded.oscar.embeddings.word_embeddings.weight
    captioning = OscarForConditionalGeneration(tiny_config(freeze_word_embeddings=True))
    captioning.save_pretrained(tmp_path / "captioning")
    reloaded = OscarForConditionalGeneration.from_pretrained(tmp_path / "captioning")
    assert not reloaded.oscar.embeddings.word_embeddings.weight.requires_grad
    assert reloaded.mlm_head.decoder.weight is reloaded.oscar.embeddings.word_embeddings.weight


def test_lora_adapters_train_save_load_and_merge(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    config = tiny_config()
    inputs = dict(**tiny_inputs(config=config), labels=_vqa_scores(config))
    base = OscarForVisualQuestionAnswering(config)
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"]))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    lora.train()
    _, losses = train_steps(lora, inputs, steps=6, lr=1e-2)
    assert losses[-1] < losses[0]
    lora.eval()
    expected = lora(**inputs).logits
    lora.save_pretrained(tmp_path / "adapter")
    fresh = OscarForVisualQuestionAnswering(config)
    fresh.load_state_dict(base_weights)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    torch.testing.assert_close(reloaded(**inputs).logits, expected)
    merged = reloaded.merge_and_unload()
    torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------------


def test_model_rejects_bad_region_inputs():
    model = OscarModel(tiny_config())
    inputs = tiny_inputs()
    with pytest.raises(ValueError, match="`visual_feats` is required"):
        model(**{**inputs, "visual_feats": None})
    with pytest.raises(ValueError, match="`visual_pos` must be"):
        model(**{**inputs, "visual_pos": inputs["visual_pos"][..., :3]})
    with pytest.raises(ValueError, match="text batch size 1 and image batch size 2"):
        model(**{**inputs, **{k: inputs[k][:1] for k in ("input_ids", "attention_mask", "token_type_ids")}})
    original_layout = torch.cat([inputs["visual_feats"], torch.rand(2, 4, 6)], -1)  # the original's 2054-d img_feats
    with pytest.raises(ValueError, match="visual_feats=img_feats"):
        model(**{**inputs, "visual_feats": original_layout})
    with pytest.raises(ValueError, match="`attention_mask` must have shape"):
        model(**{**inputs, "attention_mask": torch.ones(2, 11)})
    with pytest.raises(ValueError, match="`visual_feats` is required"):
        OscarForConditionalGeneration(tiny_config()).generate(input_ids=inputs["input_ids"])


def test_heads_reject_bad_labels_and_layouts():
    config = tiny_config()
    inputs = tiny_inputs()
    with pytest.raises(ValueError, match="soft answer scores"):
        OscarForVisualQuestionAnswering(config)(**inputs, labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"`input_ids` must be \(batch, 2 pairs"):
        OscarForVisualReasoning(config)(**inputs, labels=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="`labels` must have shape"):
        OscarForPreTraining(config)(**inputs, labels=torch.full((2, 11), -100))
    with pytest.raises(ValueError, match="`box_feature_kind`"):
        OscarConfig(box_feature_kind="xywh")


def test_processor_rejects_missing_tags_and_bad_boxes(bert_tokenizer):
    processor = _processor(bert_tokenizer)
    with pytest.raises(ValueError, match="object tags"):
        processor(text=["a", "b"], **_regions())  # the tags come with the regions: missing
    assert "token_type_ids" in _processor(bert_tokenizer, use_tags=False)(text=["a", "b"], **_regions())
    with pytest.raises(ValueError, match="region_class_names"):
        OscarProcessor(RegionFeatureProcessor(), bert_tokenizer)(text=["a"], region_labels=[[1, 2]], **{
            k: v[:1] for k, v in _regions().items()})  # fmt: skip
    with pytest.raises(ValueError, match="1 texts but 2 `region_labels`"):
        processor(text=["a"], region_labels=[[1], [2]])
    with pytest.raises(ValueError, match=r"boxes\[0\]` must be \(num_regions, 4\)"):
        processor(
            text=["a"],
            region_labels=[[1, 2]],
            visual_feats=[np.zeros((2, 12))],
            boxes=[np.zeros((2, 5))],
            image_sizes=[(5, 5)],
        )


# ------------------------------------------------------------------------------------------------------------------
# example (end to end, slow: builds the shapes world with region features)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_shapes_example_runs_vqa_and_captioning(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "oscar_shapes.py"
    spec = importlib.util.spec_from_file_location("oscar_shapes", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main([
        "--output_dir", str(tmp_path), "--num_images", "16", "--eval_images", "4", "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--num_beams", "2", "--report_to", "none", "--use_cpu",
    ])  # fmt: skip
    assert set(results) == {"vqa", "captioning"}
    assert (tmp_path / "captioning" / "config.json").exists() and (tmp_path / "vqa" / "config.json").exists()
