"""ViLBERT: fixture parity of the converter, objectives, heads, Auto classes, LoRA, bad inputs, processor."""

import numpy as np
import pytest
import torch
import transformers
from conftest import fixture_dir
from safetensors.torch import load_file

from hf_vlp.conversion import vilbert as conversion
from hf_vlp.conversion.common import ConversionError, compare_outputs
from hf_vlp.layers.coattention import CoAttentionLayer, StreamSpec
from hf_vlp.modeling.vilbert import (
    LORA_TARGET_MODULES,
    VilbertConfig,
    VilbertForGQA,
    VilbertForImageTextRetrieval,
    VilbertForMultipleChoice,
    VilbertForMultiTask,
    VilbertForPreTraining,
    VilbertForReferringExpression,
    VilbertForVisualEntailment,
    VilbertForVisualQuestionAnswering,
    VilbertForVisualReasoning,
    VilbertModel,
    VilbertProcessor,
)
from hf_vlp.modeling.vilbert.modeling_vilbert import coattention_schedule
from hf_vlp.processing.region import RegionFeatureProcessor

FEATURES = 12


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run fastest on one thread; on a shared, loaded CPU two OpenMP threads spin-wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides):
    sizes = dict(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        v_feature_size=FEATURES,
        v_target_size=7,
        v_hidden_size=24,
        v_num_hidden_layers=2,
        v_num_attention_heads=2,
        v_intermediate_size=40,
        bi_hidden_size=16,
        bi_num_attention_heads=2,
        # uneven gaps: co0 sees the raw image embeddings, two visual layers before co1, no trailing text layer
        v_biattention_id=[0, 2],
        t_biattention_id=[1, 3],
        num_labels=5,
        gqa_num_labels=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        v_hidden_dropout_prob=0.0,
        v_attention_probs_dropout_prob=0.0,
    )
    return VilbertConfig(**{**sizes, **overrides})


def tiny_batch(batch=4, length=7, regions=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 60, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, -2:] = 0
    corner = torch.rand(batch, regions, 2, generator=generator) * 0.5
    size = torch.rand(batch, regions, 2, generator=generator) * 0.5
    visual_pos = torch.cat([corner, corner + size], dim=-1)
    visual_pos[:, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # whole-image region
    visual_attention_mask = torch.ones(batch, regions, dtype=torch.long)
    visual_attention_mask[2, -2:] = 0
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=torch.zeros_like(input_ids),
        visual_feats=torch.rand(batch, regions, FEATURES, generator=generator),
        visual_pos=visual_pos,
        visual_attention_mask=visual_attention_mask,
    )


# ------------------------------------------------------------------------------------------------------------------
# parity with the original implementation (shared/fixtures/vilbert)
# ------------------------------------------------------------------------------------------------------------------


def test_every_fixture_output_matches_the_original():
    directory = fixture_dir("vilbert")
    reference = load_file(directory / "outputs.safetensors")
    produced = set()
    for checkpoint, config in conversion.fixture_checkpoints(directory):
        model = conversion.convert(checkpoint, config)
        with torch.no_grad():
            ours = conversion.fixture_outputs(model, directory)
        lines = []
        assert compare_outputs(ours, reference, atol=conversion.VERIFY_ATOL, print_fn=lines.append), "\n".join(lines)
        produced |= {name for name, value in ours.items() if torch.is_tensor(value)}
    assert produced == set(reference), f"never produced: {sorted(set(reference) - produced)}"


def test_parity_holds_under_eager_attention():
    directory = fixture_dir("vilbert")
    reference = load_file(directory / "outputs.safetensors")
    checkpoint, config = next((c, j) for c, j in conversion.fixture_checkpoints(directory) if "multi_task" in c.name)
    model = conversion.convert(checkpoint, config)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        ours = conversion.fixture_outputs(model, directory)
    assert compare_outputs(ours, reference, atol=conversion.VERIFY_ATOL, print_fn=lambda _: None)


def test_converter_unwraps_fp16_module_prefixed_legacy_checkpoint(tmp_path):
    directory = fixture_dir("vilbert")
    checkpoint, config = next((c, j) for c, j in conversion.fixture_checkpoints(directory) if "pretrained" in c.name)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    wrapped = {"model_state_dict": {"module." + k: v.half() for k, v in state.items()}, "epoch_id": 3}
    path = tmp_path / "pytorch_ckpt_latest.tar"
    torch.save(wrapped, path, _use_new_zipfile_serialization=False)
    from_wrapped = conversion.convert(path, config).state_dict()
    plain = conversion.convert(checkpoint, config).state_dict()
    for name, value in plain.items():
        assert from_wrapped[name].dtype == torch.float32
        torch.testing.assert_close(from_wrapped[name], value.half().float(), rtol=0, atol=0, msg=name)


def test_single_task_head_from_the_multi_task_file_matches_the_full_model():
    directory = fixture_dir("vilbert")
    checkpoint, config = next((c, j) for c, j in conversion.fixture_checkpoints(directory) if "multi_task" in c.name)
    full = conversion.convert(checkpoint, config)
    vqa = conversion.convert(checkpoint, config, head="vqa")
    assert isinstance(vqa, VilbertForVisualQuestionAnswering)
    batch = conversion.fixture_batch(load_file(directory / "inputs.safetensors"), task_tokens=True)
    with torch.no_grad():
        torch.testing.assert_close(vqa(**batch).logits, full(**batch).vqa_logits)


def test_multi_task_file_for_a_model_without_task_tokens_is_refused():
    directory = fixture_dir("vilbert")
    checkpoint, config = next((c, j) for c, j in conversion.fixture_checkpoints(directory) if "multi_task" in c.name)
    with pytest.raises(ConversionError, match="task tokens"):
        conversion.convert(checkpoint, config, task_specific_tokens=False)


def test_unknown_checkpoint_key_is_an_error(tmp_path):
    directory = fixture_dir("vilbert")
    checkpoint, config = next((c, j) for c, j in conversion.fixture_checkpoints(directory) if "pretrained" in c.name)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["bert.encoder.c_layer.0.biattention.logit1.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "odd.bin")
    with pytest.raises(ConversionError, match="logit1"):
        conversion.convert(tmp_path / "odd.bin", config)


# ------------------------------------------------------------------------------------------------------------------
# encoder: schedule, attention backends, gradient checkpointing
# ------------------------------------------------------------------------------------------------------------------


def test_schedule_follows_the_connection_ids():
    # text L0, L1 -> co0 -> L2 + V0 -> co1 -> V1 + L3 (fixture README)
    assert coattention_schedule([0, 1], [2, 3], 2, 4) == [
        ("text", 0),
        ("text", 1),
        ("co", 0),
        ("text", 2),
        ("visual", 0),
        ("co", 1),
        ("visual", 1),
        ("text", 3),
    ]
    # uneven and zero gaps, connections not at the end
    assert coattention_schedule([1, 1, 3], [0, 2, 2], 4, 3) == [
        ("visual", 0),
        ("co", 0),
        ("text", 0),
        ("text", 1),
        ("co", 1),
        ("visual", 1),
        ("visual", 2),
        ("co", 2),
        ("visual", 3),
        ("text", 2),
    ]
    assert VilbertConfig().v_biattention_id == [0, 1, 2, 3, 4, 5]
    assert VilbertConfig().t_biattention_id == [6, 7, 8, 9, 10, 11]


def test_sdpa_equals_eager():
    config = tiny_config(task_specific_tokens=True)
    torch.manual_seed(0)
    model = VilbertForMultiTask(config).eval()
    batch = tiny_batch()
    batch["task_ids"] = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        sdpa = model(**batch)
        model.set_attn_implementation("eager")
        eager = model(**batch, output_attentions=True)
    for name in ("vqa_logits", "pair_scores", "region_logits", "mlm_logits", "text_hidden_state"):
        torch.testing.assert_close(sdpa[name], eager[name], atol=1e-5, rtol=1e-5)


def test_coattention_layer_sdpa_equals_eager_with_self_attention():
    text, visual = StreamSpec(16, 2, 24), StreamSpec(12, 3, 20)
    config = tiny_config()
    layer = CoAttentionLayer(config, text, visual, co_attention_size=8, co_num_heads=2, self_attention=True).eval()
    t, v = torch.randn(2, 5, 16), torch.randn(2, 4, 12)
    t_mask = torch.zeros(2, 1, 1, 5)
    t_mask[1, ..., -1] = torch.finfo(torch.float32).min
    with torch.no_grad():
        config._attn_implementation = "sdpa"
        sdpa = layer(t, v, t_mask, None)
        config._attn_implementation = "eager"
        eager = layer(t, v, t_mask, None)
    torch.testing.assert_close(sdpa[0], eager[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa[1], eager[1], atol=1e-5, rtol=1e-5)
    assert eager[2][0].shape == (2, 2, 5, 4) and eager[2][1].shape == (2, 2, 4, 5)


def test_gradient_checkpointing_equals_no_checkpointing():
    torch.manual_seed(0)
    model = VilbertForPreTraining(tiny_config()).train()
    batch = tiny_batch()
    labels = batch["input_ids"].masked_fill(torch.rand(batch["input_ids"].shape) > 0.3, -100)
    region_mask = torch.zeros(4, 5, dtype=torch.bool)
    region_mask[:, 2] = True
    soft = torch.softmax(torch.randn(4, 5, 7), -1)

    def loss_and_grads():
        model.zero_grad()
        out = model(
            **batch,
            labels=labels,
            region_mask=region_mask,
            region_soft_labels=soft,
            itm_labels=torch.tensor([1, 0, 1, 1]),
        )
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads()
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.vilbert.encoder.c_layer)
    loss_ckpt, grads_ckpt = loss_and_grads()
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-6, rtol=1e-5, msg=name)


# ------------------------------------------------------------------------------------------------------------------
# pretraining objectives
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("visual_target", ["kl", "classification", "regression", "nce"])
def test_each_pretraining_loss_falls(visual_target):
    torch.manual_seed(0)
    config = tiny_config(visual_target=visual_target)
    model = VilbertForPreTraining(config).train()
    batch = tiny_batch(seed=1)
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 2] = batch["input_ids"][:, 2]
    batch["input_ids"] = batch["input_ids"].clone()
    batch["input_ids"][:, 2] = 4  # [MASK]-like id
    region_mask = torch.zeros(4, 5, dtype=torch.bool)
    region_mask[:, 1] = True
    region_mask[0, 3] = True
    targets = {
        "kl": {"region_soft_labels": torch.softmax(3 * torch.randn(4, 5, 7), -1)},
        "classification": {"region_class_labels": torch.randint(0, 7, (4, 5))},
        "regression": {"region_feature_labels": batch["visual_feats"].clone()},
        "nce": {"region_feature_labels": batch["visual_feats"].clone()},
    }[visual_target]
    labels_all = dict(labels=labels, region_mask=region_mask, itm_labels=torch.tensor([1, 0, 1, 0]), **targets)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        out = model(**batch, **labels_all)
        losses = {k: out[k].item() for k in ("mlm_loss", "mrm_loss", "itm_loss")}
        first = first or losses
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    for name, start in first.items():
        assert losses[name] < 0.7 * start, (name, start, losses[name])
    assert out.mlm_logits.shape == (4, config.vocab_size)  # masked positions only
    assert out.region_logits.shape == (5, config.region_target_size)


def test_region_labels_must_fit_the_visual_target():
    model = VilbertForPreTraining(tiny_config(visual_target="kl"))
    batch = tiny_batch()
    with pytest.raises(ValueError, match="visual_target"):
        model(**batch, region_mask=torch.ones(4, 5, dtype=torch.bool), region_feature_labels=batch["visual_feats"])
    with pytest.raises(ValueError, match="region_mask"):
        model(**batch, region_soft_labels=torch.rand(4, 5, 7))


# ------------------------------------------------------------------------------------------------------------------
# task heads
# ------------------------------------------------------------------------------------------------------------------


def _head_case(head, batch):
    b = batch["input_ids"].shape[0]
    if head is VilbertForVisualQuestionAnswering:
        return batch, {"labels": torch.rand(b, 5)}, (b, 5)
    if head is VilbertForGQA:
        return batch, {"labels": torch.tensor([0, 1, 2, 3])}, (b, 4)
    if head is VilbertForImageTextRetrieval:
        return batch, {"group_size": 2}, (b,)
    if head is VilbertForVisualEntailment:
        return batch, {"labels": torch.tensor([0, 1, 2, 1])}, (b, 3)
    if head is VilbertForReferringExpression:
        return batch, {"labels": torch.tensor([1, 2, 1, 0])}, (b, 5)
    if head is VilbertForVisualReasoning:
        paired = dict(batch)
        for name in ("visual_feats", "visual_pos", "visual_attention_mask"):
            paired[name] = torch.stack([batch[name], batch[name].flip(0)], dim=1)
        return paired, {"labels": torch.tensor([0, 1, 1, 0])}, (b, 2)
    choices = {
        k: v[:2, None].expand(2, 3, *v.shape[1:])
        for k, v in batch.items()
        if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    choices.update({k: v[:2] for k, v in batch.items() if k.startswith("visual_")})
    return choices, {"labels": torch.tensor([2, 0])}, (2, 3)


HEADS = [
    VilbertForVisualQuestionAnswering,
    VilbertForGQA,
    VilbertForImageTextRetrieval,
    VilbertForVisualEntailment,
    VilbertForReferringExpression,
    VilbertForVisualReasoning,
    VilbertForMultipleChoice,
]


@pytest.mark.parametrize("head", HEADS, ids=lambda h: h.__name__)
def test_task_head_returns_loss_and_logits_and_trains(head):
    torch.manual_seed(0)
    model = head(tiny_config())
    inputs, labels, shape = _head_case(head, tiny_batch())
    out = model(**inputs, **labels)
    assert out.logits.shape == shape and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.vilbert.v_embeddings.image_embeddings.weight.grad.abs().sum() > 0


def test_referring_expression_masks_padded_regions():
    model = VilbertForReferringExpression(tiny_config()).eval()
    batch = tiny_batch()
    logits = model(**batch).logits
    assert (logits[2, -2:] == torch.finfo(logits.dtype).min).all() and torch.isfinite(logits[2, :3]).all()


def test_multi_task_model_runs_every_task_like_the_single_heads(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(task_specific_tokens=True)
    model = VilbertForMultiTask(config).eval()
    model.save_pretrained(tmp_path)
    batch = tiny_batch()
    for head in HEADS:
        inputs, labels, shape = _head_case(head, batch)
        task = head.task_name
        single = head.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            ours = model(task=task, **inputs, **labels)
            theirs = single(**inputs, **labels)
        assert ours.logits.shape == shape
        torch.testing.assert_close(ours.logits, theirs.logits, msg=task)
        torch.testing.assert_close(ours.loss, theirs.loss, msg=task)
    # the task token of each head is config.task_token_ids[task]
    with torch.no_grad():
        explicit = model(task="vqa", task_ids=torch.full((4,), config.task_token_ids["vqa"]), **batch).logits
        other = model(task="vqa", task_ids=torch.full((4,), 2), **batch).logits
    torch.testing.assert_close(explicit, model(task="vqa", **batch).logits)
    assert not torch.allclose(explicit, other)


# ------------------------------------------------------------------------------------------------------------------
# save / load, Auto classes, LoRA
# ------------------------------------------------------------------------------------------------------------------


def test_save_load_and_auto_class_round_trips(tmp_path):
    torch.manual_seed(0)
    model = VilbertForPreTraining(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    batch = tiny_batch()
    reloaded = transformers.AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, VilbertForPreTraining)
    assert reloaded.mlm_head.decoder.weight.data_ptr() == reloaded.vilbert.embeddings.word_embeddings.weight.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).mlm_logits, model(**batch).mlm_logits)
    assert isinstance(transformers.AutoConfig.from_pretrained(tmp_path), VilbertConfig)
    assert isinstance(transformers.AutoModel.from_pretrained(tmp_path), VilbertModel)
    assert isinstance(
        transformers.AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path), VilbertForVisualQuestionAnswering
    )
    assert isinstance(transformers.AutoModelForMultipleChoice.from_pretrained(tmp_path), VilbertForMultipleChoice)
    auto_map = transformers.AutoConfig.from_pretrained(tmp_path).auto_map
    assert auto_map["VilbertForVisualReasoning"] == "modeling_vilbert.VilbertForVisualReasoning"


def test_released_base_parameter_counts():
    with torch.device("meta"):
        pretraining = VilbertForPreTraining(VilbertConfig())
        multi_task = VilbertForMultiTask(VilbertConfig(task_specific_tokens=True))
    config = VilbertConfig()
    # the original counts 250,044,029 / 268,028,859 (fixture README) including biOutput.q_dense1/2, which it never
    # uses and hf_vlp drops
    q_dense = len(config.v_biattention_id) * (
        (config.bi_hidden_size + 1) * config.v_hidden_size + (config.bi_hidden_size + 1) * config.hidden_size
    )
    assert sum(p.numel() for p in pretraining.parameters()) == 250_044_029 - q_dense
    assert sum(p.numel() for p in multi_task.parameters()) == 268_028_859 - q_dense


def test_lora_on_text_and_visual_attention_trains_and_reloads(tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    config = tiny_config()
    VilbertForVisualQuestionAnswering(config).save_pretrained(tmp_path / "base")
    model = VilbertForVisualQuestionAnswering.from_pretrained(tmp_path / "base")
    model.activation_checkpointing_enable()
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGET_MODULES, modules_to_save=["vqa_classifier"])
    model = peft.get_peft_model(model, lora)
    model.train()
    batch, labels = tiny_batch(), torch.rand(4, 5)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(15):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            visual_lora = [p.grad for n, p in model.named_parameters() if "v_layer.0" in n and "lora_B" in n]
            text_lora = [p.grad for n, p in model.named_parameters() if "encoder.layer.0" in n and "lora_B" in n]
            assert visual_lora and all(g is not None and g.abs().sum() > 0 for g in visual_lora)
            assert text_lora and all(g is not None and g.abs().sum() > 0 for g in text_lora)
            co_lora = [
                p.grad for n, p in model.named_parameters() if "c_layer.1.visual_attention" in n and "lora_B" in n
            ]
            assert co_lora and all(g is not None and g.abs().sum() > 0 for g in co_lora)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path / "adapter")
    base = VilbertForVisualQuestionAnswering.from_pretrained(tmp_path / "base")
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected)
        torch.testing.assert_close(reloaded.merge_and_unload()(**batch).logits, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    model = VilbertModel(tiny_config())
    batch = tiny_batch()
    with pytest.raises(ValueError, match="visual_feats"):
        model(**{**batch, "visual_feats": None})
    with pytest.raises(ValueError, match="visual_pos"):
        model(**{**batch, "visual_pos": torch.rand(4, 5, 5)})
    with pytest.raises(ValueError, match="task tokens"):
        model(**batch, task_ids=torch.zeros(4, dtype=torch.long))
    with_tokens = VilbertModel(tiny_config(task_specific_tokens=True))
    with pytest.raises(ValueError, match="task_ids"):
        with_tokens(**batch, task_ids=torch.tensor([1, 2, 20, 3]))
    with pytest.raises(ValueError, match="task_ids"):
        with_tokens(**batch)
    with pytest.raises(ValueError, match="v_feature_size"):
        model(**{**batch, "visual_feats": torch.rand(4, 5, FEATURES + 1)})
    with pytest.raises(ValueError, match="t_biattention_id"):
        tiny_config(t_biattention_id=[2, 1])


# ------------------------------------------------------------------------------------------------------------------
# processor
# ------------------------------------------------------------------------------------------------------------------


def test_processor_adds_the_whole_image_mean_region_and_feeds_the_model(bert_tokenizer, tmp_path):
    processor = VilbertProcessor(tokenizer=bert_tokenizer)
    feats = [np.random.rand(3, FEATURES).astype(np.float32), np.random.rand(2, FEATURES).astype(np.float32)]
    boxes = [[[0, 0, 10, 10], [5, 5, 20, 10], [1, 2, 3, 4]], [[0, 0, 40, 40], [10, 10, 20, 30]]]
    batch = processor(
        text=["a red circle", "two squares"], visual_feats=feats, boxes=boxes, image_sizes=[(20, 10), (40, 40)]
    )
    np.testing.assert_allclose(batch["visual_feats"][0, 0].numpy(), feats[0].mean(0), rtol=1e-6)
    assert batch["visual_pos"][1, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert batch["visual_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    config = tiny_config(vocab_size=len(bert_tokenizer))
    out = VilbertModel(config)(**batch)
    assert out.visual_hidden_state.shape == (2, 4, config.v_hidden_size)
    processor.save_pretrained(tmp_path)
    config.save_pretrained(tmp_path)
    reloaded = transformers.AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, VilbertProcessor) and reloaded.image_processor.add_global_region
    with pytest.warns(UserWarning, match="add_global_region"):
        forced = VilbertProcessor(RegionFeatureProcessor(add_global_region=False), bert_tokenizer)
    assert forced.image_processor.add_global_region


def test_remote_code_bundle_loads_without_hf_vlp(tmp_path):
    import os
    import subprocess
    import sys

    from hf_vlp.hub import save_for_hub

    torch.manual_seed(0)
    model = VilbertForVisualQuestionAnswering(tiny_config(task_specific_tokens=True)).eval()
    save_for_hub(model, None, tmp_path / "repo")
    batch = tiny_batch()
    torch.save(batch, tmp_path / "inputs.pt")
    with torch.no_grad():
        torch.save(model(**batch).logits, tmp_path / "logits.pt")
    script = f"""
import sys
class BlockHfVlp:
    def find_spec(self, name, path=None, target=None):
        if name == "hf_vlp" or name.startswith("hf_vlp."):
            raise ImportError("hf_vlp is not installed here")
sys.meta_path.insert(0, BlockHfVlp())
import torch
from transformers import AutoModelForVisualQuestionAnswering
model = AutoModelForVisualQuestionAnswering.from_pretrained(r"{tmp_path / "repo"}", trust_remote_code=True).eval()
assert "hf_vlp" not in type(model).__module__
with torch.no_grad():
    logits = model(**torch.load(r"{tmp_path / "inputs.pt"}")).logits
print("max_abs_diff", (logits - torch.load(r"{tmp_path / "logits.pt"}")).abs().max().item())
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_abs_diff 0.0" in result.stdout
