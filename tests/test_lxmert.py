"""LXMERT: parity of the converted original checkpoints, the loss weight fix, per-objective losses, gradient
checkpointing, processor, collator, Auto classes, LoRA preset and input checks."""

import json

import numpy as np
import pytest
import torch
import transformers
from conftest import fixture_dir
from safetensors.torch import load_file

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.conversion import common
from hf_vlp.conversion import lxmert as conversion
from hf_vlp.modeling.lxmert import (
    LORA_TARGET_MODULES,
    ORIGINAL_VISUAL_LOSS_NORMALIZER,
    LxmertConfig,
    LxmertForPreTraining,
    LxmertForVisualQuestionAnswering,
    LxmertModel,
    LxmertPretrainingCollator,
    LxmertProcessor,
)
from hf_vlp.processing.region import RegionFeatureProcessor


def tiny_config(**overrides):
    sizes = dict(
        vocab_size=64,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        l_layers=2,
        x_layers=1,
        r_layers=1,
        visual_feat_dim=12,
        num_object_labels=6,
        num_attr_labels=5,
        num_qa_labels=7,
        visual_loss_normalizer=ORIGINAL_VISUAL_LOSS_NORMALIZER,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return LxmertConfig(**{**sizes, **overrides})


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


def _fixture_files(folder):
    """(bert config, checkpoints): the BERT config is the JSON with attention heads, found by content."""
    configs = [p for p in sorted(folder.glob("*.json")) if "num_attention_heads" in json.loads(p.read_text())]
    assert len(configs) == 1, f"expected one bert config JSON in {folder}, found {configs}"
    return configs[0], sorted(folder.glob("*.pth"))


def _converted(folder):
    bert_config, checkpoints = _fixture_files(folder)
    return {type(m): m for m in (conversion.convert(c, bert_config) for c in checkpoints)}


def test_fixture_parity_every_output_across_checkpoints():
    folder = fixture_dir("lxmert")
    bert_config, checkpoints = _fixture_files(folder)
    reference = load_file(folder / "outputs.safetensors")
    verified = {}
    for checkpoint in checkpoints:
        model = conversion.convert(checkpoint, bert_config)
        lines = []
        # the converter's tolerances (atol + rtol * |ref|, from the fixture README): fp32 rounding grows with magnitude
        assert common.verify(conversion, model, folder, print_fn=lines.append), "\n".join(lines)
        verified.update({line.split(":")[0]: line for line in lines if line.endswith(" ok")})
    missing = sorted(set(reference) - set(verified))
    assert not missing, f"outputs no checkpoint verified: {missing}"


def test_converted_config_is_read_from_the_weights_and_args():
    folder = fixture_dir("lxmert")
    args = json.loads((folder / "args.json").read_text()) if (folder / "args.json").exists() else None
    models = _converted(folder)
    for model in models.values():
        config = model.config
        assert config.visual_loss_normalizer == pytest.approx(1 / 0.15)
        if args is not None:
            assert (config.l_layers, config.x_layers, config.r_layers) == (
                args["llayers"],
                args["xlayers"],
                args["rlayers"],
            )
    if args is not None:
        assert models[LxmertForPreTraining].config.num_qa_labels == args["num_answers_pretrain"]
        assert models[LxmertForVisualQuestionAnswering].config.num_qa_labels == args["num_answers_vqa"]


def test_transformers_default_visual_loss_weight_deviates():
    """transformers' config default (6.67) scales the three visual losses by 1.0005: the total loss moves; the
    converted config's exact 1/0.15 reproduces the original total."""
    folder = fixture_dir("lxmert")
    inputs, reference = load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")
    ours = _converted(folder)[LxmertForPreTraining]
    default = LxmertConfig(**{**ours.config.to_dict(), "visual_loss_normalizer": LxmertConfig().visual_loss_normalizer})
    theirs = transformers.LxmertForPreTraining(default).eval()
    theirs.load_state_dict(ours.state_dict())
    batch = conversion.pretraining_batch(inputs)
    with torch.no_grad():
        their_total, our_total = theirs(**batch).loss, ours(**batch).loss
    expected = reference["pretrain.total_loss"]
    assert (their_total - expected).abs() > 10 * (our_total - expected).abs()
    assert (their_total - expected).abs() > 1e-3
    torch.testing.assert_close(our_total, expected, atol=1e-4, rtol=1e-6)


def test_converter_accepts_prefix_variants(tmp_path):
    """With and without DataParallel's `module.`, and fine-tuned files saved with --multiGPU."""
    folder = fixture_dir("lxmert")
    bert_config, checkpoints = _fixture_files(folder)
    models = _converted(folder)
    for checkpoint in checkpoints:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if any(k.startswith("lxrt_encoder.") for k in state):
            variant = {k.replace("lxrt_encoder.model.", "lxrt_encoder.model.module."): v for k, v in state.items()}
        else:
            variant = {k.removeprefix("module."): v for k, v in state.items()}
        torch.save(variant, tmp_path / "variant.pth")
        converted = conversion.convert(tmp_path / "variant.pth", bert_config)
        reference = models[type(converted)].state_dict()
        assert converted.state_dict().keys() == reference.keys()
        assert all(torch.equal(v, reference[k]) for k, v in converted.state_dict().items())


def test_converter_rejects_unknown_keys_and_other_architectures(tmp_path):
    folder = fixture_dir("lxmert")
    bert_config, checkpoints = _fixture_files(folder)
    pretraining = next(
        c for c in checkpoints if not any(k.startswith("lxrt_encoder.") for k in torch.load(c, weights_only=True))
    )
    state = torch.load(pretraining, map_location="cpu", weights_only=True)
    torch.save({**state, "module.surprise.weight": torch.zeros(1)}, tmp_path / "unknown.pth")
    with pytest.raises(common.ConversionError, match="surprise.weight"):
        conversion.convert(tmp_path / "unknown.pth", bert_config)
    # a VisualBERT file given to the LXMERT converter
    torch.save({"bert.bert.embeddings.word_embeddings.weight": torch.zeros(8, 4)}, tmp_path / "visual_bert.th")
    with pytest.raises(common.ConversionError, match="not an original LXMERT checkpoint"):
        conversion.convert(tmp_path / "visual_bert.th", bert_config)
    with pytest.raises(common.ConversionError, match="attention heads is not stored"):
        conversion.convert(pretraining)


def test_nlvr2_files_convert_and_classify_the_two_pooled_outputs_as_the_original(tmp_path):
    import torch.nn.functional as F

    folder = fixture_dir("lxmert")
    bert_config, checkpoints = _fixture_files(folder)
    pretraining = next(
        c for c in checkpoints if not any(k.startswith("lxrt_encoder.") for k in torch.load(c, weights_only=True))
    )
    state = torch.load(pretraining, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    hidden = state["bert.embeddings.word_embeddings.weight"].shape[1]
    # NLVR2.save layout: the encoder under lxrt_encoder.model.bert, the classifier as logit_fc.{0,2,3}
    generator = torch.Generator().manual_seed(0)
    head = {
        "logit_fc.0.weight": torch.randn(2 * hidden, 2 * hidden, generator=generator) * 0.1,
        "logit_fc.0.bias": torch.randn(2 * hidden, generator=generator) * 0.1,
        "logit_fc.2.weight": 1 + torch.randn(2 * hidden, generator=generator) * 0.1,
        "logit_fc.2.bias": torch.randn(2 * hidden, generator=generator) * 0.1,
        "logit_fc.3.weight": torch.randn(2, 2 * hidden, generator=generator) * 0.1,
        "logit_fc.3.bias": torch.randn(2, generator=generator) * 0.1,
    }
    nlvr2 = {f"lxrt_encoder.model.{k}": v for k, v in state.items() if k.startswith("bert.")} | head
    torch.save(nlvr2, tmp_path / "BEST.pth")
    model = conversion.convert(tmp_path / "BEST.pth", bert_config)
    assert type(model).__name__ == "LxmertForVisualReasoning" and model.config.id2label == {0: "False", 1: "True"}

    # the original's forward: each statement with each of its two images, pooled outputs concatenated, logit_fc
    encoder = conversion.convert(pretraining, bert_config).lxmert
    config = model.config
    batch, regions, length = 3, 4, 6
    input_ids = torch.randint(1, config.vocab_size, (batch, length), generator=generator)
    feats = torch.randn(batch, 2, regions, config.visual_feat_dim, generator=generator)
    boxes = torch.rand(batch, 2, regions, 2, generator=generator) * 0.5
    pos = torch.cat([boxes, boxes + 0.4], dim=-1)
    with torch.no_grad():
        pooled = encoder(
            input_ids=input_ids.repeat_interleave(2, 0), visual_feats=feats.flatten(0, 1), visual_pos=pos.flatten(0, 1)
        ).pooled_output
        x = pooled.view(batch, 2 * hidden)
        x = F.linear(x, head["logit_fc.0.weight"], head["logit_fc.0.bias"])
        x = x * 0.5 * (1.0 + torch.erf(x / 2**0.5))
        x = F.layer_norm(x, (2 * hidden,), head["logit_fc.2.weight"], head["logit_fc.2.bias"], eps=1e-12)
        expected = F.linear(x, head["logit_fc.3.weight"], head["logit_fc.3.bias"])
        logits = model(input_ids=input_ids, visual_feats=feats, visual_pos=pos).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(common.ConversionError, match="VQA / GQA answer table"):
        conversion.convert(tmp_path / "BEST.pth", bert_config, answers=["a", "b"])
    with pytest.raises(ValueError, match=r"`visual_feats` must be \(batch, 2, regions, dim\)"):
        model(input_ids=input_ids, visual_feats=feats[:, 0], visual_pos=pos[:, 0])


def test_answer_table_becomes_id2label(tmp_path):
    folder = fixture_dir("lxmert")
    bert_config, checkpoints = _fixture_files(folder)
    vqa = next(c for c in checkpoints if any(k.startswith("lxrt_encoder.") for k in torch.load(c, weights_only=True)))
    answers = torch.load(vqa, weights_only=True)["logit_fc.3.weight"].shape[0]
    (tmp_path / "label2ans.json").write_text(json.dumps([f"answer {i}" for i in range(answers)]))
    model = conversion.convert(vqa, bert_config, answers=tmp_path / "label2ans.json")
    assert model.config.id2label[answers - 1] == f"answer {answers - 1}"
    (tmp_path / "short.json").write_text(json.dumps(["yes", "no"]))
    with pytest.raises(common.ConversionError, match="answer table has 2 answers"):
        conversion.convert(vqa, bert_config, answers=tmp_path / "short.json")


def test_released_size_parameter_count():
    """bert-base sizes, 9 / 5 / 5 layers, 9500 answers: 228.05 M parameters (tied decoder once), the size of the
    released 870 MiB model_LXRT.pth (fixture README)."""
    with torch.device("meta"):
        model = LxmertForPreTraining(LxmertConfig())
    unique = {id(p): p.numel() for p in model.parameters()}
    assert abs(sum(unique.values()) - 228.05e6) < 0.01e6


# ------------------------------------------------------------------------------------------------------------------
# objectives, heads, training plumbing
# ------------------------------------------------------------------------------------------------------------------


def _pretraining_labels(objective, inputs, config):
    regions = inputs["visual_attention_mask"].shape
    weights = inputs["visual_attention_mask"].float()
    if objective == "mlm":
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, 2] = inputs["input_ids"][:, 2]
        return dict(labels=labels)
    if objective == "matched":
        return dict(matched_label=torch.tensor([1, 0]))
    if objective == "obj":
        return dict(obj_labels={"obj": (torch.full(regions, 3), weights)})
    if objective == "attr":
        return dict(obj_labels={"attr": (torch.full(regions, 2), weights)})
    if objective == "feat":
        mask = torch.zeros(regions)
        mask[:, 1] = 1.0
        return dict(obj_labels={"feat": (inputs["visual_feats"].clone(), mask)})
    return dict(ans=torch.tensor([4, -100]))


def _train(model, inputs, labels, steps=10, lr=1e-2):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        output = model(**inputs, **labels)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    return output, losses


@pytest.mark.parametrize("objective", ["mlm", "matched", "obj", "attr", "feat", "qa"])
def test_each_pretraining_objective_loss_falls(objective):
    torch.manual_seed(0)
    config = tiny_config()
    model = LxmertForPreTraining(config).train()
    inputs = tiny_inputs(config=config)
    output, losses = _train(model, inputs, _pretraining_labels(objective, inputs, config))
    name = {"mlm": "mlm_loss", "matched": "itm_loss", "qa": "qa_loss"}.get(objective, f"{objective}_loss")
    assert getattr(output, name) is not None
    assert losses[-1] < 0.7 * losses[0], losses


def test_losses_without_targets_are_zero_not_nan():
    torch.manual_seed(0)
    model = LxmertForPreTraining(tiny_config()).eval()
    inputs = tiny_inputs()
    output = model(**inputs, labels=torch.full_like(inputs["input_ids"], -100), ans=torch.tensor([-100, -100]))
    assert output.mlm_loss.item() == 0.0 and output.qa_loss.item() == 0.0 and output.loss.item() == 0.0


def test_visual_losses_follow_the_original_definition():
    """(per-region loss * weight).mean() over every region, times the normalizer; SmoothL1 averaged over dims."""
    torch.manual_seed(0)
    config = tiny_config()
    model = LxmertForPreTraining(config).eval()
    inputs = tiny_inputs(config=config)
    ids = torch.randint(0, config.num_object_labels, inputs["visual_attention_mask"].shape)
    confidence = torch.rand(ids.shape)
    target = torch.rand_like(inputs["visual_feats"])
    mask = (torch.rand(ids.shape) < 0.5).float()
    output = model(**inputs, obj_labels={"obj": (ids, confidence), "feat": (target, mask)})
    ce = torch.nn.functional.cross_entropy(output.obj_logits.flatten(0, 1), ids.flatten(), reduction="none")
    torch.testing.assert_close(output.obj_loss, (ce * confidence.flatten()).mean() / 0.15)
    l1 = torch.nn.functional.smooth_l1_loss(output.feat_predictions, target, reduction="none").mean(-1)
    torch.testing.assert_close(output.feat_loss, (l1 * mask).mean() / 0.15)


def test_vqa_head_soft_scores_use_the_original_bce_and_class_ids_cross_entropy():
    torch.manual_seed(0)
    config = tiny_config()
    model = LxmertForVisualQuestionAnswering(config).train()
    inputs = tiny_inputs(config=config)
    scores = torch.zeros(2, config.num_qa_labels)
    scores[0, 1], scores[1, 3] = 1.0, 0.6
    output, losses = _train(model, inputs, {"labels": scores})
    assert losses[-1] < 0.5 * losses[0], losses
    expected = torch.nn.functional.binary_cross_entropy_with_logits(output.logits, scores) * config.num_qa_labels
    torch.testing.assert_close(output.loss, expected, atol=1e-5, rtol=1e-4)
    hard = model(**inputs, labels=torch.tensor([1, 3]))
    torch.testing.assert_close(hard.loss, torch.nn.functional.cross_entropy(hard.logits, torch.tensor([1, 3])))
    assert hard.logits is hard.question_answering_score


def test_model_rejects_bad_region_inputs():
    model = LxmertModel(tiny_config())
    inputs = tiny_inputs()
    with pytest.raises(ValueError, match="`visual_pos`"):
        model(**{**inputs, "visual_pos": inputs["visual_pos"][:, :3]})
    with pytest.raises(ValueError, match="`visual_attention_mask` must be"):
        model(**{**inputs, "visual_attention_mask": inputs["visual_attention_mask"][:, :2]})
    with pytest.raises(ValueError, match="`visual_feats`"):
        model(**{**inputs, "visual_feats": None})
    with pytest.raises(ValueError, match="batch 1 and `visual_feats` batch 2"):
        model(**{**inputs, "input_ids": inputs["input_ids"][:1], "attention_mask": inputs["attention_mask"][:1]})
    with pytest.raises(ValueError, match=r"obj_labels\['feat'\]\[0\]"):
        LxmertForPreTraining(tiny_config())(
            **inputs, obj_labels={"feat": (inputs["visual_feats"][..., :3], torch.ones(2, 4))}
        )


# ------------------------------------------------------------------------------------------------------------------
# processor, collator, Auto classes, LoRA
# ------------------------------------------------------------------------------------------------------------------


def _processor(bert_tokenizer):
    return LxmertProcessor(RegionFeatureProcessor(), bert_tokenizer)


def test_processor_output_is_exactly_the_model_arguments(bert_tokenizer):
    processor = _processor(bert_tokenizer)
    rng = np.random.default_rng(0)
    batch = processor(
        text=["what color is the circle?", "is there a cross?"],
        visual_feats=[rng.random((3, 12)), rng.random((5, 12))],
        boxes=[[[0, 0, 10, 20]] * 3, [[5, 5, 50, 40]] * 5],
        image_sizes=[(20, 40), (100, 80)],
    )
    assert set(batch) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "visual_feats",
        "visual_pos",
        "visual_attention_mask",
    }
    torch.testing.assert_close(batch["visual_pos"][1, 0], torch.tensor([0.05, 0.0625, 0.5, 0.5]))
    assert batch["token_type_ids"].max() == 0
    model = LxmertModel(tiny_config(vocab_size=len(bert_tokenizer))).eval()
    assert model(**batch).vision_output.shape == (2, 5, 16)


def test_processor_rejects_mismatched_features_and_boxes(bert_tokenizer):
    processor = _processor(bert_tokenizer)
    with pytest.raises(ValueError, match="3 region features but 2 boxes"):
        processor(text=["a"], visual_feats=[np.zeros((3, 12))], boxes=[np.zeros((2, 4))], image_sizes=[(5, 5)])
    with pytest.raises(ValueError, match="`image_sizes`"):
        processor(text=["a"], visual_feats=[np.zeros((1, 12))], boxes=[[[0, 0, 1, 1]]])
    with pytest.raises(ValueError, match="outside the 5x5 image"):
        processor(text=["a"], visual_feats=[np.zeros((1, 12))], boxes=[[[0, 0, 9, 3]]], image_sizes=[(5, 5)])


def test_auto_classes_and_processor_round_trip(tmp_path, bert_tokenizer):
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(bert_tokenizer))
    inputs = tiny_inputs(config=config)
    model = LxmertForVisualQuestionAnswering(config).eval()
    model.save_pretrained(tmp_path)
    _processor(bert_tokenizer).save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path).eval()
    assert type(reloaded) is LxmertForVisualQuestionAnswering
    torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)
    assert isinstance(transformers.AutoProcessor.from_pretrained(tmp_path), LxmertProcessor)
    pretraining = LxmertForPreTraining(config)
    pretraining.save_pretrained(tmp_path / "pretraining")
    assert transformers.AutoConfig.from_pretrained(tmp_path / "pretraining").visual_loss_normalizer == pytest.approx(
        1 / 0.15
    )
    ours = LxmertForPreTraining.from_pretrained(tmp_path / "pretraining")
    assert ours.cls.predictions.decoder.weight is ours.lxmert.embeddings.word_embeddings.weight
    theirs = transformers.AutoModelForPreTraining.from_pretrained(tmp_path / "pretraining")
    assert isinstance(theirs, transformers.LxmertForPreTraining)
    torch.testing.assert_close(
        theirs.obj_predict_head.decoder_dict["obj"].weight, pretraining.obj_predict_head.decoder_dict["obj"].weight
    )


def _rows(count=6, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    texts = ["what color is the circle?", "a red circle and two squares", "is there a cross?", "three shapes"]
    rows = []
    for i in range(count):
        regions = 3 + i % 2
        probs = rng.dirichlet(np.ones(6), size=regions).astype(np.float32)
        rows.append(
            {
                "text": texts[i % len(texts)],
                "region_features": rng.random((regions, dim)).astype(np.float32) + 0.1,
                "boxes": [[0, 0, 10, 10]] * regions,
                "image_width": 20,
                "image_height": 20,
                "region_class_probs": probs,
                "region_colors": rng.integers(0, 5, regions).tolist(),
                "answer_ids": [2] if i % 2 == 0 else [],
                "answer_scores": [1.0] if i % 2 == 0 else [],
            }
        )
    return rows


def test_collator_follows_the_original_recipe_and_trains(bert_tokenizer):
    torch.manual_seed(0)
    collator = LxmertPretrainingCollator(_processor(bert_tokenizer), mlm_probability=0.3, mrm_probability=0.5, seed=3)
    rows = _rows()
    batch = collator(rows)
    matched = batch["matched_label"].bool()
    assert set(matched.tolist()) == {True, False}
    assert (batch["labels"] != -100).any(1).all(), "words are masked in matched and mismatched pairs"
    obj_ids, obj_weights = batch["obj_labels"]["obj"]
    padding = batch["visual_attention_mask"] == 0
    assert (obj_weights[padding] == 0).all() and (obj_weights[~padding] > 0).all()
    assert ((obj_ids[~padding] >= 1) & (obj_ids[~padding] <= 5)).all()  # argmax over non-background classes
    feats, region_mask = batch["obj_labels"]["feat"]
    assert region_mask.sum(1).min() >= 1
    zeroed = (batch["visual_feats"] == 0).all(-1) & (region_mask == 0) & ~padding
    assert not zeroed.any(), "only masked regions are corrupted"
    assert torch.equal(batch["visual_feats"][region_mask == 0], feats[region_mask == 0])
    has_answer = torch.tensor([bool(row["answer_ids"]) for row in rows])
    assert torch.equal(batch["ans"] != -100, has_answer & matched)

    config = tiny_config(vocab_size=len(bert_tokenizer))
    model = LxmertForPreTraining(config).train()
    output, losses = _train(model, batch, {}, steps=5, lr=5e-3)
    assert all(getattr(output, f"{k}_loss") is not None for k in ("mlm", "matched", "obj", "attr", "feat"))
    assert losses[-1] < losses[0], losses
    with pytest.raises(ValueError, match="unknown LXMERT objectives"):
        LxmertPretrainingCollator(_processor(bert_tokenizer), objectives=("mlm", "mrc_kl"))


@pytest.mark.parametrize("targets", [LORA_TARGET_MODULES, ["query", "key", "value"]], ids=["preset", "attention_only"])
def test_lora_preset_reaches_both_streams_under_reentrant_checkpointing(tmp_path, targets):
    """With frozen weights and reentrant checkpointing, the region stream only carries gradients into the
    relational layers because `enable_input_require_grads` also hooks the region encoder (needed when `visn_fc` has
    no adapter; without the hook the relational layers' adapters get no gradient)."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    config = tiny_config()
    inputs = tiny_inputs(config=config)
    scores = torch.zeros(2, config.num_qa_labels)
    scores[:, 1] = 1.0
    base = LxmertForVisualQuestionAnswering(config)
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, modules_to_save=["answer_head"])
    model = peft.get_peft_model(base, lora).train()
    model(**inputs, labels=scores).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    parts = ["encoder.layer.0.attention.self.query", "encoder.r_layers.0.attention.self.query"]
    parts += ["encoder.x_layers.0.visual_attention.att.query"]
    parts += ["encoder.visn_fc.visn_fc"] if "visn_fc.visn_fc" in targets else []
    for part in parts:
        name = next(n for n in grads if part in n)
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    if targets != LORA_TARGET_MODULES:
        return
    _, losses = _train(model, inputs, {"labels": scores}, steps=6)
    assert losses[-1] < losses[0], losses
    model.eval()
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)  # the same frozen base weights as `base`
    reloaded = peft.PeftModel.from_pretrained(LxmertForVisualQuestionAnswering(config), tmp_path).eval()
    torch.testing.assert_close(reloaded(**inputs).logits, expected)
    merged = reloaded.merge_and_unload()
    torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-5, rtol=1e-5)


def test_pretraining_runs_through_vlp_trainer(tmp_path, bert_tokenizer):
    import datasets
    from transformers import TrainerCallback, TrainingArguments

    from hf_vlp.trainer import VLPTrainer

    logged = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append(dict(logs or {}))

    torch.manual_seed(0)
    rows = _rows(count=8)
    for row in rows:
        row["region_features"] = row["region_features"].tolist()
        row["region_class_probs"] = row["region_class_probs"].tolist()
    model = LxmertForPreTraining(tiny_config(vocab_size=len(bert_tokenizer)))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        report_to=[],
        remove_unused_columns=False,
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = VLPTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        data_collator=LxmertPretrainingCollator(_processor(bert_tokenizer), seed=0),
        callbacks=[Recorder()],
    )
    trainer.train()
    first = next(entry for entry in logged if "loss" in entry)
    assert {"mlm_loss", "itm_loss", "obj_loss", "attr_loss", "feat_loss"} <= set(first)
