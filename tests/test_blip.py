"""BLIP: parity with the original code (shared/fixtures/blip), the pretraining / retrieval / VQA / captioning
objectives, retrieval re-ranking, Auto classes, processor, LoRA preset and converter errors."""

import copy

import pytest
import torch
import transformers
from conftest import bert_vocab_dir, fixture_dir

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.conversion import blip as blip_conversion
from hf_vlp.conversion.common import ConversionError, compare_outputs
from hf_vlp.modeling.blip import (
    LORA_TARGET_MODULES,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForPreTraining,
    BlipForQuestionAnswering,
    blip_config,
    build_blip_processor,
)

VOCAB, BOS, ENC, PAD, SEP = 64, 60, 61, 0, 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not oversubscribe a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(image_size=32, vision_width=32, **extra):
    return blip_config(
        image_size=image_size,
        embed_dim=16,
        vision=dict(hidden_size=vision_width, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64),
        text=dict(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=32,
            bos_token_id=BOS,
            sep_token_id=SEP,
            eos_token_id=SEP,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        enc_token_id=ENC,
        **extra,
    )


def tiny_batch(batch=4, length=7, image_size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 3, image_size, image_size, generator=generator)
    input_ids = torch.randint(3, 50, (batch, length), generator=generator)
    input_ids[:, 0] = 1  # [CLS]-like first token: the heads swap it by role
    lengths = torch.arange(batch) % 3 + length - 2
    attention_mask = (torch.arange(length)[None] < lengths[:, None]).long()
    input_ids[torch.arange(batch), lengths - 1] = SEP
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD)
    return pixel_values, input_ids, attention_mask


def train_steps(model, step, steps=8, lr=3e-3):
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        torch.manual_seed(0)  # same hard negatives every step: a clean signal on a tiny batch
        loss = step(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ----------------------------------------------------------------------------------------------------------------
# parity with the original code
# ----------------------------------------------------------------------------------------------------------------


def _verify(checkpoint, med_config):
    directory = fixture_dir("blip")
    model = blip_conversion.convert(directory / checkpoint, directory / med_config)
    from safetensors.torch import load_file

    reference = load_file(directory / "outputs.safetensors")
    with torch.no_grad():
        ours = blip_conversion.fixture_outputs(model, directory)
    lines = []
    assert compare_outputs(ours, reference, atol=1e-4, print_fn=lines.append), "\n".join(lines)
    return model, ours, lines


def test_pretraining_checkpoint_matches_original_outputs():
    model, ours, lines = _verify("blip_tiny_pretrain.pth", "bert_config.json")
    assert isinstance(model, BlipForPreTraining)
    computed = [line for line in lines if "max_abs_diff" in line]
    # every output of the pretraining file (pretrain.*, itm_model.*, caption.*) is produced, only vqa.* skipped
    assert all(line.startswith("vqa.") for line in lines if "skipped" in line)
    assert any(line.startswith("pretrain.forward.loss_ita") for line in computed)


def test_vqa_checkpoint_matches_original_outputs():
    model, ours, lines = _verify("blip_tiny_vqa.pth", "med_config.json")
    assert isinstance(model, BlipForQuestionAnswering)
    assert all(not line.startswith("vqa.") for line in lines if "skipped" in line)


def test_transformers_vqa_class_ignores_question_padding():
    """The deviation hf_vlp fixes: transformers' answer decoder attends to padded question tokens."""
    directory = fixture_dir("blip")
    from safetensors.torch import load_file

    inputs = load_file(directory / "inputs.safetensors")
    if bool(inputs["vqa.question_mask"].all()):
        pytest.skip("the fixture's questions are not padded")
    ours = blip_conversion.convert(directory / "blip_tiny_vqa.pth", directory / "med_config.json")
    stock = transformers.BlipForQuestionAnswering(ours.config).eval()
    stock.load_state_dict(ours.state_dict())
    index = inputs["vqa.answer_question_index"]
    with torch.no_grad():
        args = dict(pixel_values=inputs["vqa.pixel_values"], attention_mask=inputs["vqa.question_mask"])
        question = stock.text_encoder(
            input_ids=inputs["vqa.question_ids"],
            attention_mask=args["attention_mask"],
            encoder_hidden_states=stock.vision_model(args["pixel_values"]).last_hidden_state,
        ).last_hidden_state
        stock_logits = stock.text_decoder(
            input_ids=inputs["vqa.answer_ids"],
            attention_mask=inputs["vqa.answer_mask"],
            encoder_hidden_states=question[index],
            encoder_attention_mask=args["attention_mask"][index],
        ).logits
        fixed = ours(
            input_ids=inputs["vqa.question_ids"],
            labels=inputs["vqa.answer_labels"],
            answer_question_index=index,
            **args,
        )
    reference = load_file(directory / "outputs.safetensors")["vqa.answer_logits"]
    assert (fixed.logits - reference).abs().max() <= 1e-4
    assert (stock_logits - reference).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------------------------
# objectives
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [True, False])
def test_pretraining_losses_fall(momentum):
    torch.manual_seed(0)
    model = BlipForPreTraining(tiny_config(queue_size=8, use_momentum_distillation=momentum))
    pixel_values, input_ids, attention_mask = tiny_batch()
    output = model.eval()(pixel_values, input_ids, attention_mask)
    assert output.itm_logits.shape == (12, 2) and output.lm_logits.shape == (4, 7, VOCAB)
    assert torch.allclose(output.loss, output.itc_loss + output.itm_loss + output.lm_loss)
    losses = train_steps(model, lambda m: m(pixel_values, input_ids, attention_mask).loss)
    assert losses[-1] < losses[0] * 0.9, losses
    if momentum:
        assert int(model.queue_ptr) == (8 * 4) % 8  # eight batches of four went through a queue of eight


def test_pretraining_momentum_update_and_queue():
    torch.manual_seed(0)
    model = BlipForPreTraining(tiny_config(queue_size=6))
    with torch.no_grad():
        model.vision_proj.weight.add_(1.0)
    before = model.vision_proj_m.weight.clone()
    pixel_values, input_ids, attention_mask = tiny_batch()
    model.eval()
    model(pixel_values, input_ids, attention_mask)  # eval: neither EMA nor enqueue
    assert torch.equal(model.vision_proj_m.weight, before) and int(model.queue_ptr) == 0
    model(pixel_values, input_ids, attention_mask, update_momentum=True)
    expected = 0.995 * before + 0.005 * model.vision_proj.weight
    assert torch.allclose(model.vision_proj_m.weight, expected, atol=1e-7)
    assert int(model.queue_ptr) == 4
    model(pixel_values, input_ids, attention_mask, update_momentum=True)  # wraps around the queue of six
    assert int(model.queue_ptr) == 2
    assert not any(p.requires_grad for p in model.vision_model_m.parameters())


def test_pretraining_decoder_shares_all_but_self_attention():
    model = BlipForPreTraining(tiny_config(queue_size=4))
    encoder, decoder = model.text_encoder, model.text_decoder.bert
    assert decoder.embeddings.word_embeddings.weight is encoder.embeddings.word_embeddings.weight
    assert model.text_decoder.cls.predictions.decoder.weight is encoder.embeddings.word_embeddings.weight
    for enc_layer, dec_layer in zip(encoder.encoder.layer, decoder.encoder.layer):
        assert dec_layer.crossattention.self.key.weight is enc_layer.crossattention.self.key.weight
        assert dec_layer.output.dense.weight is enc_layer.output.dense.weight
        assert dec_layer.attention.self.query.weight is not enc_layer.attention.self.query.weight


def test_pretraining_save_and_reload(tmp_path):
    torch.manual_seed(0)
    model = BlipForPreTraining(tiny_config(queue_size=4)).eval()
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert type(reloaded) is BlipForPreTraining
    pixel_values, input_ids, attention_mask = tiny_batch()
    torch.manual_seed(1)
    a = model(pixel_values, input_ids, attention_mask)
    torch.manual_seed(1)
    b = reloaded(pixel_values, input_ids, attention_mask)
    assert torch.allclose(a.loss, b.loss, atol=1e-6)
    assert torch.equal(model.image_queue, reloaded.image_queue)


def test_pretraining_from_a_retrieval_checkpoint_starts_momentum_from_online_weights(tmp_path):
    torch.manual_seed(0)
    BlipForImageTextRetrieval(tiny_config(use_momentum_distillation=False)).save_pretrained(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    config.use_momentum_distillation, config.queue_size = True, 4
    model, info = BlipForPreTraining.from_pretrained(tmp_path, config=config, output_loading_info=True)
    assert any(key.startswith("text_encoder_m.") for key in info["missing_keys"])
    assert torch.equal(
        model.text_encoder_m.embeddings.word_embeddings.weight, model.text_encoder.embeddings.word_embeddings.weight
    )
    assert torch.equal(model.vision_model_m.embeddings.class_embedding, model.vision_model.embeddings.class_embedding)
    assert not any(p.requires_grad for p in model.vision_model_m.parameters())


def test_retrieval_training_and_rerank():
    torch.manual_seed(0)
    model = BlipForImageTextRetrieval(tiny_config(use_momentum_distillation=False))
    pixel_values, input_ids, attention_mask = tiny_batch(batch=4)
    image_ids = torch.tensor([0, 0, 1, 2])  # two captions of image 0
    step = lambda m: (
        m(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,  # noqa: E731
            return_loss=True,
            image_ids=image_ids,
        ).loss
    )
    losses = train_steps(model, step, steps=20)  # ITC needs a few steps to break the symmetry of a fresh model
    assert losses[-1] < losses[0] * 0.8, losses

    model.eval()
    scores = model.retrieve(pixel_values, input_ids, attention_mask, k=2, batch_size=3)
    assert scores.itc_similarity.shape == (4, 4) and scores.scores_t2i.shape == (4, 4)
    assert ((scores.scores_i2t > -100).sum(1) == 2).all() and ((scores.scores_t2i > -100).sum(1) == 2).all()
    # a kept candidate scores ITM("match") + cosine similarity, with [ENC] first
    image, text = 0, int(scores.scores_i2t[0].argmax())
    enc_ids = input_ids.clone()
    enc_ids[:, 0] = ENC
    with torch.no_grad():
        itm = model(
            input_ids=enc_ids[text : text + 1],
            pixel_values=pixel_values[image : image + 1],
            attention_mask=attention_mask[text : text + 1],
        ).itm_score[0, 1]
    expected = itm + scores.itc_similarity[image, text]
    assert torch.allclose(scores.scores_i2t[image, text], expected, atol=1e-5)


def test_retrieval_momentum_queue_holds_image_ids():
    assert not hasattr(BlipForImageTextRetrieval(tiny_config(use_momentum_distillation=False)), "vision_model_m")
    model = BlipForImageTextRetrieval(tiny_config(queue_size=8, use_momentum_distillation=True)).train()
    assert not any(p.requires_grad for p in model.text_encoder_m.parameters())
    pixel_values, input_ids, attention_mask = tiny_batch()
    output = model(
        input_ids=input_ids,
        pixel_values=pixel_values,
        attention_mask=attention_mask,
        return_loss=True,
        image_ids=torch.tensor([5, 5, 6, 7]),
    )
    assert output.loss.ndim == 0 and output.itm_logits.shape == (12, 2) and output.sim_i2t.shape == (4, 4 + 8)
    assert model.idx_queue[0, :4].tolist() == [5, 5, 6, 7] and int(model.queue_ptr) == 4


def test_vqa_weighted_answers_loss_falls_and_ranking():
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(tiny_config())
    pixel_values, questions, question_mask = tiny_batch(batch=2)
    answers = torch.tensor([[BOS, 10, SEP, PAD], [BOS, 11, 12, SEP], [BOS, 13, SEP, PAD]])
    labels = answers.masked_fill(answers == PAD, -100)
    batch = dict(
        input_ids=questions,
        pixel_values=pixel_values,
        attention_mask=question_mask,
        labels=labels,
        answer_question_index=torch.tensor([0, 0, 1]),
        answer_weights=torch.tensor([0.7, 0.3, 1.0]),
    )
    output = model(**batch)
    assert output.logits.shape == (3, 4, VOCAB) and output.answer_losses.shape == (3,)
    assert torch.allclose(output.loss, (batch["answer_weights"] * output.answer_losses).sum() / 2)
    losses = train_steps(model, lambda m: m(**batch).loss)
    assert losses[-1] < losses[0] * 0.8, losses
    model.eval()
    ranking = model.rank_answers(questions, pixel_values, answers, attention_mask=question_mask, k=2)
    assert ranking.topk_ids.shape == (2, 2) and ranking.first_token_logits.shape == (2, VOCAB)
    best = ranking.scores.argmax(1)
    assert torch.equal(ranking.answer_index, ranking.topk_ids[torch.arange(2), best])
    # each kept candidate is scored by its decoder log-likelihood given its own (padded) question
    candidate = ranking.topk_ids[1, 0]
    with torch.no_grad():
        direct = model(
            input_ids=questions[1:],
            pixel_values=pixel_values[1:],
            attention_mask=question_mask[1:],
            labels=labels[candidate : candidate + 1],
        ).answer_losses
    assert torch.allclose(ranking.scores[1, 0], -direct[0], atol=1e-5)
    generated = model.generate(
        input_ids=questions, pixel_values=pixel_values, attention_mask=question_mask, max_new_tokens=3
    )
    assert generated.shape[0] == 2


def test_vqa_answer_decoder_reads_text_width_states():
    """ViT-L BLIP (vision 1024, text 768): the answer decoder cross-attends to 768-wide question states."""
    model = BlipForQuestionAnswering(tiny_config(vision_width=48))
    assert model.text_decoder.bert.encoder.layer[0].crossattention.self.key.in_features == 32
    assert model.text_encoder.encoder.layer[0].crossattention.self.key.in_features == 48
    pixel_values, questions, question_mask = tiny_batch(batch=2)
    output = model(input_ids=questions, pixel_values=pixel_values, attention_mask=question_mask, labels=questions)
    assert output.loss.isfinite()


def test_captioning_loss_falls_and_generates():
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(tiny_config())
    pixel_values, input_ids, attention_mask = tiny_batch(batch=2)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    losses = train_steps(
        model,
        lambda m: m(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss,
    )
    assert losses[-1] < losses[0] * 0.8, losses
    model.eval()
    assert model.generate(pixel_values=pixel_values, max_new_tokens=4).shape[0] == 2


# ----------------------------------------------------------------------------------------------------------------
# integration: Auto classes, processor, LoRA
# ----------------------------------------------------------------------------------------------------------------


def test_auto_classes_resolve_to_hf_vlp_heads():
    config = tiny_config()
    # transformers has no BLIP pretraining class: `import hf_vlp` fills that Auto class
    assert type(transformers.AutoModelForPreTraining.from_config(config)) is BlipForPreTraining
    # where transformers has its own class, it stays transformers' until the documented opt-in
    assert (
        type(transformers.AutoModelForVisualQuestionAnswering.from_config(config))
        is transformers.BlipForQuestionAnswering
    )
    hf_vlp.use_hf_vlp_classes_for_transformers_models()
    try:
        assert type(transformers.AutoModelForVisualQuestionAnswering.from_config(config)) is BlipForQuestionAnswering
        assert type(transformers.AutoModelForImageTextToText.from_config(config)) is BlipForConditionalGeneration
    finally:
        hf_vlp.use_hf_vlp_classes_for_transformers_models(False)
    assert (
        type(transformers.AutoModelForImageTextToText.from_config(config)) is transformers.BlipForConditionalGeneration
    )
    assert hf_vlp.get_spec("blip").model_class("retrieval") is BlipForImageTextRetrieval


def test_processor_save_and_load(tmp_path):
    processor = build_blip_processor(bert_vocab_dir(), image_size=32)
    tokenizer = processor.tokenizer
    assert tokenizer.bos_token_id == 30522 and tokenizer.convert_tokens_to_ids("[ENC]") == 30523
    processor.save_pretrained(tmp_path)
    reloaded = transformers.AutoProcessor.from_pretrained(tmp_path)
    from PIL import Image

    image = Image.new("RGB", (50, 40), (200, 30, 30))
    a = processor(images=image, text="a red square", return_tensors="pt")
    b = reloaded(images=image, text="a red square", return_tensors="pt")
    assert a["pixel_values"].shape == (1, 3, 32, 32)
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["input_ids"], b["input_ids"])
    assert len(reloaded.tokenizer) == 30524


def test_lora_preset_trains_with_gradient_checkpointing_and_reloads(tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = BlipForQuestionAnswering(tiny_config())
    reference = copy.deepcopy(base.state_dict())
    base.activation_checkpointing_enable()
    base.enable_input_require_grads()
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGET_MODULES))
    names = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert any(".vision_model." in n for n in names) and any(".text_decoder." in n for n in names)
    pixel_values, questions, question_mask = tiny_batch(batch=2)
    batch = dict(input_ids=questions, pixel_values=pixel_values, attention_mask=question_mask, labels=questions)
    model.train()
    loss = model(**batch).loss
    loss.backward()
    vision_lora = [p for n, p in model.named_parameters() if "vision_model" in n and "lora_B" in n]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vision_lora)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    fresh = BlipForQuestionAnswering(tiny_config())
    fresh.load_state_dict(reference)
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# converter errors
# ----------------------------------------------------------------------------------------------------------------


def test_converter_rejects_other_architectures(tmp_path):
    path = tmp_path / "uniter.pt"
    torch.save({"model": {"uniter.embeddings.word_embeddings.weight": torch.zeros(4, 2)}}, path)
    with pytest.raises(ConversionError, match="not an original BLIP checkpoint"):
        blip_conversion.convert(path)
    nlvr = {
        "visual_encoder.cls_token": torch.zeros(1, 1, 8),
        "visual_encoder.pos_embed": torch.zeros(1, 5, 8),
        "cls_head.0.weight": torch.zeros(8, 8),
    }
    torch.save({"model": nlvr}, path)
    with pytest.raises(ConversionError, match="a nlvr2 checkpoint cannot become a nlvr2 model: it has no"):
        blip_conversion.convert(path)


def test_converter_errors_on_unknown_keys_and_impossible_tasks(tmp_path):
    directory = fixture_dir("blip")
    checkpoint = torch.load(directory / "blip_tiny_vqa.pth", map_location="cpu", weights_only=True)
    with pytest.raises(ConversionError, match="cannot become a retrieval model"):
        blip_conversion.convert(directory / "blip_tiny_vqa.pth", directory / "med_config.json", task="retrieval")
    checkpoint["model"]["text_encoder.some_new_head.weight"] = torch.zeros(2)
    path = tmp_path / "vqa_extra.pth"
    torch.save(checkpoint, path)
    with pytest.raises(ConversionError, match="neither mapped nor deliberately dropped"):
        blip_conversion.convert(path, directory / "med_config.json")
    with pytest.raises(ValueError, match="task"):
        blip_conversion.convert(directory / "blip_tiny_vqa.pth", task="classification")
    with pytest.raises(ConversionError, match="cannot become a nlvr2 model"):
        blip_conversion.convert(directory / "blip_tiny_vqa.pth", directory / "med_config.json", task="nlvr2")


def test_nlvr2_twin_cross_attention_from_pretraining_and_nlvr2_files(tmp_path):
    import torch.nn.functional as F

    directory = fixture_dir("blip")
    pretraining = directory / "blip_tiny_pretrain.pth"
    med = directory / "med_config.json"
    # blip_nlvr(pretrained=...): both twins start as the pretrained cross-attention
    nlvr = blip_conversion.convert(pretraining, med, task="nlvr2")
    retrieval = blip_conversion.convert(pretraining, med, task="retrieval")  # verified against the fixture
    layer = nlvr.text_encoder.encoder.layer[0].crossattention
    single = retrieval.text_encoder.encoder.layer[0].crossattention
    assert torch.equal(layer.self0.query.weight, single.self.query.weight)
    assert torch.equal(layer.self1.value.weight, single.self.value.weight)
    assert torch.equal(layer.output.dense1.weight, single.output.dense.weight)

    config = nlvr.config.vision_config
    generator = torch.Generator().manual_seed(0)
    left, right = (torch.randn(2, 3, config.image_size, config.image_size, generator=generator) for _ in range(2))
    input_ids = torch.randint(3, 50, (2, 6), generator=generator)
    with torch.no_grad():
        # the same image twice: averaging two equal twins is the single cross-attention of the verified encoder
        same = nlvr(pixel_values=torch.stack([left, left], 1), input_ids=input_ids, output_hidden_states=True)
        enc_ids = input_ids.clone()
        enc_ids[:, 0] = nlvr.config.enc_token_id
        images = retrieval.vision_model(left).last_hidden_state
        fused = retrieval.text_encoder(input_ids=enc_ids, encoder_hidden_states=images).last_hidden_state
    torch.testing.assert_close(same.hidden_states[-1], fused, atol=1e-5, rtol=1e-5)

    # an NLVR2 file (BLIP_NLVR layout) whose layer 1 merges: merge_layer = [I/2, I/2] is the average again,
    # and self0/dense0 read the left image: swapping the twins and the images gives the same logits
    state, run_config = blip_conversion.load_original(pretraining)
    state = blip_conversion.twin_cross_attention(state)
    hidden = state["text_encoder.embeddings.word_embeddings.weight"].shape[1]
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("text_encoder.encoder.layer."))
    eye = torch.eye(hidden)
    for index in range(layers):
        if index >= 1:
            state[f"text_encoder.encoder.layer.{index}.crossattention.output.merge_layer.weight"] = (
                torch.cat([eye, eye], 1) / 2
            )
            state[f"text_encoder.encoder.layer.{index}.crossattention.output.merge_layer.bias"] = torch.zeros(hidden)
    head = {
        "cls_head.0.weight": torch.randn(hidden, hidden, generator=generator) * 0.1,
        "cls_head.0.bias": torch.randn(hidden, generator=generator) * 0.1,
        "cls_head.2.weight": torch.randn(2, hidden, generator=generator) * 0.1,
        "cls_head.2.bias": torch.randn(2, generator=generator) * 0.1,
    }
    state = {k: v for k, v in state.items() if k.startswith(("visual_encoder.", "text_encoder."))} | head
    torch.save({"model": state, "config": run_config}, tmp_path / "model_base_nlvr.pth")
    model = blip_conversion.convert(tmp_path / "model_base_nlvr.pth", med)
    assert type(model).__name__ == "BlipForVisualReasoning"
    assert model.config.nlvr2_merge_from_layer == (1 if layers > 1 else 6)
    with torch.no_grad():
        output = model(pixel_values=torch.stack([left, left], 1), input_ids=input_ids, labels=torch.tensor([1, 0]))
        state_0 = same.hidden_states[-1][:, 0]
        expected = F.linear(
            F.relu(F.linear(state_0, head["cls_head.0.weight"], head["cls_head.0.bias"])),
            head["cls_head.2.weight"],
            head["cls_head.2.bias"],
        )
        torch.testing.assert_close(output.logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(output.loss, F.cross_entropy(expected, torch.tensor([1, 0])), atol=1e-5, rtol=1e-5)
        for twin in model.text_encoder.encoder.layer:
            twin.crossattention.self0.query.weight.add_(torch.randn_like(twin.crossattention.self0.query.weight))
        pair = model(pixel_values=torch.stack([left, right], 1), input_ids=input_ids).logits
        for twin in model.text_encoder.encoder.layer:
            attention = twin.crossattention
            attention.self0, attention.self1 = attention.self1, attention.self0
            attention.output.dense0, attention.output.dense1 = attention.output.dense1, attention.output.dense0
        swapped = model(pixel_values=torch.stack([right, left], 1), input_ids=input_ids).logits
    torch.testing.assert_close(pair, swapped, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"`pixel_values` must be \(batch, 2, 3, height, width\)"):
        model(pixel_values=left, input_ids=input_ids)


# ----------------------------------------------------------------------------------------------------------------
# data parallelism (2 processes, gloo)
# ----------------------------------------------------------------------------------------------------------------


def _ddp_worker(rank, world_size, port, results):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        pixel_values, input_ids, attention_mask = tiny_batch(batch=4)
        local = slice(2 * rank, 2 * rank + 2)
        for momentum in (False, True):
            torch.manual_seed(0)
            model = BlipForPreTraining(tiny_config(queue_size=8, use_momentum_distillation=momentum)).eval()
            output = model(pixel_values[local], input_ids[local], attention_mask[local], update_momentum=True)
            queue = (model.image_queue.clone(), int(model.queue_ptr)) if momentum else None
            results[(rank, momentum)] = (output.itc_loss, queue)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters: ~30 s of CPU
def test_two_processes_give_the_global_batch_itc_and_share_the_queue():
    """In-batch ITC gathered over ranks (mean of rank losses = 1-process loss on the global batch); with momentum
    distillation every rank enqueues the momentum features of all ranks (`concat_all_gather`)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_ddp_worker, args=(2, port, results), nprocs=2, join=True)
    pixel_values, input_ids, attention_mask = tiny_batch(batch=4)
    torch.manual_seed(0)
    single = BlipForPreTraining(tiny_config(queue_size=8, use_momentum_distillation=False)).eval()
    expected = single(pixel_values, input_ids, attention_mask).itc_loss
    mean = (results[(0, False)][0] + results[(1, False)][0]) / 2
    torch.testing.assert_close(mean, expected, rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    single = BlipForPreTraining(tiny_config(queue_size=8, use_momentum_distillation=True)).eval()
    single(pixel_values, input_ids, attention_mask, update_momentum=True)
    for rank in range(2):
        queue, pointer = results[(rank, True)][1]
        assert pointer == 4
        torch.testing.assert_close(queue, single.image_queue, rtol=1e-5, atol=1e-6)
