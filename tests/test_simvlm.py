"""SimVLM (implemented from the paper; docs/simvlm.md): generation equals a step-by-step reference, the prefix /
causal masks never leak, the PrefixLM objective learns, the PrefixLM split, the VQA heads, Auto classes, LoRA and
input errors. The common suite (tests/test_common_models.py) covers save/load, SDPA, checkpointing, padding."""

import pytest
import torch
import transformers
from transformers import BertTokenizer

import hf_vlp
from hf_vlp.modeling.simvlm import (
    CAPTION_PROMPT,
    SIZES,
    PrefixLmCollator,
    SimVlmConfig,
    SimVlmForConditionalGeneration,
    SimVlmForVisualQuestionAnswering,
    SimVlmForVisualQuestionAnsweringClassifier,
    SimVlmModel,
    build_simvlm_processor,
    prefix_lm_split,
    simvlm_config,
)
from hf_vlp.recipes import build_config

VOCAB = 40
EOS = 3


def tiny_config(**overrides):
    values = dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_encoder_layers=2,
        num_decoder_layers=2,
        vocab_size=VOCAB,
        image_size=32,
        conv_stem_width=8,
        conv_stage_depths=[1, 1, 1],
        conv_num_groups=4,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        eos_token_id=EOS,
        decoder_start_token_id=2,
        initializer_range=0.2,  # a random model whose next-token choices are far from ties
    )
    values.update(overrides)
    return SimVlmConfig(**values)


def tiny_model(cls=SimVlmForConditionalGeneration, seed=0, **overrides):
    torch.manual_seed(seed)
    return cls(tiny_config(**overrides)).eval()


def prefix_inputs(batch=2, length=5, seed=0):
    rng = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch, length), generator=rng)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[-1, -2:] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    pixel_values = torch.randn(batch, 3, 32, 32, generator=rng)
    return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)


def _full_logits(model, inputs, decoder_input_ids):
    with torch.no_grad():
        return model(**inputs, decoder_input_ids=decoder_input_ids, use_cache=False).logits


# ------------------------------------------------------------------------------------------------------------------
# generation = a step-by-step reference without cache
# ------------------------------------------------------------------------------------------------------------------


def reference_greedy(model, inputs, steps):
    """Re-runs the whole decoder on the sequence so far at each step (no cache); rows stop after eos (then pad)."""
    config = model.config
    batch = inputs["pixel_values"].shape[0]
    sequence = torch.full((batch, 1), config.decoder_start_token_id)
    finished = torch.zeros(batch, dtype=torch.bool)
    for _ in range(steps):
        next_token = _full_logits(model, inputs, sequence)[:, -1].argmax(-1)
        next_token = torch.where(finished, torch.full_like(next_token, config.pad_token_id), next_token)
        sequence = torch.cat([sequence, next_token[:, None]], dim=1)
        finished |= next_token == config.eos_token_id
        if finished.all():
            break
    return sequence


def reference_beam_search(model, inputs, steps, num_beams, suppressed):
    """Textbook beam search without cache over log-probabilities, `suppressed` tokens never chosen (so every beam
    runs `steps` tokens and the best beam is the highest total log-probability)."""
    config = model.config
    results = []
    for row in range(inputs["pixel_values"].shape[0]):
        single = {name: value[row : row + 1] for name, value in inputs.items()}
        beams = [([config.decoder_start_token_id], 0.0)]
        for _ in range(steps):
            candidates = []
            for tokens, score in beams:
                log_probs = _full_logits(model, single, torch.tensor([tokens]))[0, -1].log_softmax(-1)
                log_probs[suppressed] = -float("inf")
                top = log_probs.topk(num_beams)
                candidates += [(tokens + [int(t)], score + float(s)) for s, t in zip(top.values, top.indices)]
            beams = sorted(candidates, key=lambda c: c[1], reverse=True)[:num_beams]
        results.append(beams[0][0])
    return torch.tensor(results)


def test_greedy_generate_with_cache_equals_the_reference_without_cache():
    model = tiny_model()
    inputs = prefix_inputs()
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    reference = reference_greedy(model, inputs, steps=6)
    assert torch.equal(generated, reference), (generated, reference)
    assert len(set(generated[:, 1:].flatten().tolist())) > 1, "a degenerate model makes the comparison vacuous"


def test_beam_search_with_cache_equals_the_reference_without_cache():
    model = tiny_model(seed=1)
    inputs = prefix_inputs(seed=1)
    generated = model.generate(
        **inputs, max_new_tokens=4, num_beams=3, do_sample=False, suppress_tokens=[EOS], length_penalty=0.0
    )
    reference = reference_beam_search(model, inputs, steps=4, num_beams=3, suppressed=[EOS])
    assert torch.equal(generated, reference), (generated, reference)
    greedy = model.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=[EOS])
    assert not torch.equal(generated, greedy), "beam search found nothing greedy did not: the test shows nothing"


def test_cached_decoding_steps_give_the_full_forward_logits():
    model = tiny_model()
    inputs = prefix_inputs()
    decoder_input_ids = torch.randint(5, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    full = _full_logits(model, inputs, decoder_input_ids)
    cache, steps = None, []
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(**inputs)
        for position in range(6):
            output = model(
                attention_mask=inputs["attention_mask"],
                encoder_outputs=encoder_outputs,
                decoder_input_ids=decoder_input_ids[:, position : position + 1],
                cache=cache,
                use_cache=True,
            )
            cache = output.cache
            steps.append(output.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


def test_captioning_without_a_prompt_and_zero_shot_prompting_generate():
    model = tiny_model()
    inputs = prefix_inputs()
    image_only = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=3, do_sample=False)
    reference = reference_greedy(model, {"pixel_values": inputs["pixel_values"]}, steps=3)
    assert torch.equal(image_only, reference)
    # a prompt ("a picture of" in the paper) is more prefix: it changes what the decoder predicts
    start = torch.full((2, 1), model.config.decoder_start_token_id)
    prompted = _full_logits(model, inputs, start)
    unprompted = _full_logits(model, {"pixel_values": inputs["pixel_values"]}, start)
    assert (prompted - unprompted).abs().amax() > 1e-3


# ------------------------------------------------------------------------------------------------------------------
# masks: causal over the suffix, bidirectional over the prefix
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_perturbing_later_suffix_tokens_leaves_earlier_logits_unchanged(attn_implementation):
    model = tiny_model()
    model.set_attn_implementation(attn_implementation)
    inputs = prefix_inputs()
    decoder_input_ids = torch.randint(5, VOCAB, (2, 7), generator=torch.Generator().manual_seed(4))
    perturbed = decoder_input_ids.clone()
    perturbed[:, 4:] = torch.randint(5, VOCAB, (2, 3), generator=torch.Generator().manual_seed(5))
    assert not torch.equal(perturbed[:, 4:], decoder_input_ids[:, 4:])
    before, after = _full_logits(model, inputs, decoder_input_ids), _full_logits(model, inputs, perturbed)
    torch.testing.assert_close(after[:, :4], before[:, :4], atol=1e-6, rtol=0)
    assert (after[:, 4:] - before[:, 4:]).abs().amax() > 1e-3, "the perturbed positions did not see their inputs"


def test_perturbing_the_prefix_changes_every_suffix_logit_and_the_prefix_is_bidirectional():
    model = tiny_model()
    inputs = prefix_inputs()
    decoder_input_ids = torch.randint(5, VOCAB, (2, 5), generator=torch.Generator().manual_seed(6))
    before = _full_logits(model, inputs, decoder_input_ids)
    last_word = dict(inputs, input_ids=inputs["input_ids"].clone())
    last_word["input_ids"][0, -1] = (last_word["input_ids"][0, -1] + 1 - 5) % (VOCAB - 5) + 5
    changed = _full_logits(model, last_word, decoder_input_ids)
    assert ((changed[0] - before[0]).abs().amax(-1) > 1e-4).all(), "a suffix position did not see the prefix"
    torch.testing.assert_close(changed[1], before[1])  # the other example
    other_image = dict(inputs, pixel_values=inputs["pixel_values"].flip(0))
    assert ((_full_logits(model, other_image, decoder_input_ids) - before).abs().amax(-1) > 1e-4).all()
    # bidirectional prefix: the first image token's encoder state depends on the last text token
    with torch.no_grad():
        encoder = model.get_encoder()
        first_before = encoder(**inputs).last_hidden_state[0, 0]
        first_after = encoder(**last_word).last_hidden_state[0, 0]
    assert (first_after - first_before).abs().amax() > 1e-4


def test_padded_prefix_tokens_are_never_attended():
    model = tiny_model()
    inputs = prefix_inputs()
    decoder_input_ids = torch.randint(5, VOCAB, (2, 4), generator=torch.Generator().manual_seed(7))
    junk = dict(inputs, input_ids=inputs["input_ids"].clone())
    junk["input_ids"][1, -2:] = 17  # the padded positions of example 1
    torch.testing.assert_close(
        _full_logits(model, junk, decoder_input_ids), _full_logits(model, inputs, decoder_input_ids)
    )


# ------------------------------------------------------------------------------------------------------------------
# the PrefixLM objective
# ------------------------------------------------------------------------------------------------------------------


def test_prefix_lm_split_cuts_the_text_into_a_prefix_and_a_non_empty_suffix():
    rng = torch.Generator().manual_seed(0)
    text = list(range(10, 16))
    cuts = set()
    for with_image in (True, False):
        for _ in range(60):
            prefix, suffix = prefix_lm_split(text, rng, with_image=with_image)
            assert prefix + suffix == text and suffix
            assert with_image or prefix
            cuts.add((with_image, len(prefix)))
    assert {n for image, n in cuts if image} == set(range(0, 6))  # an image-text prefix may be empty
    assert {n for image, n in cuts if not image} == set(range(1, 6))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        prefix_lm_split([7], rng, with_image=False)


def test_collator_builds_image_text_and_text_only_batches():
    collator = PrefixLmCollator(pad_token_id=0, eos_token_id=EOS, seed=0)
    image = torch.zeros(3, 32, 32)
    texts = [[10, 11, 12, 13], [20, 21, 22]]
    batch = collator([{"input_ids": t, "pixel_values": image} for t in texts])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    for row, text in enumerate(texts):
        suffix = [int(i) for i in batch["labels"][row] if i != -100]
        prefix = [int(i) for i, m in zip(batch.get("input_ids", torch.zeros(2, 0))[row], batch.get(
            "attention_mask", torch.zeros(2, 0))[row]) if m]  # fmt: skip
        assert suffix[-1] == EOS and prefix + suffix[:-1] == text
    text_only = collator([{"input_ids": t} for t in texts])
    assert "pixel_values" not in text_only and text_only["attention_mask"].sum(1).min() >= 1
    with pytest.raises(ValueError, match="all image-text or all text-only"):
        collator([{"input_ids": texts[0], "pixel_values": image}, {"input_ids": texts[1]}])


def _train(model, batches, steps, lr=3e-3):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_prefix_lm_loss_falls_on_image_text_and_text_only_batches():
    model = tiny_model()
    collator = PrefixLmCollator(pad_token_id=0, eos_token_id=EOS, seed=0)
    rng = torch.Generator().manual_seed(0)
    texts = [torch.randint(5, VOCAB, (6,), generator=rng).tolist() for _ in range(4)]
    images = torch.randn(4, 3, 32, 32, generator=rng)
    image_text = collator([{"input_ids": t, "pixel_values": i} for t, i in zip(texts, images)])
    text_only = collator([{"input_ids": t} for t in texts])
    losses = _train(model, [image_text, text_only], steps=40)
    first = (losses[0] + losses[1]) / 2
    last = (losses[-2] + losses[-1]) / 2
    assert last < 0.5 * first, losses


def test_vqa_answer_scores_are_the_negative_suffix_losses():
    model = tiny_model(SimVlmForVisualQuestionAnswering)
    inputs = prefix_inputs()
    answers = torch.tensor([[7, 8, EOS], [9, EOS, 0]])
    answer_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    scores = model.answer_scores(
        inputs["pixel_values"], inputs["input_ids"], answers, inputs["attention_mask"], answer_mask
    )
    assert scores.shape == (2, 2)
    for row in range(2):
        for answer in range(2):
            labels = answers[answer : answer + 1].masked_fill(answer_mask[answer : answer + 1] == 0, -100)
            single = {name: value[row : row + 1] for name, value in inputs.items()}
            with torch.no_grad():
                loss = model(**single, labels=labels).loss
            torch.testing.assert_close(scores[row, answer], -loss * answer_mask[answer].sum(), atol=1e-4, rtol=1e-4)


def test_classifier_vqa_head_learns_soft_scores_and_round_trips(tmp_path):
    model = tiny_model(SimVlmForVisualQuestionAnsweringClassifier, num_labels=5)
    inputs = prefix_inputs(batch=4)
    labels = torch.zeros(4, 5)
    labels[torch.arange(4), torch.tensor([0, 1, 2, 3])] = 1.0
    losses = _train(model, [dict(inputs, labels=labels)], steps=25)
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval().save_pretrained(tmp_path)
    reloaded = SimVlmForVisualQuestionAnsweringClassifier.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)
    with pytest.raises(ValueError, match="`labels` must have shape"):
        model(**inputs, labels=labels[:, :3])


# ------------------------------------------------------------------------------------------------------------------
# configuration, processor, Auto classes, LoRA
# ------------------------------------------------------------------------------------------------------------------


def _transformer_layer_parameters(width, mlp, cross_attention):
    attention = 4 * width * width + 4 * width
    return (
        attention * (2 if cross_attention else 1)
        + 2 * width * mlp
        + mlp
        + width
        + 2 * width * (3 if cross_attention else 2)
    )


@pytest.mark.parametrize("size", sorted(SIZES))
def test_presets_have_the_paper_sizes(size):
    config = simvlm_config(size)
    expected = SIZES[size]
    assert all(getattr(config, name) == value for name, value in expected.items())
    assert config.num_decoder_layers == config.num_encoder_layers and config.grid_size == 14
    with torch.device("meta"):
        model = SimVlmForConditionalGeneration(config)
    width, mlp = config.hidden_size, config.intermediate_size
    encoder = sum(p.numel() for p in model.model.encoder.layers.parameters())
    decoder = sum(p.numel() for p in model.model.decoder.layers.parameters())
    assert encoder == config.num_encoder_layers * _transformer_layer_parameters(width, mlp, False)
    assert decoder == config.num_decoder_layers * _transformer_layer_parameters(width, mlp, True)


def test_config_rejects_inconsistent_values():
    with pytest.raises(ValueError, match="image_size"):
        tiny_config(image_size=40)
    with pytest.raises(ValueError, match="conv_num_groups"):
        tiny_config(conv_num_groups=3)
    with pytest.raises(ValueError, match="num_attention_heads"):
        tiny_config(num_attention_heads=5)
    with pytest.raises(ValueError, match="size"):
        simvlm_config("giant")


def _tokenizer(tmp_path):
    words = ["a", "picture", "of", "red", "circle", "square", "what", "color", "is", "the", "?"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer(str(tmp_path / "vocab.txt"))


def test_processor_returns_the_model_inputs_and_round_trips_through_auto_processor(tmp_path):
    from PIL import Image

    tokenizer = _tokenizer(tmp_path)
    processor = build_simvlm_processor(tokenizer, image_size=32)
    images = [Image.new("RGB", (50, 40), color) for color in ("red", "blue")]
    batch = processor(
        images=images, text=[CAPTION_PROMPT, "what color is the circle ?"], text_target=["red", "a red circle"]
    )
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "labels"}
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["input_ids"][0, :3].tolist() == tokenizer.convert_tokens_to_ids(["a", "picture", "of"])
    assert batch["labels"][0].tolist() == [tokenizer.convert_tokens_to_ids("red"), tokenizer.sep_token_id, -100, -100]
    model = tiny_model(vocab_size=len(tokenizer), eos_token_id=tokenizer.sep_token_id)
    assert model(**batch).loss.isfinite()
    processor.save_pretrained(tmp_path / "processor")
    reloaded = transformers.AutoProcessor.from_pretrained(tmp_path / "processor")
    assert type(reloaded).__name__ == "SimVlmProcessor"
    again = reloaded(images=images, text=[CAPTION_PROMPT, "what color is the circle ?"])
    torch.testing.assert_close(again["pixel_values"], batch["pixel_values"])


def test_auto_classes_resolve_to_the_simvlm_heads(tmp_path):
    config = build_config("simvlm")
    assert type(transformers.AutoConfig.for_model("simvlm")) is SimVlmConfig
    pairs = [
        (transformers.AutoModel, SimVlmModel),
        (transformers.AutoModelForImageTextToText, SimVlmForConditionalGeneration),
        (transformers.AutoModelForPreTraining, SimVlmForConditionalGeneration),
        (transformers.AutoModelForVisualQuestionAnswering, SimVlmForVisualQuestionAnswering),
    ]
    for auto, expected in pairs:
        assert type(auto.from_config(config)) is expected, auto.__name__
    model = SimVlmForConditionalGeneration(config)
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert reloaded.generation_config.decoder_start_token_id == config.decoder_start_token_id
    assert reloaded.lm_head.weight is reloaded.model.shared.weight  # tied


def test_lora_preset_adapts_self_and_cross_attention_and_still_generates():
    from peft import LoraConfig, get_peft_model

    spec = hf_vlp.get_spec("simvlm")
    model = tiny_model()
    inputs = prefix_inputs()
    before = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=spec.lora_target_modules))
    adapted = {name.split(".base_model.model.")[-1] for name, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    for part in (
        "encoder.layers.0.self_attn.q_proj",
        "decoder.layers.1.self_attn.v_proj",
        "decoder.layers.0.cross_attn.k_proj",
    ):
        assert any(name.endswith(part) for name in adapted), part
    assert not any("conv_stem" in name or "lm_head" in name for name in adapted)
    # lora_B starts at zero: the adapted model generates what the base model did
    assert torch.equal(peft_model.generate(**inputs, max_new_tokens=4, do_sample=False), before)


# ------------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, argument",
    [
        (dict(pixel_values=torch.zeros(2, 3, 40, 40)), "pixel_values"),
        (dict(pixel_values=torch.zeros(2, 1, 32, 32)), "pixel_values"),
        (dict(attention_mask=torch.ones(2, 4, dtype=torch.long)), "attention_mask"),
        (dict(pixel_values=torch.zeros(3, 3, 32, 32)), "batch size"),
        (dict(labels=torch.ones(2, 3, 1, dtype=torch.long)), "labels"),
        (dict(input_ids=None, attention_mask=None, pixel_values=None), "pixel_values"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_argument(change, argument):
    model = tiny_model()
    inputs = dict(prefix_inputs(), labels=torch.tensor([[7, EOS], [8, EOS]]))
    inputs.update(change)
    with pytest.raises(ValueError, match=argument), torch.no_grad():
        model(**inputs)


def test_missing_decoder_inputs_and_too_long_texts_are_value_errors():
    model = tiny_model()
    inputs = prefix_inputs()
    with pytest.raises(ValueError, match="decoder_input_ids"), torch.no_grad():
        model(**inputs)
    with pytest.raises(ValueError, match="max_position_embeddings"), torch.no_grad():
        model(
            **dict(inputs, input_ids=torch.ones(2, 40, dtype=torch.long), attention_mask=None),
            labels=torch.ones(2, 2, dtype=torch.long),
        )
