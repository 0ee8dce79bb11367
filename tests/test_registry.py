"""The architecture specs and the registry: every architecture is described as data that every tool reads,
`import hf_vlp` is lazy and leaves transformers' own behaviour alone, and each spec's pieces fit together (small
sizes + example inputs give a forward pass of every head; LoRA presets match modules)."""

import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys

import pytest
import torch

import hf_vlp
from hf_vlp.recipes import build_config
from hf_vlp.registry import ARCHITECTURES, FAILED_ARCHITECTURES
from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, resolve

SPECS = sorted(ARCHITECTURES.values(), key=lambda spec: spec.name)
HEADS = [(spec.name, task.value) for spec in SPECS for task in spec.heads]


def _python(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# ------------------------------------------------------------------------------------------------------------------
# the specs
# ------------------------------------------------------------------------------------------------------------------


def test_every_architecture_folder_declares_specs_that_resolve():
    assert not FAILED_ARCHITECTURES, FAILED_ARCHITECTURES
    folders = {info.name for info in pkgutil.iter_modules(hf_vlp.modeling.__path__) if info.ispkg}
    declared = {spec.package.rsplit(".", 1)[1] for spec in SPECS}
    # a folder may declare `SPECS = ()` for a model that is no vision-language architecture (the bottom-up detector)
    not_vl = {name for name in folders if importlib.import_module(f"hf_vlp.modeling.{name}").SPECS == ()}
    assert folders == declared | not_vl, folders ^ (declared | not_vl)
    for spec in SPECS:
        config_class = spec.config_class
        assert config_class.model_type == spec.model_type, spec.name
        assert callable(resolve(spec.example_inputs)), spec.name
        for task in spec.heads:
            model_class = spec.model_class(task)
            assert issubclass(model_class, torch.nn.Module), (spec.name, task)
            assert issubclass(config_class, model_class.config_class), (spec.name, task, model_class.config_class)
        for path in (spec.processor, spec.image_processor, spec.cpt_adapter, spec.pretraining_collator):
            assert path is None or isinstance(resolve(path), type), (spec.name, path)
        if spec.inputs is InputKind.REGIONS:
            assert spec.feature_size_field and hasattr(config_class(), spec.feature_size_field), spec.name


def test_spec_rejects_inconsistent_declarations():
    base = dict(
        name="toy",
        model_type="toy",
        config="toy.Config",
        inputs="text",
        example_inputs="toy.inputs",
        heads={"vqa": Head("toy.Vqa")},
        bench_task="vqa",
        lora_target_modules=r".*\.query",
    )
    assert ArchitectureSpec(**base).heads[Task.VQA].model == "toy.Vqa"
    with pytest.raises(ValueError, match="known tasks"):
        ArchitectureSpec(**{**base, "heads": {"vqa2": Head("toy.Vqa")}})
    with pytest.raises(ValueError, match="bench_task"):
        ArchitectureSpec(**{**base, "bench_task": "nlvr2"})
    with pytest.raises(ValueError, match="feature_size_field"):
        ArchitectureSpec(**{**base, "inputs": "regions"})
    with pytest.raises(ValueError, match="regex"):
        ArchitectureSpec(**{**base, "lora_target_modules": "(query"})
    with pytest.raises(ValueError, match="claimed by both"):
        ArchitectureSpec(
            **{
                **base,
                "heads": {
                    "vqa": Head("a.B", auto_classes=("AutoModel",)),
                    "base": Head("a.C", auto_classes=("AutoModel",)),
                },
            }
        )
    with pytest.raises(ValueError, match="Auto class names"):
        Head("toy.Vqa", auto_classes="AutoModel")
    with pytest.raises(ValueError, match="no 'captioning' head"):
        ArchitectureSpec(**base).head("captioning")


def test_auto_classes_only_fill_gaps_and_opt_ins_only_replace_transformers_classes():
    """A head's default Auto classes are ones transformers has no entry for (for the model type); its opt-in Auto
    classes are ones transformers maps to its own class. Checked against transformers' static tables."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    for spec in SPECS:
        for task, head in spec.heads.items():
            for auto_name in head.auto_classes + head.opt_in_auto_classes:
                transformers_maps = spec.model_type in getattr(transformers, auto_name)._model_mapping._model_mapping
                assert transformers_maps == (auto_name in head.opt_in_auto_classes), (spec.name, task, auto_name)
            if head.opt_in_auto_classes:
                assert spec.model_type in CONFIG_MAPPING_NAMES, (
                    f"{spec.name}: opt-ins are for transformers' model types"
                )


# ------------------------------------------------------------------------------------------------------------------
# lazy, side-effect-free import
# ------------------------------------------------------------------------------------------------------------------

LAZY_IMPORT = """
import sys, time
start = time.perf_counter()
import hf_vlp
seconds = time.perf_counter() - start
modeling = sorted(m for m in sys.modules if m.startswith("hf_vlp.modeling.") and ".modeling_" in m)
print("after import:", len(sys.modules), "modules", f"{seconds:.3f}s", "modeling:", modeling,
      "transformers imported:", "transformers" in sys.modules)
assert not modeling, modeling
assert sorted(hf_vlp.ARCHITECTURES) and not hf_vlp.FAILED_ARCHITECTURES

import transformers
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoModelForVisualQuestionAnswering as VQA
blip, switch = transformers.BlipConfig(), transformers.SwitchTransformersConfig()
assert VQA._model_mapping[type(blip)] is transformers.BlipForQuestionAnswering
assert AutoModelForSeq2SeqLM._model_mapping[type(switch)] is transformers.SwitchTransformersForConditionalGeneration
assert type(AutoConfig.for_model("uniter")).__module__ == "hf_vlp.modeling.uniter.configuration_uniter"
modeling = sorted(m for m in sys.modules if m.startswith("hf_vlp.modeling.") and ".modeling_" in m)
assert not modeling, f"registering with the Auto classes imported {modeling}"

hf_vlp.use_hf_vlp_classes_for_transformers_models()
assert VQA._model_mapping[type(blip)].__module__ == "hf_vlp.modeling.blip.modeling_blip"
assert AutoModelForSeq2SeqLM._model_mapping[type(switch)].__module__ == (
    "hf_vlp.modeling.switch_transformers.modeling_switch_transformers")
hf_vlp.use_hf_vlp_classes_for_transformers_models(False)
assert VQA._model_mapping[type(blip)] is transformers.BlipForQuestionAnswering
assert AutoModelForSeq2SeqLM._model_mapping[type(switch)] is transformers.SwitchTransformersForConditionalGeneration
print("ok")
"""


def test_import_is_lazy_and_keeps_transformers_classes_until_the_opt_in():
    output = _python(LAZY_IMPORT)
    assert output.strip().endswith("ok"), output


def test_registration_works_when_transformers_auto_classes_were_imported_first():
    output = _python(
        "import transformers\n"
        "from transformers import AutoConfig, AutoModelForVisualQuestionAnswering as VQA, AutoProcessor\n"
        "import hf_vlp\n"
        "config = AutoConfig.for_model('uniter', hidden_size=8, num_hidden_layers=1, num_attention_heads=2,"
        " intermediate_size=8)\n"
        "print(type(VQA.from_config(config)).__name__)\n"
    )
    assert output.strip() == "UniterForVisualQuestionAnswering"


@pytest.mark.parametrize(
    "arch", [spec.name for spec in SPECS if any(h.opt_in_auto_classes for h in spec.heads.values())]
)
def test_opt_in_switches_every_declared_auto_class_and_back(arch):
    import transformers

    spec = hf_vlp.get_spec(arch)
    config_class = spec.config_class
    declared = [(auto, head) for head in spec.heads.values() for auto in head.opt_in_auto_classes]
    mapping = {auto: getattr(transformers, auto)._model_mapping for auto, _ in declared}
    assert all(mapping[auto][config_class].__module__.startswith("transformers.") for auto, _ in declared)
    hf_vlp.use_hf_vlp_classes_for_transformers_models()
    try:
        for auto, head in declared:
            assert mapping[auto][config_class] is resolve(head.model), (arch, auto)
    finally:
        hf_vlp.use_hf_vlp_classes_for_transformers_models(False)
    assert all(mapping[auto][config_class].__module__.startswith("transformers.") for auto, _ in declared)


def test_hf_vlp_saved_folder_of_a_transformers_type_loads_hf_vlp_code_with_remote_code(tmp_path):
    """The fixed BLIP VQA class is reached through a folder hf_vlp writes: its `auto_map` names the hf_vlp class."""
    from hf_vlp.hub import save_for_hub
    from hf_vlp.modeling.blip import BlipForQuestionAnswering

    save_for_hub(BlipForQuestionAnswering(build_config("blip")), None, tmp_path / "repo")
    auto_map = json.loads((tmp_path / "repo" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForVisualQuestionAnswering"] == "modeling_blip.BlipForQuestionAnswering"
    script = f"""
import hf_vlp, transformers
from transformers import AutoModelForVisualQuestionAnswering as VQA
plain = VQA.from_pretrained(r"{tmp_path / "repo"}")
remote = VQA.from_pretrained(r"{tmp_path / "repo"}", trust_remote_code=True)
print(type(plain) is transformers.BlipForQuestionAnswering, type(remote).__module__.startswith("transformers_modules"),
      hasattr(remote, "rank_answers"))
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "True", "True"], result.stdout


# ------------------------------------------------------------------------------------------------------------------
# every head from the spec alone
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, task", HEADS)
def test_small_sizes_and_example_inputs_run_every_head(arch, task):
    torch.manual_seed(0)
    spec = hf_vlp.get_spec(arch)
    config = build_config(arch, **spec.head(task).config_overrides)
    model = spec.model_class(task)(config).eval()
    inputs = spec.example_inputs_for(config, task)
    with torch.no_grad():
        output = model(**inputs)
    if task != "base":  # every head's example inputs carry its training targets
        assert output.loss is not None and torch.isfinite(output.loss), (arch, task)


@pytest.mark.parametrize("arch", [spec.name for spec in SPECS])
def test_bench_builds_inputs_and_trains_every_architecture(arch, monkeypatch):
    from hf_vlp import bench

    monkeypatch.setattr(bench, "_matmul_gflops", lambda dtype, device: 1.0)  # the 2048^3 reference is not under test
    lines = []
    result = bench.run_benchmark(
        arch, batch_size=2, steps=1, sizes="small", text_length=8, regions=4, print_fn=lines.append
    )
    assert result["task"] == hf_vlp.get_spec(arch).bench_task.value
    assert result["train_examples_per_s"] > 0 and result["train_gflops"] > 0 and len(lines) == len(result)


def test_build_config_maps_the_shapes_world_onto_each_configs_own_fields():
    from hf_vlp.data.shapes import SHAPES_CLASSES

    tokenizer = [None] * 77  # only its length is read
    visual_bert = build_config("visual_bert", tokenizer, 37)
    assert visual_bert.visual_embedding_dim == 37 and visual_bert.vocab_size == 77
    lxmert = build_config("lxmert", tokenizer, 37)
    assert (lxmert.visual_feat_dim, lxmert.num_object_labels) == (37, len(SHAPES_CLASSES))
    assert lxmert.num_hidden_layers == {"vision": 2, "cross_encoder": 2, "language": 3}
    assert build_config("vilbert", tokenizer, 37).v_feature_size == 37
    assert build_config("blip", tokenizer).text_config.vocab_size == 77
    with pytest.raises(ValueError, match="visual_feat_dim"):
        build_config("visual_bert", tokenizer, 37, sizes={"visual_feat_dim": 37})
    with pytest.raises(ValueError, match="not region features"):
        build_config("vilt", tokenizer, 37)


# ------------------------------------------------------------------------------------------------------------------
# LoRA presets, Hub tags, CPT adapters: read from the spec
# ------------------------------------------------------------------------------------------------------------------

# legacy per-file LoRA constants (lists of suffixes or regexes) the spec's single regex form must reproduce
LEGACY_LORA = {"clip_resnet": ("hf_vlp.modeling.clip", "RESNET_LORA_TARGET_MODULES")}
LORA_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Embedding)


def _peft_selects(target_modules, names):
    if isinstance(target_modules, str):
        return {name for name in names if re.fullmatch(target_modules, name)}
    return {name for name in names if any(name == t or name.endswith("." + t) for t in target_modules)}


@pytest.mark.parametrize("arch", [spec.name for spec in SPECS])
def test_lora_preset_is_one_regex_that_selects_the_intended_modules(arch):
    from peft import LoraConfig, get_peft_model

    spec = hf_vlp.get_spec(arch)
    model = spec.model_class(spec.bench_task)(build_config(arch, **spec.head(spec.bench_task).config_overrides))
    names = [name for name, module in model.named_modules() if isinstance(module, LORA_LAYERS)]
    selected = _peft_selects(spec.lora_target_modules, names)
    assert selected, f"{arch}: {spec.lora_target_modules!r} matches no module"
    package, constant = LEGACY_LORA.get(arch, (spec.package, "LORA_TARGET_MODULES"))
    legacy = getattr(importlib.import_module(package), constant, None)
    if legacy is not None:
        assert selected == _peft_selects(legacy, names), arch
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=2, target_modules=spec.lora_target_modules, modules_to_save=list(spec.lora_modules_to_save) or None
        ),
    )
    assert sum(1 for name, _ in peft_model.named_modules() if name.endswith("lora_A")) == len(selected)


@pytest.mark.parametrize(
    "arch, task, tag",
    [
        ("uniter", "vqa", "visual-question-answering"),
        ("uniter", "retrieval", None),
        ("oscar", "nlvr2", None),
        ("blip", "vqa", "visual-question-answering"),
        ("vit_representation", "classification", "image-classification"),
        ("clip", "retrieval", "zero-shot-image-classification"),
    ],
)
def test_model_card_pipeline_tag_comes_from_the_spec(arch, task, tag):
    from hf_vlp.hub import model_card, pipeline_tag

    spec = hf_vlp.get_spec(arch)
    model = spec.model_class(task)(build_config(arch, **spec.head(task).config_overrides))
    assert pipeline_tag(model) == tag
    card = model_card(model)
    assert (f'pipeline_tag: "{tag}"' in card) if tag else ("pipeline_tag" not in card)


def test_model_card_loads_opt_in_heads_by_class_name():
    from hf_vlp.hub import model_card
    from hf_vlp.modeling.blip import BlipForQuestionAnswering

    card = model_card(BlipForQuestionAnswering(build_config("blip")), repo_id="org/blip-vqa")
    assert "from hf_vlp.modeling.blip import BlipForQuestionAnswering" in card
    assert 'BlipForQuestionAnswering.from_pretrained("org/blip-vqa")' in card


def test_cpt_adapter_is_found_through_the_spec(monkeypatch):
    from hf_vlp import cpt
    from hf_vlp.modeling.uniter import UniterForPreTraining

    monkeypatch.delitem(cpt.ADAPTERS, "uniter")
    adapter = cpt.adapter_for(UniterForPreTraining(build_config("uniter")))
    assert type(adapter) is resolve(hf_vlp.get_spec("uniter").cpt_adapter)
    with pytest.raises(ValueError, match="no CPT adapter for model_type 'vilt'"):
        cpt.adapter_for(hf_vlp.get_spec("vilt").model_class("retrieval")(build_config("vilt")))


# ------------------------------------------------------------------------------------------------------------------
# training entry points and converters
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["visual_bert", "lxmert"])
def test_train_pretrain_and_finetune_run_for_models_with_their_own_field_names(arch, tmp_path):
    from transformers import TrainingArguments

    from hf_vlp.training import FinetuneArguments, PretrainArguments, run_finetuning, run_pretraining

    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = run_pretraining(PretrainArguments(arch=arch, num_images=4), arguments)
    assert trainer.state.log_history[-1]["train_loss"] > 0
    score = run_finetuning(FinetuneArguments(arch=arch, task="vqa", num_images=4, eval_images=4), arguments)
    assert 0.0 <= score <= 1.0


def test_every_converter_has_the_verify_contract():
    import hf_vlp.conversion as conversion

    modules = [m.name for m in pkgutil.iter_modules(conversion.__path__) if m.name not in ("common", "paddle_format")]
    assert "uniter" in modules
    for name in modules:
        module = importlib.import_module(f"hf_vlp.conversion.{name}")
        assert callable(module.convert) and callable(module.fixture_outputs), name


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_a_saved_config_reloads_with_its_label_count(spec, tmp_path):
    """transformers does not write the label maps of a 2-label config; configs whose own default is another count
    (3129 VQA answers) must still reload 2 labels (hf_vlp.config_utils.SavesLabelMaps)."""
    for count in (2, 5):
        config = spec.config_class(num_labels=count)
        config.save_pretrained(tmp_path / str(count))
        assert type(config).from_pretrained(tmp_path / str(count)).num_labels == count
