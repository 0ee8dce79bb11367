"""UNITER: parity with the original code, heads, objectives, training plumbing and input checks."""

import numpy as np
import pytest
import torch
from conftest import fixture_dir
from safetensors.torch import load_file

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.conversion import common
from hf_vlp.conversion import uniter as uniter_conversion
from hf_vlp.modeling.uniter import (
    UniterConfig,
    UniterForImageTextRetrieval,
    UniterForPreTraining,
    UniterForReferringExpression,
    UniterForVisualCommonsenseReasoning,
    UniterForVisualEntailment,
    UniterForVisualQuestionAnswering,
    UniterForVisualReasoning,
    UniterModel,
    UniterProcessor,
)
from hf_vlp.processing.region import RegionFeatureProcessor


def tiny_config(**overrides):
    sizes = dict(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        visual_feat_dim=12,
        num_region_classes=5,
        num_labels=7,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        ot_iterations=5,
    )
    return UniterConfig(**{**sizes, **overrides})


def tiny_inputs(batch=2, text=6, regions=4, config=None, seed=0):
    config = config or tiny_config()
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(batch, regions, 2, generator=generator) * 0.5
    sizes = torch.rand(batch, regions, 2, generator=generator) * 0.5
    return dict(
        input_ids=torch.randint(5, config.vocab_size, (batch, text), generator=generator),
        attention_mask=torch.tensor([[1] * text] + [[1] * (text - 2) + [0, 0]] * (batch - 1)),
        visual_feats=torch.rand(batch, regions, config.visual_feat_dim, generator=generator),
        visual_pos=torch.cat([corners, corners + sizes], dim=-1),
        visual_attention_mask=torch.tensor([[1] * regions] + [[1] * (regions - 1) + [0]] * (batch - 1)),
    )


# ------------------------------------------------------------------------------------------------------------------
# parity with the original implementation
# ------------------------------------------------------------------------------------------------------------------


def _checkpoints(folder):
    """The fixture's original config JSON and checkpoints, found by content, not by name."""
    configs = sorted(folder.glob("*.json"))
    assert len(configs) == 1, f"expected one original config JSON in {folder}, found {configs}"
    return configs[0], sorted(folder.glob("*.pt"))


def test_fixture_parity_every_output_across_checkpoints():
    folder = fixture_dir("uniter")
    config, checkpoints = _checkpoints(folder)
    reference = load_file(folder / "outputs.safetensors")
    verified = {}
    for checkpoint in checkpoints:
        model = uniter_conversion.convert(checkpoint, config)
        lines = []
        assert common.verify(uniter_conversion, model, folder, atol=1e-4, print_fn=lines.append), "\n".join(lines)
        verified.update({line.split(":")[0]: line for line in lines if line.endswith(" ok")})
    missing = sorted(set(reference) - set(verified))
    assert not missing, f"outputs no checkpoint verified: {missing}"


def test_converter_accepts_fp16_wrapped_prefixed_checkpoint(tmp_path):
    folder = fixture_dir("uniter")
    config, checkpoints = _checkpoints(folder)
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    wrapped = {"model_state": {f"module.{k}": v.half() for k, v in state.items()}}
    torch.save(wrapped, tmp_path / "fp16.pt")
    reference = uniter_conversion.convert(checkpoints[0], config)
    converted = uniter_conversion.convert(tmp_path / "fp16.pt", config)
    for name, value in converted.state_dict().items():
        expected = reference.state_dict()[name].half().float()
        assert torch.equal(value, expected), name


def test_converter_rejects_unknown_keys_and_other_architectures(tmp_path):
    folder = fixture_dir("uniter")
    config, checkpoints = _checkpoints(folder)
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    torch.save({**state, "surprise.weight": torch.zeros(1)}, tmp_path / "unknown.pt")
    with pytest.raises(common.ConversionError, match="surprise.weight"):
        uniter_conversion.convert(tmp_path / "unknown.pt", config)
    torch.save({"bert.embeddings.word_embeddings.weight": torch.zeros(4, 4)}, tmp_path / "other.pt")
    with pytest.raises(common.ConversionError, match="not a UNITER checkpoint"):
        uniter_conversion.convert(tmp_path / "other.pt", config)


def test_fine_tuned_heads_convert_from_their_original_key_layouts(tmp_path):
    folder = fixture_dir("uniter")
    config, checkpoints = _checkpoints(folder)
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    backbone = {k: v for k, v in state.items() if k.startswith("uniter.")}
    hidden = backbone["uniter.embeddings.word_embeddings.weight"].shape[1]
    types = backbone["uniter.embeddings.token_type_embeddings.weight"]
    nlvr2 = {**backbone, "uniter.embeddings.token_type_embeddings.weight": torch.cat([types, types[1:]])}
    layouts = {
        "ve": ({**backbone, **_mlp("vqa_output", hidden, 2 * hidden, 3)}, UniterForVisualEntailment),
        "retrieval": (
            {
                **backbone,
                "itm_output.weight": torch.randn(2, hidden),
                "itm_output.bias": torch.randn(2),
                "rank_output.weight": torch.randn(1, hidden),
                "rank_output.bias": torch.randn(1),
            },
            UniterForImageTextRetrieval,
        ),
        "refcoco": (
            {**backbone, "re_output.weight": torch.randn(1, hidden), "re_output.bias": torch.randn(1)},
            UniterForReferringExpression,
        ),
        "nlvr2_paired": (
            {**nlvr2, "nlvr2_output.weight": torch.randn(2, 2 * hidden), "nlvr2_output.bias": torch.randn(2)},
            UniterForVisualReasoning,
        ),
        "nlvr2_triplet": (
            {**nlvr2, "nlvr2_output.weight": torch.randn(2, hidden), "nlvr2_output.bias": torch.randn(2)},
            UniterForVisualReasoning,
        ),
    }
    for name, (layout, expected_class) in layouts.items():
        torch.save(layout, tmp_path / f"{name}.pt")
        model = uniter_conversion.convert(tmp_path / f"{name}.pt", config)
        assert type(model) is expected_class, name
        converted = model.state_dict()
        for key, value in layout.items():
            if key.startswith(("vqa_output", "rank_output", "re_output", "nlvr2_output")):
                new_key = uniter_conversion.KEY_MAP.apply({key: value})[0]
                assert torch.equal(converted[next(iter(new_key))], value), (name, key)
    assert uniter_conversion.convert(tmp_path / "nlvr2_triplet.pt", config).config.nlvr2_head == "triplet"


def test_vcr_checkpoints_convert_and_score_each_choice_as_the_original(tmp_path):
    import torch.nn.functional as F

    folder = fixture_dir("uniter")
    config, checkpoints = _checkpoints(folder)
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    backbone = {k: v for k, v in state.items() if k.startswith("uniter.")}
    hidden = backbone["uniter.embeddings.word_embeddings.weight"].shape[1]
    # model/vcr.py: init_type_embedding (types 2 and 3 start as type 0) and init_word_embedding (+ special tokens)
    types = backbone["uniter.embeddings.token_type_embeddings.weight"]
    words = backbone["uniter.embeddings.word_embeddings.weight"]
    backbone["uniter.embeddings.token_type_embeddings.weight"] = torch.cat([types[:2], types[:1], types[:1]])
    backbone["uniter.embeddings.word_embeddings.weight"] = torch.cat([words, torch.randn(3, hidden) * 0.02])
    head = _mlp("vcr_output", hidden, 2 * hidden, 2)
    torch.save({**backbone, **head}, tmp_path / "vcr.pt")
    model = uniter_conversion.convert(tmp_path / "vcr.pt", config)
    assert type(model) is UniterForVisualCommonsenseReasoning
    assert model.config.type_vocab_size == 4 and model.config.vocab_size == words.shape[0] + 3

    generator = torch.Generator().manual_seed(0)
    batch, choices, length, regions = 2, 4, 7, 3
    input_ids = torch.randint(5, model.config.vocab_size, (batch, choices, length), generator=generator)
    token_types = torch.zeros_like(input_ids)
    token_types[..., 4:] = 2  # question 0, answer 2
    corners = torch.rand(batch, regions, 2, generator=generator) * 0.5
    visual = dict(
        visual_feats=torch.rand(batch, regions, model.config.visual_feat_dim, generator=generator),
        visual_pos=torch.cat([corners, corners + 0.4], dim=-1),
    )
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        output = model(input_ids=input_ids, token_type_ids=token_types, **visual, labels=labels)
        # the original: one row per (question, choice), vcr_output = Linear, ReLU, LayerNorm(1e-12), Linear
        rows = {k: v[:, None].expand(-1, choices, *v.shape[1:]).flatten(0, 1) for k, v in visual.items()}
        pooled = model.uniter(input_ids=input_ids.flatten(0, 1), token_type_ids=token_types.flatten(0, 1), **rows)
        x = F.relu(F.linear(pooled.pooler_output, head["vcr_output.0.weight"], head["vcr_output.0.bias"]))
        x = F.layer_norm(x, (2 * hidden,), head["vcr_output.2.weight"], head["vcr_output.2.bias"], eps=1e-12)
        rank_scores = F.linear(x, head["vcr_output.3.weight"], head["vcr_output.3.bias"])
        targets = F.one_hot(labels, choices).flatten()
    torch.testing.assert_close(output.logits, rank_scores[:, 1].view(batch, choices))
    torch.testing.assert_close(output.loss, F.cross_entropy(rank_scores, targets))
    with pytest.raises(ValueError, match=r"\(batch, num_choices, seq_len\)"):
        model(input_ids=input_ids[:, 0], **visual)


def _mlp(prefix, hidden, inner, out):
    return {
        f"{prefix}.0.weight": torch.randn(inner, hidden),
        f"{prefix}.0.bias": torch.randn(inner),
        f"{prefix}.2.weight": torch.randn(inner),
        f"{prefix}.2.bias": torch.randn(inner),
        f"{prefix}.3.weight": torch.randn(out, inner),
        f"{prefix}.3.bias": torch.randn(out),
    }


# ------------------------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------------------------


def _transformer_parameters(config):
    """Parameters of the transformer layers and the pooler, embeddings excluded (the paper's count)."""
    with torch.device("meta"):
        model = UniterModel(config)
    return sum(p.numel() for name, p in model.named_parameters() if name.startswith(("encoder.", "pooler.")))


@pytest.mark.parametrize("config, paper_count", [(UniterConfig(), 86e6), (UniterConfig.large(), 303e6)])
def test_parameter_counts_match_the_paper(config, paper_count):
    assert abs(_transformer_parameters(config) - paper_count) / paper_count < 0.01


# ------------------------------------------------------------------------------------------------------------------
# model behaviour
# ------------------------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------------------------
# objectives and heads learn
# ------------------------------------------------------------------------------------------------------------------


def _pretraining_labels(objective, inputs, config):
    region_mask = torch.zeros(inputs["visual_attention_mask"].shape, dtype=torch.bool)
    region_mask[:, 1] = True
    if objective == "mlm":
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, 2] = inputs["input_ids"][:, 2]
        return dict(labels=labels)
    if objective == "mrfr":
        return dict(region_mask=region_mask, region_feature_labels=inputs["visual_feats"].clone())
    if objective == "mrc":
        return dict(region_mask=region_mask, region_class_labels=torch.full(region_mask.shape, 3))
    if objective == "mrc_kl":
        soft = torch.softmax(torch.randn(*region_mask.shape, config.num_region_classes), -1)
        return dict(region_mask=region_mask, region_soft_labels=soft)
    return dict(itm_labels=torch.tensor([1, 0]))


@pytest.mark.parametrize("objective", ["mlm", "mrfr", "mrc", "mrc_kl", "itm"])
def test_each_pretraining_objective_loss_falls(objective):
    torch.manual_seed(0)
    config = tiny_config()
    model = UniterForPreTraining(config).train()
    inputs = tiny_inputs(config=config)
    labels = _pretraining_labels(objective, inputs, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        output = model(**inputs, **labels)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    name = {"mlm": "mlm_loss", "mrfr": "mrfr_loss", "mrc": "mrc_loss", "mrc_kl": "mrc_kl_loss", "itm": "itm_loss"}
    assert getattr(output, name[objective]) is not None
    assert losses[-1] < 0.7 * losses[0], losses


def test_word_region_alignment_orders_matching_and_mismatched_pairs():
    """The WRA loss is sum(d_pos) - sum(d_neg) over the batch: training it separates the two distances."""
    torch.manual_seed(0)
    config = tiny_config(itm_weight=0.0, wra_weight=1.0)
    model = UniterForPreTraining(config).train()
    inputs = tiny_inputs(config=config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(8):
        output = model(**inputs, itm_labels=torch.tensor([1, 0]))
        first = first if first is not None else output.wra_loss.item()
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    assert output.wra_loss.item() < first
    assert output.ot_distances[0] < output.ot_distances[1]


def _vqa_labels(config):
    labels = torch.zeros(2, config.num_labels)
    labels[0, 1], labels[1, 4] = 1.0, 0.6
    return labels


HEADS = {
    "vqa": (UniterForVisualQuestionAnswering, {}, lambda c, i: dict(labels=_vqa_labels(c))),
    "ve": (UniterForVisualEntailment, dict(num_labels=3), lambda c, i: dict(labels=torch.tensor([0, 2]))),
    "refexp": (
        UniterForReferringExpression,
        dict(referring_head_layers=2),
        lambda c, i: dict(labels=torch.tensor([1, 2])),
    ),
    "retrieval_bce": (UniterForImageTextRetrieval, {}, lambda c, i: dict(labels=torch.tensor([1, 0]))),
    "retrieval_hinge": (UniterForImageTextRetrieval, {}, lambda c, i: dict(group_size=2)),
}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_task_heads_train(head):
    torch.manual_seed(0)
    model_class, overrides, make_labels = HEADS[head]
    config = tiny_config(**overrides)
    model = model_class(config).train()
    inputs = tiny_inputs(config=config)
    labels = make_labels(config, inputs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        output = model(**inputs, **labels)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("variant", ["paired", "triplet", "paired-attn"])
def test_nlvr2_variants_train_on_two_images(variant):
    torch.manual_seed(0)
    config = tiny_config(type_vocab_size=3, nlvr2_head=variant)
    model = UniterForVisualReasoning(config).train()
    one, two = tiny_inputs(config=config, seed=1), tiny_inputs(config=config, seed=2)
    inputs = dict(
        input_ids=one["input_ids"],
        attention_mask=one["attention_mask"],
        visual_feats=torch.stack([one["visual_feats"], two["visual_feats"]], 1),
        visual_pos=torch.stack([one["visual_pos"], two["visual_pos"]], 1),
        visual_attention_mask=torch.stack([one["visual_attention_mask"], two["visual_attention_mask"]], 1),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        output = model(**inputs, labels=torch.tensor([1, 0]))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    assert output.logits.shape == (2, 2)
    assert losses[-1] < losses[0]


def test_nlvr2_needs_a_third_token_type():
    with pytest.raises(ValueError, match="type_vocab_size"):
        UniterForVisualReasoning(tiny_config(type_vocab_size=2))


# ------------------------------------------------------------------------------------------------------------------
# processor, Auto classes, save / load
# ------------------------------------------------------------------------------------------------------------------


def _processor(bert_tokenizer, **kwargs):
    return UniterProcessor(RegionFeatureProcessor(**kwargs), bert_tokenizer)


def test_processor_output_feeds_the_model(bert_tokenizer):
    processor = _processor(bert_tokenizer)
    rng = np.random.default_rng(0)
    batch = processor(
        text=["a red circle", "two blue squares left of a cross"],
        visual_feats=[rng.random((3, 12)), rng.random((5, 12))],
        boxes=[[[0, 0, 10, 20]] * 3, [[5, 5, 50, 40]] * 5],
        image_sizes=[(20, 40), (100, 80)],
    )
    assert batch["visual_feats"].shape == (2, 5, 12)
    assert batch["visual_attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    torch.testing.assert_close(batch["visual_pos"][0, 0], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    model = UniterModel(tiny_config(vocab_size=len(bert_tokenizer))).eval()
    assert model(**batch).last_hidden_state.shape[:2] == (2, batch["input_ids"].shape[1] + 5)


def test_processor_adds_whole_image_region(bert_tokenizer):
    processor = _processor(bert_tokenizer, add_global_region=True)
    feats = np.arange(6, dtype=np.float32).reshape(2, 3)
    batch = processor(text=["x"], visual_feats=[feats], boxes=[[[0, 0, 1, 1], [1, 1, 2, 2]]], image_sizes=[(2, 2)])
    torch.testing.assert_close(batch["visual_feats"][0, 0], torch.tensor(feats.mean(0)))
    torch.testing.assert_close(batch["visual_pos"][0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_auto_classes_round_trip(tmp_path, bert_tokenizer):
    import transformers

    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(bert_tokenizer))
    inputs = tiny_inputs(config=config)
    for auto_name, model_class in [
        ("AutoModel", UniterModel),
        ("AutoModelForPreTraining", UniterForPreTraining),
        ("AutoModelForVisualQuestionAnswering", UniterForVisualQuestionAnswering),
    ]:
        model = model_class(config).eval()
        target = tmp_path / auto_name
        model.save_pretrained(target)
        reloaded = getattr(transformers, auto_name).from_pretrained(target).eval()
        assert type(reloaded) is model_class
        assert transformers.AutoConfig.from_pretrained(target).model_type == "uniter"
        ours, theirs = model(**inputs), reloaded(**inputs)
        torch.testing.assert_close(theirs[0], ours[0])
    _processor(bert_tokenizer, add_global_region=True).save_pretrained(tmp_path / "AutoModel")
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "AutoModel")
    assert isinstance(processor, UniterProcessor) and processor.image_processor.add_global_region


def test_pretraining_checkpoint_keeps_mlm_decoder_tied(tmp_path):
    model = UniterForPreTraining(tiny_config())
    assert model.mlm_head.decoder.weight is model.uniter.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path)
    reloaded = UniterForPreTraining.from_pretrained(tmp_path)
    assert reloaded.mlm_head.decoder.weight is reloaded.uniter.embeddings.word_embeddings.weight


# ------------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------------


def test_processor_rejects_mismatched_features_and_boxes(bert_tokenizer):
    processor = _processor(bert_tokenizer)
    with pytest.raises(ValueError, match="3 region features but 2 boxes"):
        processor(text=["a"], visual_feats=[np.zeros((3, 4))], boxes=[np.zeros((2, 4))], image_sizes=[(5, 5)])
    with pytest.raises(ValueError, match=r"boxes\[0\]` must be \(num_regions, 4\)"):
        processor(text=["a"], visual_feats=[np.zeros((2, 4))], boxes=[np.zeros((2, 5))], image_sizes=[(5, 5)])
    with pytest.raises(ValueError, match="outside the 5x5 image"):
        processor(text=["a"], visual_feats=[np.zeros((1, 4))], boxes=[[[0, 0, 9, 3]]], image_sizes=[(5, 5)])


def test_processor_rejects_unnormalized_boxes_declared_normalized(bert_tokenizer):
    processor = _processor(bert_tokenizer, normalize_boxes_by_image_size=False)
    with pytest.raises(ValueError, match=r"normalized to \[0, 1\]"):
        processor(text=["a"], visual_feats=[np.zeros((1, 4))], boxes=[[[0, 0, 30, 30]]])


def test_model_rejects_bad_region_inputs():
    model = UniterModel(tiny_config())
    inputs = tiny_inputs()
    with pytest.raises(ValueError, match="text batch size 1 and image batch size 2"):
        model(**{**inputs, "input_ids": inputs["input_ids"][:1], "attention_mask": inputs["attention_mask"][:1]})
    with pytest.raises(ValueError, match="`visual_pos` must be"):
        model(**{**inputs, "visual_pos": inputs["visual_pos"][..., :3]})
    with pytest.raises(ValueError, match="`visual_feats` is required"):
        model(**{**inputs, "visual_feats": None})
    with pytest.raises(ValueError, match="region_mask"):
        UniterForPreTraining(tiny_config())(**inputs, region_feature_labels=inputs["visual_feats"])
