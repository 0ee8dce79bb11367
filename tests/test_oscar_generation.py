"""Oscar captioning through transformers' GenerationMixin: the decoding step over a key/value cache reproduces the
original's decoding (a [MASK] appended after the caption so far, tags at their training positions, a forced final
[SEP]), and what GenerationMixin brings works with it (beam search, sampling, logits processors, streamers)."""

import pytest
import torch
from test_oscar import tiny_config, tiny_inputs
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, TrainerState
from transformers.generation.streamers import BaseStreamer

from hf_vlp.modeling.oscar import OscarForConditionalGeneration
from hf_vlp.modeling.oscar.modeling_oscar import (
    CaptionDropWorstCallback,
    caption_attention_mask,
    caption_decoding_mask,
    caption_loss,
)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def captioning_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = OscarForConditionalGeneration(tiny_config(**overrides)).eval()
    with torch.no_grad():  # sharper distributions than the 0.02 init, so beams and samples differ
        for parameter in model.parameters():
            parameter.normal_(0, 0.5) if parameter.dim() > 1 else None
    return model


def tags_and_regions(config, batch=3):
    """The processor's generation layout: `tags [SEP]` (row 1+ with 2 padded tag tokens and a padded region)."""
    inputs = tiny_inputs(batch, config=config)
    return dict(
        input_ids=inputs["input_ids"][:, 4:],
        attention_mask=inputs["attention_mask"][:, 4:],
        visual_feats=inputs["visual_feats"],
        visual_pos=inputs["visual_pos"],
        visual_attention_mask=inputs["visual_attention_mask"],
    )


def full_text_logits(model, inputs, caption, max_length):
    """The original's decoding step written out with the full-text forward (no cache): `caption [MASK]` (positions
    0..t, segment 0) + tags (segment 1, positions from max(offset, max_length)) + regions; logits at [MASK]."""
    config = model.config
    tags = inputs["input_ids"]
    batch, length = caption.shape[0], caption.shape[1] + 1
    start = max(config.caption_tag_position_offset, max_length)
    text = torch.cat([caption, torch.full((batch, 1), config.mask_token_id), tags], 1)
    positions = torch.cat([torch.arange(length), torch.arange(start, start + tags.shape[1])]).expand(batch, -1)
    return model(
        input_ids=text,
        token_type_ids=torch.cat([torch.zeros(batch, length, dtype=torch.long), torch.ones_like(tags)], 1),
        position_ids=positions,
        attention_mask=torch.cat([torch.ones(batch, length, dtype=torch.long), inputs["attention_mask"]], 1),
        visual_feats=inputs["visual_feats"],
        visual_pos=inputs["visual_pos"],
        visual_attention_mask=inputs["visual_attention_mask"],
    ).logits[:, length - 1]


def naive_greedy(model, inputs, max_length):
    """Greedy decoding recomputing the whole sequence every step: argmax at [MASK]; finished rows get [PAD]; a row
    that reaches `max_length` gets [SEP] as its last token (the original overwrites it). Returns ids and step logits."""
    config = model.config
    batch = inputs["visual_feats"].shape[0]
    sequences = torch.full((batch, 1), config.bos_token_id)
    unfinished = torch.ones(batch, dtype=torch.bool)
    step_logits = []
    while sequences.shape[1] < max_length and unfinished.any():
        logits = full_text_logits(model, inputs, sequences, max_length)
        step_logits.append(logits)
        token = logits.argmax(-1)
        if sequences.shape[1] == max_length - 1:
            token = torch.full_like(token, config.eos_token_id)
        token = torch.where(unfinished, token, config.pad_token_id)
        sequences = torch.cat([sequences, token[:, None]], 1)
        unfinished &= token != config.eos_token_id
    return sequences, step_logits


# ------------------------------------------------------------------------------------------------------------------
# the decoding step reproduces the original's decoding
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_new_tokens, tag_offset", [(1, 8), (3, 8), (5, 8), (5, 3)])
def test_greedy_generate_equals_a_naive_loop_without_cache(max_new_tokens, tag_offset):
    """Token for token, and the logits of every step; with tag_offset 3 < max_length the tags start at max_length."""
    model = captioning_model(caption_tag_position_offset=tag_offset)
    inputs = tags_and_regions(model.config)
    expected, expected_logits = naive_greedy(model, inputs, max_length=1 + max_new_tokens)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, return_dict_in_generate=True, output_logits=True)
    assert out.sequences.tolist() == expected.tolist()
    for step, (ours, theirs) in enumerate(zip(out.logits, expected_logits, strict=True)):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4, msg=f"step {step}")
    uncached = model.generate(**inputs, max_new_tokens=max_new_tokens, use_cache=False)
    assert torch.equal(uncached, out.sequences)


def test_generate_defaults_follow_the_original_rules():
    """Captions start with [CLS] and stop at [SEP] (then [PAD]); one reaching max_length ends with a forced [SEP]."""
    model = captioning_model()
    config = model.config
    generation = model.generation_config
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, 0)
    assert generation.forced_eos_token_id == config.eos_token_id
    assert generation.max_length == config.caption_max_length
    sequences = model.generate(**tags_and_regions(config))
    assert sequences.shape[1] <= config.caption_max_length and (sequences[:, 0] == config.bos_token_id).all()
    for row in sequences.tolist():
        end = row.index(config.eos_token_id)
        assert all(token == config.pad_token_id for token in row[end + 1 :])
    # one new token: the forced [SEP] replaces whatever the model predicts
    assert (model.generate(**tags_and_regions(config), max_new_tokens=1) == torch.tensor([1, 2])).all()


def test_cache_holds_tags_regions_and_caption_tokens_never_the_mask():
    model = captioning_model()
    inputs = tags_and_regions(model.config)
    out = model.generate(**inputs, max_new_tokens=4, return_dict_in_generate=True)
    assert isinstance(out.cache, DynamicCache)
    tags, regions = inputs["input_ids"].shape[1], inputs["visual_feats"].shape[1]
    # every token but the last generated one has been fed back
    assert out.cache.get_seq_length() == tags + regions + out.sequences.shape[1] - 1


def test_cached_steps_match_full_reencoding_and_accept_past_key_values():
    """Driving the decoding step by hand: first step encodes tags + regions, later steps read them from the cache."""
    model = captioning_model()
    inputs = tags_and_regions(model.config)
    conditioning = model.caption_decoding_inputs(**inputs)
    cache = DynamicCache(config=model.config)
    caption = torch.full((3, 1), model.config.bos_token_id)
    masks = {k: conditioning[k] for k in ("tag_attention_mask", "visual_attention_mask")}
    logits = model(input_ids=caption, cache=cache, **conditioning).logits
    for position in range(1, 4):
        torch.testing.assert_close(logits[:, -1], full_text_logits(model, inputs, caption, 6), atol=1e-4, rtol=1e-4)
        caption = torch.cat([caption, logits[:, -1].argmax(-1, keepdim=True)], 1)
        step = dict(input_ids=caption[:, -1:], position_ids=torch.tensor([[position]]), **masks)
        with pytest.warns(FutureWarning, match="past_key_values"):  # the deprecated name still works
            logits = model(**step, past_key_values=cache).logits
    assert cache.get_seq_length() == conditioning["tag_ids"].shape[1] + 4 + caption.shape[1]


def test_decoding_mask_is_the_captioning_mask_in_cache_order():
    """First step over `[CLS] y1 [MASK]`: the decoding mask equals the training-time captioning mask of the same
    tokens, with keys and queries reordered to the cache layout [tags, regions, caption, [MASK]]."""
    tag_mask, region_mask = torch.tensor([[1, 1, 0]]), torch.tensor([[1, 0]])
    caption_mask = torch.ones(1, 2, dtype=torch.long)
    ours = caption_decoding_mask(torch.cat([tag_mask, region_mask], 1), caption_mask, 2, encodes_prefix=True)[0]
    text_mask = torch.cat([caption_mask, torch.ones(1, 1, dtype=torch.long), tag_mask], 1)
    is_caption = torch.tensor([[1, 1, 1, 0, 0, 0]])
    training = caption_attention_mask(text_mask, region_mask, is_caption)[0]
    order = torch.tensor([3, 4, 5, 6, 7, 0, 1, 2])  # tags, regions, [CLS], y1, [MASK]
    training = training[order][:, order]
    valid_rows = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1]).bool()  # training rows of padding attend to nothing
    assert torch.equal(ours[valid_rows], training[valid_rows])
    # a cached step: queries are y2 and [MASK] only, keys the 5 cached tags / regions, [CLS] y1 y2, [MASK]
    step = caption_decoding_mask(torch.cat([tag_mask, region_mask], 1), torch.ones(1, 3), 1, encodes_prefix=False)[0]
    assert step.tolist() == [[1, 1, 0, 1, 0, 1, 1, 1, 0], [1, 1, 0, 1, 0, 1, 1, 1, 1]]


def test_processor_layout_and_full_text_layout_decode_alike():
    """Tags given alone (segment 1) or behind a caption placeholder (the original's test layout) decode alike."""
    model = captioning_model()
    inputs = tags_and_regions(model.config)
    alone = model.generate(**inputs, token_type_ids=torch.ones_like(inputs["input_ids"]))
    placeholder = torch.tensor([[1, 3, 3, 2]] * 3)
    full = dict(inputs)
    full["input_ids"] = torch.cat([placeholder, inputs["input_ids"]], 1)
    full["attention_mask"] = torch.cat([torch.ones_like(placeholder), inputs["attention_mask"]], 1)
    full["token_type_ids"] = torch.cat([torch.zeros_like(placeholder), torch.ones_like(inputs["input_ids"])], 1)
    assert torch.equal(model.generate(**full), alone)
    assert torch.equal(model.generate(**inputs), alone)


# ------------------------------------------------------------------------------------------------------------------
# GenerationMixin features
# ------------------------------------------------------------------------------------------------------------------


def sequence_log_prob(model, inputs, sequences, max_length):
    """Sum of log p(token | caption before it) of each row, every step re-encoded in full (no cache)."""
    total = torch.zeros(sequences.shape[0])
    for step in range(1, sequences.shape[1]):
        log_probs = full_text_logits(model, inputs, sequences[:, :step], max_length).log_softmax(-1)
        token = sequences[:, step]
        alive = (sequences[:, 1:step] != model.config.eos_token_id).all(1)
        total += torch.where(alive, log_probs.gather(1, token[:, None]).squeeze(1), 0.0)
    return total


def test_beam_search_returns_best_hypotheses_with_their_true_scores():
    model = captioning_model()
    inputs = tags_and_regions(model.config)
    settings = dict(num_beams=3, num_return_sequences=2, return_dict_in_generate=True, output_scores=True)
    out = model.generate(**inputs, forced_eos_token_id=None, **settings)
    assert out.sequences.shape[0] == 6 and out.sequences.shape[1] <= model.config.caption_max_length
    scores = out.sequences_scores.view(3, 2)
    assert (scores[:, 0] >= scores[:, 1]).all()
    # each score is the sequence's log-probability under full re-encoding, over its length (length_penalty 1)
    repeated = {k: v.repeat_interleave(2, 0) for k, v in inputs.items()}
    generated = (out.sequences[:, 1:] != model.config.pad_token_id).sum(1)
    expected = sequence_log_prob(model, repeated, out.sequences, 6) / generated
    torch.testing.assert_close(out.sequences_scores, expected, atol=1e-4, rtol=1e-4)
    greedy = model.generate(**inputs, forced_eos_token_id=None, max_length=6)
    greedy_score = sequence_log_prob(model, inputs, greedy, 6) / (greedy[:, 1:] != 0).sum(1)
    assert (scores[:, 0] >= greedy_score - 1e-5).all()  # a 3-beam search finds at least greedy's score
    uncached = model.generate(**inputs, forced_eos_token_id=None, use_cache=False, **settings)
    assert torch.equal(uncached.sequences, out.sequences)


def test_sampling_with_a_seed_is_reproducible_and_top_1_is_greedy():
    model = captioning_model()
    inputs = tags_and_regions(model.config)
    samples = []
    for seed in (0, 0, 1, 2, 3):
        torch.manual_seed(seed)
        samples.append(model.generate(**inputs, do_sample=True, temperature=3.0))
    assert torch.equal(samples[0], samples[1])
    assert any(not torch.equal(samples[0], other) for other in samples[2:])  # the seed matters
    torch.manual_seed(0)
    assert torch.equal(model.generate(**inputs, do_sample=True, top_k=1), model.generate(**inputs))


class ForbidToken(LogitsProcessor):
    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores):
        return scores.index_fill(1, torch.tensor([self.token]), -float("inf"))


def test_a_logits_processor_is_honoured():
    model = captioning_model()
    inputs = tags_and_regions(model.config)
    greedy = model.generate(**inputs)
    favourite = greedy[:, 1:][greedy[:, 1:] != model.config.eos_token_id].mode().values.item()
    forbidden = model.generate(**inputs, logits_processor=LogitsProcessorList([ForbidToken(favourite)]))
    assert favourite not in forbidden.tolist()[0] + forbidden.tolist()[1] + forbidden.tolist()[2]
    assert not torch.equal(forbidden, greedy)


class Collect(BaseStreamer):
    def __init__(self):
        self.tokens, self.ended = [], False

    def put(self, value):
        self.tokens += value.flatten().tolist()

    def end(self):
        self.ended = True


def test_a_streamer_receives_the_caption_token_by_token():
    model = captioning_model()
    inputs = {k: v[:1] for k, v in tags_and_regions(model.config).items()}
    streamer = Collect()
    sequences = model.generate(**inputs, streamer=streamer)
    assert streamer.ended and streamer.tokens == sequences[0].tolist()


@pytest.mark.parametrize("max_new_tokens", [1, 2, 4])
def test_max_new_tokens_is_respected(max_new_tokens):
    model = captioning_model()
    sequences = model.generate(**tags_and_regions(model.config), max_new_tokens=max_new_tokens)
    assert sequences.shape[1] <= 1 + max_new_tokens
    assert (sequences == model.config.eos_token_id).any(1).all()  # every caption ended, by choice or forced


def test_generation_config_is_saved_and_restored(tmp_path):
    model = captioning_model(caption_max_length=5)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "generation_config.json").exists()
    reloaded = OscarForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.generation_config.to_diff_dict() == model.generation_config.to_diff_dict()
    (tmp_path / "generation_config.json").unlink()  # a folder saved before: Oscar's defaults again
    older = OscarForConditionalGeneration.from_pretrained(tmp_path)
    assert (older.generation_config.max_length, older.generation_config.forced_eos_token_id) == (5, 2)


# ------------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------------


def test_generate_rejects_bad_input_naming_the_argument():
    model = captioning_model()
    inputs = tags_and_regions(model.config)
    with pytest.raises(ValueError, match="`visual_feats` is required"):
        model.generate(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match="temperature"):
        model.generate(**inputs, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="`max_length`.*max_position_embeddings=64"):
        model.generate(**inputs, max_length=65)
    with pytest.raises(ValueError, match="`max_length`.*max_position_embeddings=64"):
        model.generate(**inputs, max_new_tokens=64)
    with pytest.raises(ValueError, match="tag tokens would sit at positions 62..64"):
        model.generate(**inputs, max_length=62)
    with pytest.raises(ValueError, match="legacy_beam_cache"):  # unknown arguments are not silently ignored
        model.generate(**inputs, legacy_beam_cache=True)


def test_decoding_step_rejects_bad_input_naming_the_argument():
    model = captioning_model()
    conditioning = model.caption_decoding_inputs(**tags_and_regions(model.config))
    start = torch.full((3, 1), model.config.bos_token_id)
    cache = DynamicCache(config=model.config)
    model(input_ids=start, cache=cache, **conditioning)
    with pytest.raises(ValueError, match="`tag_attention_mask` and `visual_attention_mask`"):
        model(input_ids=start, cache=cache)
    with pytest.raises(ValueError, match="no `labels`"):
        model(input_ids=start, labels=start, **conditioning)
    with pytest.raises(ValueError, match="`visual_feats` is required"):
        model(input_ids=start, tag_ids=conditioning["tag_ids"])
    with pytest.raises(ValueError, match="`position_ids` reach position 64"):
        model(input_ids=start, position_ids=torch.tensor([[63]]), **conditioning)


# ------------------------------------------------------------------------------------------------------------------
# training: forward keeps no state, the drop-worst schedule comes from the Trainer
# ------------------------------------------------------------------------------------------------------------------


def _masked_caption_batch(config):
    inputs = tiny_inputs(config=config)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 1:4] = inputs["input_ids"][:, 1:4]
    inputs["input_ids"] = inputs["input_ids"].masked_fill(labels != -100, config.mask_token_id)
    return dict(**inputs, labels=labels)


def test_forward_keeps_no_state_and_drop_worst_follows_the_trainer_step():
    model = captioning_model(caption_drop_worst_ratio=0.5, caption_drop_worst_after=2).train()
    batch = _masked_caption_batch(model.config)
    attributes = dict(vars(model))
    first, second = model(**batch).loss, model(**batch).loss
    assert torch.equal(first, second) and vars(model) == attributes  # calling forward changes nothing
    full = caption_loss(model(**batch).masked_logits, batch["labels"][batch["labels"] != -100])
    torch.testing.assert_close(first, full)

    callback, wrapper = CaptionDropWorstCallback(), torch.nn.ModuleDict({"inner": model})  # e.g. under PEFT / DDP
    for global_step, drops in ((0, False), (1, False), (2, True), (5, True)):
        callback.on_step_begin(None, TrainerState(global_step=global_step), None, model=wrapper)
        output = model(**batch)
        targets = batch["labels"][batch["labels"] != -100]
        expected = caption_loss(output.masked_logits, targets, drop_worst_ratio=0.5 if drops else 0.0)
        torch.testing.assert_close(output.loss, expected)
        assert (output.loss < full) == drops
    # with caption_drop_worst_after=0 the original drops from its first loss call: no callback needed
    eager = captioning_model(caption_drop_worst_ratio=0.5).train()
    output = eager(**batch)
    targets = batch["labels"][batch["labels"] != -100]
    torch.testing.assert_close(output.loss, caption_loss(output.masked_logits, targets, drop_worst_ratio=0.5))
