"""VisualBERT: parity of the converted original checkpoints, the fixes over transformers' defaults, objectives,
processor, Auto classes, LoRA preset and input checks."""

import json

import numpy as np
import pytest
import torch
import transformers
from conftest import fixture_dir
from safetensors.torch import load_file

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.conversion import common
from hf_vlp.conversion import visual_bert as conversion
from hf_vlp.modeling.visual_bert import (
    LORA_TARGET_MODULES,
    VisualBertConfig,
    VisualBertForMultipleChoice,
    VisualBertForPreTraining,
    VisualBertForVisualQuestionAnswering,
    VisualBertForVisualReasoning,
    VisualBertPretrainingCollator,
    VisualBertProcessor,
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
        visual_embedding_dim=12,
        num_labels=5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    return VisualBertConfig(**{**sizes, **overrides})


def tiny_inputs(batch=2, text=6, regions=4, config=None, seed=0):
    config = config or tiny_config()
    generator = torch.Generator().manual_seed(seed)
    return dict(
        input_ids=torch.randint(5, config.vocab_size, (batch, text), generator=generator),
        attention_mask=torch.tensor([[1] * text] + [[1] * (text - 2) + [0, 0]] * (batch - 1)),
        visual_embeds=torch.rand(batch, regions, config.visual_embedding_dim, generator=generator),
        visual_attention_mask=torch.tensor([[1] * regions] + [[1] * (regions - 1) + [0]] * (batch - 1)),
    )


# ------------------------------------------------------------------------------------------------------------------
# parity with the original implementation
# ------------------------------------------------------------------------------------------------------------------


def _fixture_files(folder):
    """(bert config, {head type: training config}, checkpoints), recognised by content, not by name."""
    bert_configs, training_configs = [], {}
    for path in sorted(folder.glob("*.json")):
        content = json.loads(path.read_text())
        if "model" in content:
            training_configs[content["model"]["training_head_type"]] = path
        elif "num_attention_heads" in content:
            bert_configs.append(path)
    assert len(bert_configs) == 1, f"expected one bert config JSON in {folder}, found {bert_configs}"
    return bert_configs[0], training_configs, sorted(folder.glob("*.th"))


def test_fixture_parity_every_output_across_checkpoints():
    folder = fixture_dir("visual_bert")
    bert_config, _, checkpoints = _fixture_files(folder)
    reference = load_file(folder / "outputs.safetensors")
    verified = {}
    for checkpoint in checkpoints:
        model = conversion.convert(checkpoint, bert_config)
        lines = []
        assert common.verify(conversion, model, folder, atol=1e-4, print_fn=lines.append), "\n".join(lines)
        verified.update({line.split(":")[0]: line for line in lines if line.endswith(" ok")})
    missing = sorted(set(reference) - set(verified))
    assert not missing, f"outputs no checkpoint verified: {missing}"


def test_training_configs_name_the_head_of_each_checkpoint():
    folder = fixture_dir("visual_bert")
    bert_config, training_configs, checkpoints = _fixture_files(folder)
    classes = {"pretraining": VisualBertForPreTraining, "vqa": VisualBertForVisualQuestionAnswering}
    for checkpoint in checkpoints:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        head = conversion.head_type_from_keys(state)
        model = conversion.convert(checkpoint, bert_config, training_config=training_configs.get(head))
        assert type(model) is classes[head]
        assert model.config.visual_embedding_dim == state["bert.bert.embeddings.projection.weight"].shape[1]
        other = next(
            (path for name, path in training_configs.items() if (name == "pretraining") != (head == "pretraining")),
            None,
        )
        if other is not None:
            with pytest.raises(common.ConversionError, match="training config says"):
                conversion.convert(checkpoint, bert_config, training_config=other)


def test_fixture_batches_follow_the_original_masks():
    """The visual mask built from `image_dim_variable` and the default region types (0) are those the original
    passed on to `BertVisualModel` (`*.derived.*`)."""
    folder = fixture_dir("visual_bert")
    inputs = load_file(folder / "inputs.safetensors")
    for prefix in sorted({name.split(".")[0] for name in inputs}):
        batch = conversion.fixture_batch(inputs, prefix)
        joint = torch.cat([batch["attention_mask"], batch["visual_attention_mask"]], 1)
        assert torch.equal(joint, inputs[f"{prefix}.derived.attention_mask"])
        types = batch.get("visual_token_type_ids", torch.zeros_like(batch["visual_attention_mask"]))
        assert torch.equal(types, inputs[f"{prefix}.derived.visual_embeddings_type"])


def test_transformers_defaults_deviate_where_hf_vlp_fixes_them():
    """transformers' own classes, given the same converted weights: region types default to 1 (far from the
    original), and the VQA `.logits` turn into log-probabilities when labels are passed."""
    folder = fixture_dir("visual_bert")
    bert_config, _, checkpoints = _fixture_files(folder)
    inputs, reference = load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")
    models = {type(m): m for m in (conversion.convert(c, bert_config) for c in checkpoints)}

    ours = models[VisualBertForPreTraining]
    theirs = transformers.VisualBertForPreTraining(ours.config).eval()
    theirs.load_state_dict(ours.state_dict())
    batch = conversion.fixture_batch(inputs, "pretrain")
    with torch.no_grad():
        default_ones = theirs(**batch, output_hidden_states=True).hidden_states[-1]
        zeros = ours(**batch, output_hidden_states=True).hidden_states[-1]
    assert (default_ones - reference["pretrain.sequence_output"]).abs().max() > 0.1
    torch.testing.assert_close(zeros, reference["pretrain.sequence_output"], atol=1e-4, rtol=0)

    ours = models[VisualBertForVisualQuestionAnswering]
    theirs = transformers.VisualBertForQuestionAnswering(ours.config).eval()
    theirs.load_state_dict(ours.state_dict())
    batch = conversion.fixture_batch(inputs, "vqa")
    batch["visual_token_type_ids"] = torch.zeros_like(batch["visual_attention_mask"])
    with torch.no_grad():
        theirs_logits = theirs(**batch, labels=inputs["vqa.label"]).logits
        ours_logits = ours(**batch, labels=inputs["vqa.label"]).logits
    torch.testing.assert_close(theirs_logits, torch.log_softmax(ours_logits, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_logits, reference["vqa.logits"][:, 0], atol=1e-4, rtol=0)


def test_converter_accepts_module_prefix_and_fp16(tmp_path):
    folder = fixture_dir("visual_bert")
    bert_config, _, checkpoints = _fixture_files(folder)
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    torch.save({f"module.{k}": v.half() for k, v in state.items()}, tmp_path / "prefixed.th")
    reference = conversion.convert(checkpoints[0], bert_config).state_dict()
    converted = conversion.convert(tmp_path / "prefixed.th", bert_config).state_dict()
    assert converted.keys() == reference.keys()
    for name, value in converted.items():
        assert torch.equal(value, reference[name].half().float()), name


def test_converter_rejects_unknown_keys_and_other_architectures(tmp_path):
    folder = fixture_dir("visual_bert")
    bert_config, _, checkpoints = _fixture_files(folder)
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    torch.save({**state, "bert.surprise.weight": torch.zeros(1)}, tmp_path / "unknown.th")
    with pytest.raises(common.ConversionError, match="bert.surprise.weight"):
        conversion.convert(tmp_path / "unknown.th", bert_config)
    # an LXMERT pre-training file, and a plain BERT file without region embeddings
    torch.save({"module.bert.embeddings.word_embeddings.weight": torch.zeros(8, 4)}, tmp_path / "lxmert.pth")
    with pytest.raises(common.ConversionError, match="not an original VisualBERT checkpoint"):
        conversion.convert(tmp_path / "lxmert.pth", bert_config)
    bert_only = {k: v for k, v in state.items() if "projection" not in k and "visual" not in k}
    torch.save(bert_only, tmp_path / "bert.th")
    with pytest.raises(common.ConversionError, match="without VisualBERT's region embeddings"):
        conversion.convert(tmp_path / "bert.th", bert_config)
    tampered = dict(
        state, **{"bert.cls.predictions.decoder.weight": torch.zeros_like(state["bert.cls.predictions.decoder.weight"])}
    )
    torch.save(tampered, tmp_path / "untied.th")
    with pytest.raises(common.ConversionError, match="differs from the word embeddings"):
        conversion.convert(tmp_path / "untied.th", bert_config)


def test_converter_needs_heads_for_non_base_widths(tmp_path):
    folder = fixture_dir("visual_bert")
    _, _, checkpoints = _fixture_files(folder)
    with pytest.raises(common.ConversionError, match="attention heads is not stored"):
        conversion.convert(checkpoints[0])


def _original_state(config, head_outputs=None, detector=False):
    """An original-layout state dict of a tiny model (the layout of the released files)."""
    model = VisualBertForPreTraining(config)
    state = {}
    for name, value in model.visual_bert.state_dict().items():
        name = (
            name.replace("visual_token_type_embeddings", "token_type_embeddings_visual")
            .replace("visual_position_embeddings", "position_embeddings_visual")
            .replace("visual_projection", "projection")
        )
        state[f"bert.bert.{name}"] = value
    if head_outputs is None:
        for name, value in model.cls.state_dict().items():
            if name != "predictions.decoder.bias":
                state[f"bert.cls.{name}"] = value
    else:
        state["bert.classifier.weight"] = torch.randn(head_outputs, config.hidden_size)
        state["bert.classifier.bias"] = torch.randn(head_outputs)
    if detector:
        state["detector.backbone.0.weight"] = torch.randn(4, 3, 1, 1)
        state["detector.obj_downsample.1.weight"] = torch.randn(512, 8)
    return state


@pytest.mark.parametrize(
    "outputs, detector, model_class",
    [
        (3, False, VisualBertForVisualQuestionAnswering),
        (2, False, VisualBertForVisualReasoning),
        (1, True, VisualBertForMultipleChoice),
    ],
)
def test_fine_tuned_heads_convert_from_the_original_layouts(tmp_path, caplog, outputs, detector, model_class):
    config = tiny_config()
    state = _original_state(config, head_outputs=outputs, detector=detector)
    torch.save(state, tmp_path / "fine_tuned.th")
    bert_config = {"num_attention_heads": config.num_attention_heads}
    model = conversion.convert(tmp_path / "fine_tuned.th", bert_config)
    assert type(model) is model_class and model.config.num_labels == outputs
    torch.testing.assert_close(model.cls.weight, state["bert.classifier.weight"])
    assert ("detector" in caplog.text) == detector


# ------------------------------------------------------------------------------------------------------------------
# model behaviour and objectives
# ------------------------------------------------------------------------------------------------------------------


def test_region_token_types_default_to_zero():
    torch.manual_seed(0)
    model = VisualBertForPreTraining(tiny_config()).eval()
    inputs = tiny_inputs()
    zeros = torch.zeros_like(inputs["visual_attention_mask"])
    torch.testing.assert_close(
        model(**inputs).prediction_logits, model(**inputs, visual_token_type_ids=zeros).prediction_logits
    )
    assert not torch.allclose(
        model(**inputs).prediction_logits, model(**inputs, visual_token_type_ids=zeros + 1).prediction_logits
    )


def test_text_only_mlm_labels_are_padded_over_the_regions():
    torch.manual_seed(0)
    model = VisualBertForPreTraining(tiny_config()).eval()
    inputs = tiny_inputs()
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 2] = inputs["input_ids"][:, 2]
    joint = torch.cat([labels, torch.full_like(inputs["visual_attention_mask"], -100)], 1)
    torch.testing.assert_close(model(**inputs, labels=labels).loss, model(**inputs, labels=joint).loss)
    assert model(**inputs, labels=torch.full_like(labels, -100)).loss.item() == 0.0  # no masked word: 0, not NaN


def _train(model, inputs, labels, steps=12, lr=1e-2):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        output = model(**inputs, **labels)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    return output, losses


@pytest.mark.parametrize("objective", ["mlm", "matching"])
def test_each_pretraining_objective_loss_falls(objective):
    torch.manual_seed(0)
    model = VisualBertForPreTraining(tiny_config()).train()
    inputs = tiny_inputs()
    if objective == "mlm":
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, 2] = inputs["input_ids"][:, 2]
        labels = {"labels": labels}
    else:
        labels = {"sentence_image_labels": torch.tensor([1, 0])}
    output, losses = _train(model, inputs, labels)
    name = {"mlm": "mlm_loss", "matching": "itm_loss"}[objective]
    assert getattr(output, name) is not None
    assert losses[-1] < 0.7 * losses[0], losses


def test_vqa_head_trains_on_soft_scores_and_returns_raw_logits():
    torch.manual_seed(0)
    config = tiny_config()
    model = VisualBertForVisualQuestionAnswering(config).train()
    inputs = tiny_inputs()
    scores = torch.zeros(2, config.num_labels)
    scores[0, 1], scores[1, 3], scores[1, 4] = 1.0, 0.6, 0.3
    output, losses = _train(model, inputs, {"labels": scores})
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    with torch.no_grad():
        raw = model(**inputs).logits
        with_labels = model(**inputs, labels=scores)
    torch.testing.assert_close(with_labels.logits, raw)
    expected = torch.nn.functional.kl_div(torch.log_softmax(raw, -1), scores, reduction="batchmean")
    torch.testing.assert_close(with_labels.loss, expected)


def test_vqa_head_reads_the_answer_at_the_mask_token(bert_tokenizer):
    """Right-padded `[CLS] q ? [MASK] [SEP]`: the answer hidden state is that of [MASK] (attention_mask.sum - 2)."""
    processor = VisualBertProcessor(RegionFeatureProcessor(), bert_tokenizer)
    batch = processor(
        text=["what color is it?", "is the large cube left of the small red circle?"],
        visual_feats=[np.ones((2, 12)), np.ones((3, 12))],
        question_answering=True,
    )
    position = batch["attention_mask"].sum(1) - 2
    assert (batch["input_ids"][torch.arange(2), position] == bert_tokenizer.mask_token_id).all()


# ------------------------------------------------------------------------------------------------------------------
# processor, collator, Auto classes, LoRA
# ------------------------------------------------------------------------------------------------------------------


def _processor(bert_tokenizer):
    return VisualBertProcessor(RegionFeatureProcessor(), bert_tokenizer)


def test_processor_output_is_exactly_the_model_arguments(bert_tokenizer):
    processor = _processor(bert_tokenizer)
    rng = np.random.default_rng(0)
    batch = processor(
        text=["a red circle", "two blue squares"],
        text_pair=["a circle", "a cross"],
        visual_feats=[rng.random((3, 12)), rng.random((5, 12))],
        visual_token_type_ids=[[0, 0, 1], [0, 0, 0, 1, 1]],
    )
    assert set(batch) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "visual_embeds",
        "visual_attention_mask",
        "visual_token_type_ids",
    }
    assert set(batch) == set(processor.model_input_names)
    assert batch["visual_attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert batch["visual_token_type_ids"].tolist() == [[0, 0, 1, 0, 0], [0, 0, 0, 1, 1]]
    assert batch["token_type_ids"].max() == 1  # the second segment
    model = VisualBertForVisualReasoning(tiny_config(vocab_size=len(bert_tokenizer), num_labels=2)).eval()
    assert model(**batch).logits.shape == (2, 2)
    default = processor(text=["a"], visual_feats=[rng.random((2, 12))])
    assert default["visual_token_type_ids"].tolist() == [[0, 0]]


def test_processor_rejects_mismatched_features_and_boxes(bert_tokenizer):
    processor = _processor(bert_tokenizer)
    with pytest.raises(ValueError, match="3 region features but 2 boxes"):
        processor(text=["a"], visual_feats=[np.zeros((3, 12))], boxes=[np.zeros((2, 4))], image_sizes=[(5, 5)])
    with pytest.raises(ValueError, match="same feature size"):
        processor(text=["a", "b"], visual_feats=[np.zeros((3, 12)), np.zeros((3, 8))])
    with pytest.raises(ValueError, match="2 texts but 1 images"):
        processor(text=["a", "b"], visual_feats=[np.zeros((3, 12))])
    with pytest.raises(ValueError, match="`visual_token_type_ids` has 2 entries for 3 regions"):
        processor(text=["a"], visual_feats=[np.zeros((3, 12))], visual_token_type_ids=[[0, 1]])


def test_model_rejects_bad_region_inputs():
    model = VisualBertForPreTraining(tiny_config())
    inputs = tiny_inputs()
    with pytest.raises(ValueError, match="`visual_attention_mask` must be"):
        model(**{**inputs, "visual_attention_mask": inputs["visual_attention_mask"][:, :2]})
    with pytest.raises(ValueError, match="`visual_embeds` must be"):
        model(**{**inputs, "visual_embeds": inputs["visual_embeds"][0]})
    with pytest.raises(ValueError, match="batch 1 and `visual_embeds` batch 2"):
        model(**{**inputs, "input_ids": inputs["input_ids"][:1], "attention_mask": inputs["attention_mask"][:1]})
    with pytest.raises(ValueError, match="`attention_mask`"):
        VisualBertForVisualQuestionAnswering(tiny_config())(**{**inputs, "attention_mask": None})


def test_auto_classes_and_processor_round_trip(tmp_path, bert_tokenizer):
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(bert_tokenizer))
    inputs = tiny_inputs(config=config)
    model = VisualBertForVisualQuestionAnswering(config).eval()
    model.save_pretrained(tmp_path)
    _processor(bert_tokenizer).save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path).eval()
    assert type(reloaded) is VisualBertForVisualQuestionAnswering
    torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)
    processor = transformers.AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, VisualBertProcessor) and isinstance(processor.image_processor, RegionFeatureProcessor)
    # transformers' own pre-training class reads an hf_vlp pre-training save (same weight names)
    pretraining = VisualBertForPreTraining(config)
    pretraining.save_pretrained(tmp_path / "pretraining")
    theirs = transformers.AutoModelForPreTraining.from_pretrained(tmp_path / "pretraining")
    assert isinstance(theirs, transformers.VisualBertForPreTraining)
    assert theirs.cls.predictions.decoder.weight is theirs.visual_bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(
        theirs.visual_bert.embeddings.visual_projection.weight,
        pretraining.visual_bert.embeddings.visual_projection.weight,
    )


def _caption_rows(count=6, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    words = ["a red circle", "two blue squares left of a cross", "a small green triangle", "three shapes"]
    return [
        {
            "text": words[i % len(words)],
            "region_features": rng.random((3 + i % 2, dim)).astype(np.float32),
            "boxes": [[0, 0, 10, 10]] * (3 + i % 2),
            "image_width": 20,
            "image_height": 20,
        }
        for i in range(count)
    ]


def test_collator_makes_pretraining_batches_that_train(bert_tokenizer):
    torch.manual_seed(0)
    collator = VisualBertPretrainingCollator(_processor(bert_tokenizer), mlm_probability=0.3, seed=1)
    batch = collator(_caption_rows())
    assert {"labels", "sentence_image_labels", "visual_embeds", "visual_token_type_ids"} <= set(batch)
    assert set(batch["sentence_image_labels"].tolist()) == {0, 1}
    masked_rows = (batch["labels"] != -100).any(1)
    assert masked_rows.all(), "the original masks words of matched and mismatched pairs alike"
    model = VisualBertForPreTraining(tiny_config(vocab_size=len(bert_tokenizer))).train()
    output, losses = _train(model, batch, {}, steps=8, lr=5e-3)
    assert output.mlm_loss is not None and output.itm_loss is not None
    assert losses[-1] < losses[0], losses
    with pytest.raises(ValueError, match="unsupported objectives"):
        VisualBertPretrainingCollator(_processor(bert_tokenizer), objectives=("mlm", "mrfr"))


def test_lora_preset_trains_with_gradient_checkpointing_and_reloads(tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    config = tiny_config()
    inputs = tiny_inputs(config=config)
    scores = torch.zeros(2, config.num_labels)
    scores[:, 1] = 1.0
    base = VisualBertForVisualQuestionAnswering(config)
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGET_MODULES, modules_to_save=["cls"])
    model = peft.get_peft_model(base, lora).train()
    adapted = {
        name.split(".lora_")[0].split("base_model.model.")[-1]
        for name, _ in model.named_parameters()
        if "lora_A" in name
    }
    assert "visual_bert.embeddings.visual_projection" in adapted and any("attention.self.query" in n for n in adapted)
    output = model(**inputs, labels=scores)
    output.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert grads and all(g is not None for g in grads.values())
    assert grads[next(n for n in grads if "visual_projection" in n)].abs().sum() > 0
    assert grads[next(n for n in grads if "layer.0.attention.self.query" in n)].abs().sum() > 0
    _, losses = _train(model, inputs, {"labels": scores}, steps=8)
    assert losses[-1] < losses[0], losses
    model.eval()
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)  # the same frozen base weights as `base`
    reloaded = peft.PeftModel.from_pretrained(VisualBertForVisualQuestionAnswering(config), tmp_path).eval()
    torch.testing.assert_close(reloaded(**inputs).logits, expected)


def test_pretraining_runs_through_vlp_trainer(tmp_path, bert_tokenizer):
    import datasets
    from transformers import TrainerCallback, TrainingArguments

    from hf_vlp.trainer import VLPTrainer

    logged = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append(dict(logs or {}))

    torch.manual_seed(0)
    rows = [{**row, "region_features": row["region_features"].tolist()} for row in _caption_rows(count=8)]
    model = VisualBertForPreTraining(tiny_config(vocab_size=len(bert_tokenizer)))
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
        data_collator=VisualBertPretrainingCollator(_processor(bert_tokenizer), seed=0),
        callbacks=[Recorder()],
    )
    trainer.train()
    first = next(entry for entry in logged if "loss" in entry)
    assert {"mlm_loss", "itm_loss"} <= set(first)


def test_nlvr2_and_vcr_heads_train():
    torch.manual_seed(0)
    inputs = tiny_inputs()
    nlvr2 = VisualBertForVisualReasoning(tiny_config(num_labels=2)).train()
    types = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])  # two images' regions, concatenated
    _, losses = _train(nlvr2, {**inputs, "visual_token_type_ids": types}, {"labels": torch.tensor([1, 0])}, steps=8)
    assert losses[-1] < losses[0], losses
    vcr = VisualBertForMultipleChoice(tiny_config(num_labels=1)).train()
    choices = {k: v[:, None].expand(-1, 4, *v.shape[1:]).contiguous() for k, v in inputs.items()}
    choices["input_ids"] = torch.randint(5, 64, choices["input_ids"].shape, generator=torch.Generator().manual_seed(1))
    output, losses = _train(vcr, choices, {"labels": torch.tensor([2, 0])}, steps=8)
    assert output.logits.shape == (2, 4) and losses[-1] < losses[0], losses
