"""Switch Transformers: router losses as separately logged objectives, T5X-layout converter round trip, LoRA preset,
Auto class, converter errors. (No fixture from the original T5X code exists.)"""

import numpy as np
import pytest
import torch
import transformers

import hf_vlp
from hf_vlp.conversion import switch_transformers as switch_conversion
from hf_vlp.conversion.common import ConversionError
from hf_vlp.modeling.switch_transformers import LORA_TARGET_MODULES, SwitchTransformersForConditionalGeneration


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(sparse=1, **kwargs):
    values = dict(
        vocab_size=48,
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        num_experts=4,
        num_sparse_encoder_layers=sparse,
        num_sparse_decoder_layers=sparse,
        expert_capacity=16,
        dropout_rate=0.0,
        router_jitter_noise=0.0,
        decoder_start_token_id=0,
    )
    values.update(kwargs)
    return transformers.SwitchTransformersConfig(**values)


def tiny_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, 48, (4, 6), generator=generator)
    labels = torch.randint(2, 48, (4, 5), generator=generator)
    labels[0, -1] = -100
    return input_ids, labels


def test_router_losses_are_output_fields_and_part_of_the_loss():
    torch.manual_seed(0)
    model = SwitchTransformersForConditionalGeneration(tiny_config()).eval()
    input_ids, labels = tiny_batch()
    output = model(input_ids=input_ids, labels=labels)
    config = model.config
    expected = (
        output.lm_loss
        + config.router_z_loss_coef * output.router_z_loss
        + config.router_aux_loss_coef * output.router_aux_loss
    )
    assert torch.allclose(output.loss, expected)
    assert torch.allclose(output.router_z_loss, output.encoder_z_loss + output.decoder_z_loss)
    assert output.router_aux_loss > 0 and output.router_z_loss > 0
    # same numbers as transformers' class asked for its router logits (sparse step 2: transformers computes them)
    stock = transformers.SwitchTransformersForConditionalGeneration(model.config).eval()
    stock.load_state_dict(model.state_dict())
    reference = stock(input_ids=input_ids, labels=labels, output_router_logits=True)
    assert torch.allclose(output.loss, reference.loss, atol=1e-6)
    assert torch.allclose(output.encoder_aux_loss, reference.encoder_aux_loss, atol=1e-6)


def test_router_losses_when_every_layer_is_sparse():
    """transformers 5.24 returns 0 for both router losses when every layer is sparse; hf_vlp computes them."""
    torch.manual_seed(0)
    model = SwitchTransformersForConditionalGeneration(tiny_config(sparse=2)).eval()
    input_ids, labels = tiny_batch()
    output = model(input_ids=input_ids, labels=labels)
    stock = transformers.SwitchTransformersForConditionalGeneration(model.config).eval()
    stock.load_state_dict(model.state_dict())
    assert stock(input_ids=input_ids, labels=labels, output_router_logits=True).encoder_z_loss == 0
    assert output.encoder_z_loss > 0 and output.decoder_aux_loss > 0


def test_vlp_trainer_logs_router_losses_separately(tmp_path):
    from hf_vlp.trainer import VLPTrainer

    torch.manual_seed(0)
    model = SwitchTransformersForConditionalGeneration(tiny_config())
    input_ids, labels = tiny_batch()
    rows = [{"input_ids": i, "labels": label_ids} for i, label_ids in zip(input_ids, labels)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=3e-3,
        logging_steps=3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = VLPTrainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"router_z_loss", "router_aux_loss", "lm_loss"} <= set(logged[0])
    assert logged[-1]["lm_loss"] < logged[0]["lm_loss"]


def test_generate_without_decoder_start_token_in_config():
    config = tiny_config()
    del config.decoder_start_token_id
    model = SwitchTransformersForConditionalGeneration(config).eval()
    input_ids, _ = tiny_batch()
    assert model.config.decoder_start_token_id == model.config.pad_token_id
    assert model.generate(input_ids=input_ids, max_new_tokens=3).shape == (4, 4)


def test_auto_class_resolves_to_hf_vlp_after_the_opt_in():
    # `import hf_vlp` leaves transformers' own class in place; the documented opt-in switches to hf_vlp's
    assert type(transformers.AutoModelForSeq2SeqLM.from_config(tiny_config())) is (
        transformers.SwitchTransformersForConditionalGeneration
    )
    hf_vlp.use_hf_vlp_classes_for_transformers_models()
    try:
        model = transformers.AutoModelForSeq2SeqLM.from_config(tiny_config())
    finally:
        hf_vlp.use_hf_vlp_classes_for_transformers_models(False)
    assert type(model) is SwitchTransformersForConditionalGeneration


def test_lora_preset_trains_and_reloads(tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = SwitchTransformersForConditionalGeneration(tiny_config())
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    base.activation_checkpointing_enable()
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGET_MODULES))
    names = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert any(".experts.expert_" in n for n in names) and any("EncDecAttention" in n for n in names)
    input_ids, labels = tiny_batch()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=input_ids, labels=labels).logits
    model.save_pretrained(tmp_path)
    fresh = SwitchTransformersForConditionalGeneration(tiny_config())
    fresh.load_state_dict(reference)
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=input_ids, labels=labels).logits, expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# converter
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparse,tie,router_bias", [(1, True, False), (2, False, True)])
def test_t5x_round_trip(tmp_path, sparse, tie, router_bias):
    torch.manual_seed(0)
    config = tiny_config(sparse=sparse, tie_word_embeddings=tie, router_bias=router_bias)
    original = transformers.SwitchTransformersForConditionalGeneration(config).eval()
    with torch.no_grad():  # an untied transformers model also unties its input tables; T5X has one
        original.encoder.embed_tokens.weight.copy_(original.shared.weight)
        original.decoder.embed_tokens.weight.copy_(original.shared.weight)
    path = tmp_path / "switch.npz"
    np.savez(path, **{f"target/{k}": v for k, v in switch_conversion.to_t5x(original).items()})
    converted = switch_conversion.convert(path, config={"expert_capacity": 16, "dropout_rate": 0.0})
    assert converted.config.num_experts == 4 and converted.config.num_sparse_encoder_layers == sparse
    assert converted.config.tie_word_embeddings == tie and converted.config.router_bias == router_bias
    input_ids, labels = tiny_batch()
    with torch.no_grad():
        expected = original(input_ids=input_ids, labels=labels).logits
        produced = converted(input_ids=input_ids, labels=labels).logits
    assert (produced - expected).abs().max() <= 1e-6


def test_per_head_attention_kernels_are_flattened():
    torch.manual_seed(0)
    original = transformers.SwitchTransformersForConditionalGeneration(tiny_config()).eval()
    params = switch_conversion.to_t5x(original)
    d_model, heads, d_kv = 16, 4, 4
    for name in list(params):  # flaxformer's DenseGeneral layout
        if name.endswith(("query/kernel", "key/kernel", "value/kernel")):
            params[name] = params[name].reshape(d_model, heads, d_kv)
        elif name.endswith("out/kernel"):
            params[name] = params[name].reshape(heads, d_kv, d_model)
    converted = switch_conversion.convert(params, config={"expert_capacity": 16})
    input_ids, labels = tiny_batch()
    with torch.no_grad():
        assert torch.allclose(
            converted(input_ids=input_ids, labels=labels).logits,
            original(input_ids=input_ids, labels=labels).logits,
            atol=1e-6,
        )


def test_converter_rejects_other_architectures_and_unknown_keys(tmp_path):
    from safetensors.torch import save_file

    blip = tmp_path / "blip.safetensors"  # another architecture's weights
    save_file({"visual_encoder.cls_token": torch.zeros(1, 1, 8)}, blip)
    with pytest.raises(ConversionError, match="not a T5X Switch Transformers parameter dict"):
        switch_conversion.convert(blip)
    torch.save({"model": {}}, tmp_path / "blip.pth")
    with pytest.raises(ConversionError, match=r"\.npz or \.safetensors"):
        switch_conversion.convert(tmp_path / "blip.pth")
    params = switch_conversion.to_t5x(transformers.SwitchTransformersForConditionalGeneration(tiny_config()))
    dense = {k: v for k, v in params.items() if "/expert/" not in k and "/router/" not in k}
    with pytest.raises(ConversionError, match="dense T5 checkpoint"):
        switch_conversion.convert(dense)
    with pytest.raises(ConversionError, match="neither mapped"):
        switch_conversion.convert({**params, "encoder/layers_0/mlp/adapter/kernel": np.zeros((2, 2), np.float32)})
    with pytest.raises(ConversionError, match="directory"):
        switch_conversion.convert(tmp_path)
