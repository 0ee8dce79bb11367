"""UNITER with PEFT LoRA, and the Hub layout: save/push/pull, offline cache, remote code without hf_vlp."""

import os
import subprocess
import sys

import torch
from test_uniter import tiny_config, tiny_inputs

import hf_vlp  # noqa: F401
from hf_vlp.hub import model_card, save_for_hub
from hf_vlp.modeling.uniter import UniterForVisualQuestionAnswering, UniterProcessor
from hf_vlp.processing.region import RegionFeatureProcessor

LORA_TARGETS = ["query", "key", "value", "img_linear"]  # text and region paths both get adapters


def _labels(config):
    labels = torch.zeros(2, config.num_labels)
    labels[0, 1] = labels[1, 3] = 1.0
    return labels


def test_lora_trains_saves_reloads_and_merges(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    config = tiny_config()
    base = UniterForVisualQuestionAnswering(config)
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, modules_to_save=["classifier"])
    )
    model.enable_input_require_grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("img_linear.lora_A" in n for n in trainable) and any("query.lora_A" in n for n in trainable)
    inputs, labels = tiny_inputs(config=config), _labels(config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        adapted = model(**inputs).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(
        UniterForVisualQuestionAnswering.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, adapted, atol=1e-5, rtol=1e-5)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(merged(**inputs).logits, adapted, atol=1e-5, rtol=1e-5)


def _processor(bert_tokenizer):
    return UniterProcessor(RegionFeatureProcessor(), bert_tokenizer)


def test_model_card_has_hub_metadata():
    card = model_card(
        UniterForVisualQuestionAnswering(tiny_config()),
        base_model="org/uniter-base",
        datasets=["vqa_v2"],
        conversion="converted from uniter-base.pt",
    )
    assert card.startswith("---\n")
    for expected in (
        'library_name: "transformers"',
        'pipeline_tag: "visual-question-answering"',
        '"hf_vlp"',
        'base_model: "org/uniter-base"',
        'datasets: ["vqa_v2"]',
        "AutoModelForVisualQuestionAnswering",
        "converted from uniter-base.pt",
    ):
        assert expected in card, expected


def test_push_to_hub_then_load_by_repo_id(hub_endpoint, tmp_path, bert_tokenizer):
    import transformers

    from hf_vlp.hub import push_to_hub

    torch.manual_seed(0)
    model = UniterForVisualQuestionAnswering(tiny_config(vocab_size=len(bert_tokenizer))).eval()
    push_to_hub(model, _processor(bert_tokenizer), "tester/uniter-tiny-vqa")
    cache = tmp_path / "cache"
    reloaded = transformers.AutoModelForVisualQuestionAnswering.from_pretrained(
        "tester/uniter-tiny-vqa", cache_dir=cache
    ).eval()
    processor = transformers.AutoProcessor.from_pretrained("tester/uniter-tiny-vqa", cache_dir=cache)
    assert isinstance(processor, UniterProcessor)
    inputs = tiny_inputs(config=model.config)
    torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)


def test_offline_load_from_a_hub_cache_layout(tmp_path, bert_tokenizer):
    torch.manual_seed(0)
    model = UniterForVisualQuestionAnswering(tiny_config(vocab_size=len(bert_tokenizer))).eval()
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--uniter-tiny"
    save_for_hub(model, _processor(bert_tokenizer), repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    script = (
        "import torch, hf_vlp, transformers\n"
        "m = transformers.AutoModelForVisualQuestionAnswering.from_pretrained('org/uniter-tiny')\n"
        "p = transformers.AutoProcessor.from_pretrained('org/uniter-tiny')\n"
        "print(type(m).__name__, type(p).__name__)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "UniterForVisualQuestionAnswering UniterProcessor" in result.stdout


def test_remote_code_bundle_loads_without_hf_vlp(tmp_path):
    torch.manual_seed(0)
    model = UniterForVisualQuestionAnswering(tiny_config()).eval()
    save_for_hub(model, None, tmp_path / "repo")
    inputs = tiny_inputs(config=model.config)
    torch.save(inputs, tmp_path / "inputs.pt")
    torch.save(model(**inputs).logits, tmp_path / "logits.pt")
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
logits = model(**torch.load(r"{tmp_path / "inputs.pt"}")).logits
print("max_abs_diff", (logits - torch.load(r"{tmp_path / "logits.pt"}")).abs().max().item())
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_abs_diff 0.0" in result.stdout
