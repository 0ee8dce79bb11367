"""The typed description of an architecture that every hf_vlp tool reads (docs/design.md, "The architecture spec").

Each `modeling/<arch>/__init__.py` declares `SPECS = (ArchitectureSpec(...), ...)`. A spec names classes by dotted
path (`"hf_vlp.modeling.uniter.modeling_uniter.UniterForVisualQuestionAnswering"`, or relative to `package`:
`".modeling_uniter.UniterForVisualQuestionAnswering"`), resolved on first use, so declaring and reading specs imports
no modeling code. This module imports nothing heavier than the standard library.
"""

from __future__ import annotations

import copy
import enum
import importlib
import importlib.util
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any


class Task(str, enum.Enum):
    """What a head is for. The values are the names the CLI, recipes and collators use."""

    BASE = "base"  # the bare encoder (AutoModel)
    PRETRAINING = "pretraining"  # the original pretraining objectives
    VQA = "vqa"
    GQA = "gqa"
    ENTAILMENT = "entailment"  # SNLI-VE
    NLVR2 = "nlvr2"
    REFEXP = "refexp"  # referring expressions (RefCOCO ...)
    RETRIEVAL = "retrieval"  # image-text retrieval / matching
    CAPTIONING = "captioning"
    VCR = "vcr"  # multiple choice
    MULTITASK = "multitask"  # ViLBERT 12-in-1
    CLASSIFICATION = "classification"  # image classification
    SEQ2SEQ = "seq2seq"  # text-to-text generation

    def __str__(self):
        return self.value


class InputKind(str, enum.Enum):
    """What the model reads besides text (docs/design.md, "Input vocabulary")."""

    REGIONS = "regions"  # detector region features + boxes: visual_feats / visual_pos / visual_attention_mask
    PIXELS = "pixels"  # images: pixel_values (+ pixel_mask)
    TEXT = "text"  # text only: input_ids

    def __str__(self):
        return self.value


def resolve(path: str):
    """The object a dotted path `package.module.Name` names (imports `package.module`)."""
    if not isinstance(path, str) or "." not in path.strip("."):
        raise ValueError(f"expected a dotted path 'package.module.Name', got {path!r}")
    module_name, _, name = path.rpartition(".")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ImportError(f"{module_name!r} defines no {name!r} (spec path {path!r})") from None


def names_class(path: str, cls) -> bool:
    """Whether dotted `path` names class `cls` without importing anything: same class name, and `cls` is defined in
    the path's module or inside it ("transformers.BlipConfig" names `transformers.models.blip.configuration_blip.
    BlipConfig`, which transformers re-exports at its top level)."""
    module, _, name = path.rpartition(".")
    return (
        isinstance(cls, type)
        and cls.__name__ == name
        and (cls.__module__ == module or cls.__module__.startswith(module + "."))
    )


def _absolute(path: str | None, package: str | None) -> str | None:
    """`path` with a leading-dot module part made absolute against `package`."""
    if path is None or not path.startswith("."):
        return path
    if package is None:
        raise ValueError(f"relative spec path {path!r} needs `package` (the declaring module's __name__)")
    module_name, _, name = path.rpartition(".")
    return f"{importlib.util.resolve_name(module_name, package)}.{name}"


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Head:
    """One task head of an architecture.

    model: dotted path of the model class.
    auto_classes: transformers Auto classes (by name, e.g. "AutoModelForVisualQuestionAnswering") that resolve this
        architecture's config to `model` after `import hf_vlp`. Only Auto classes transformers has no mapping for
        (for this model type) belong here: hf_vlp never replaces what transformers returns.
    opt_in_auto_classes: Auto classes that transformers already maps to its own class for this model type; they
        return `model` only after `hf_vlp.use_hf_vlp_classes_for_transformers_models()`.
    pipeline_tag: the Hub pipeline tag of a model card for this head; None where no Hub pipeline takes the head's
        inputs (the card then carries no tag rather than a wrong one).
    config_overrides: config fields this head needs (e.g. a third token type for UNITER's NLVR2 head).
    num_labels_field: the config field that sizes the head's label vocabulary ("num_labels", LXMERT's
        "num_qa_labels" ...); None when the head has none.
    processor_kwargs: extra arguments of the processor call for this task (VisualBERT VQA: `question_answering`).
    """

    model: str
    auto_classes: tuple[str, ...] = ()
    opt_in_auto_classes: tuple[str, ...] = ()
    pipeline_tag: str | None = None
    config_overrides: Mapping[str, Any] = field(default_factory=dict)
    num_labels_field: str | None = None
    processor_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("auto_classes", "opt_in_auto_classes"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) and v.startswith("AutoModel") for v in value):
                raise ValueError(f"Head.{name} must be a tuple of Auto class names ('AutoModel...'), got {value!r}")
            object.__setattr__(self, name, tuple(value))
        both = set(self.auto_classes) & set(self.opt_in_auto_classes)
        if both:
            raise ValueError(f"{self.model}: {sorted(both)} cannot be both a default and an opt-in Auto class")
        object.__setattr__(self, "config_overrides", _frozen(self.config_overrides))
        object.__setattr__(self, "processor_kwargs", _frozen(self.processor_kwargs))

    def __hash__(self):  # the mapping fields are read-only views, which do not hash
        return hash((self.model, self.auto_classes, self.opt_in_auto_classes))


@dataclass(frozen=True)
class ArchitectureSpec:
    """Everything the core needs to know about one architecture, as data.

    name: the architecture's name in hf_vlp (`hf-vlp bench NAME`, `--arch NAME`).
    model_type: `config.model_type` of its configs.
    config: dotted path of the config class.
    heads: `Task` -> `Head`.
    inputs: what the model reads besides text (`InputKind`).
    package: the declaring module (`__name__`); dotted paths starting with "." are relative to it.
    processor / image_processor: dotted paths of the processor class (tokenizer + region or image processor) and of
        the image processor registered with AutoImageProcessor (None: none, or transformers' own).
    feature_size_field: config field holding the region feature size (`visual_feat_dim`, VisualBERT's
        `visual_embedding_dim`, ViLBERT's `v_feature_size`); required for region models.
    vocab_size_field: config field of the text vocabulary size; dots reach sub-configs ("text_config.vocab_size");
        None for a model that reads no text (ViT).
    region_classes_field: config field of the number of detector classes a region-classification objective predicts.
    small_sizes: config overrides of a small model that trains in minutes on a CPU (recipes, bench, tests). Values
        may be dicts for sub-configs ({"text_config": {...}}).
    lora_target_modules: the PEFT `LoraConfig(target_modules=...)` default, always a regex that must match a
        module's full name (PEFT applies `re.fullmatch`).
    lora_modules_to_save: modules LoRA fine-tuning trains fully (new classifiers).
    cpt_adapter: dotted path of the `hf_vlp.cpt.CptAdapter` subclass for CPT prompting, if CPT supports the model.
    pretraining_collator / pretraining_objectives: the `DataCollatorForVLPretraining`-style class that makes the
        pretraining batches of `hf-vlp train pretrain`, and its default objectives (None: no shapes-world recipe).
    example_inputs: dotted path of `example_inputs(config, task, batch_size=2, *, text_length=8, regions=5,
        seed=0) -> dict`, random model keyword arguments (labels included) for any head; used by `hf-vlp bench`
        and the tests.
    bench_task: the head `hf-vlp bench` times by default.
    """

    name: str
    model_type: str
    config: str
    heads: Mapping[Task, Head]
    inputs: InputKind
    example_inputs: str
    bench_task: Task
    lora_target_modules: str
    package: str | None = None
    processor: str | None = None
    image_processor: str | None = None
    feature_size_field: str | None = None
    vocab_size_field: str | None = "vocab_size"
    region_classes_field: str | None = None
    small_sizes: Mapping[str, Any] = field(default_factory=dict)
    lora_modules_to_save: tuple[str, ...] = ()
    cpt_adapter: str | None = None
    pretraining_collator: str | None = None
    pretraining_objectives: tuple[str, ...] = ()

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name or ""):
            raise ValueError(f"`name` must be a lower-case identifier, got {self.name!r}")
        try:
            set_("inputs", InputKind(self.inputs))
            set_("bench_task", Task(self.bench_task))
            heads = {Task(task): head for task, head in dict(self.heads).items()}
        except ValueError as error:
            raise ValueError(f"{self.name}: {error} (known tasks {[t.value for t in Task]})") from None
        if not heads or not all(isinstance(head, Head) for head in heads.values()):
            raise ValueError(f"{self.name}: `heads` must map tasks to `Head`s, got {self.heads!r}")
        heads = {task: replace(head, model=_absolute(head.model, self.package)) for task, head in heads.items()}
        claimed = {}
        for task, head in heads.items():
            for auto_name in head.auto_classes + head.opt_in_auto_classes:
                if claimed.setdefault(auto_name, task) is not task:
                    raise ValueError(
                        f"{self.name}: {auto_name} is claimed by both {claimed[auto_name].value!r} and {task.value!r}"
                    )
        set_("heads", _frozen(heads))
        for name in ("config", "processor", "image_processor", "example_inputs", "cpt_adapter", "pretraining_collator"):
            set_(name, _absolute(getattr(self, name), self.package))
        if self.bench_task not in heads:
            raise ValueError(f"{self.name}: bench_task {self.bench_task.value!r} is not one of its heads {self.tasks}")
        if self.inputs is InputKind.REGIONS and not self.feature_size_field:
            raise ValueError(f"{self.name}: a region model must name its `feature_size_field`")
        try:
            re.compile(self.lora_target_modules)
        except (re.error, TypeError) as error:
            raise ValueError(
                f"{self.name}: `lora_target_modules` must be a regex, got {self.lora_target_modules!r}: {error}"
            ) from None
        set_("small_sizes", _frozen(copy.deepcopy(dict(self.small_sizes))))
        set_("lora_modules_to_save", tuple(self.lora_modules_to_save))
        set_("pretraining_objectives", tuple(self.pretraining_objectives))

    def __hash__(self):  # the mapping fields are read-only views, which do not hash
        return hash((self.name, self.model_type, self.config))

    # ---- reading the spec ---------------------------------------------------------------------------------------

    @property
    def tasks(self) -> list[str]:
        return [task.value for task in self.heads]

    def head(self, task: Task | str) -> Head:
        """The `Head` of `task`; ValueError naming the tasks this architecture has."""
        try:
            return self.heads[Task(task)]
        except (ValueError, KeyError):
            raise ValueError(f"{self.name} has no {str(task)!r} head; it has {self.tasks}") from None

    @property
    def config_class(self):
        return resolve(self.config)

    def model_class(self, task: Task | str):
        """The model class of `task` (imports the modeling code)."""
        return resolve(self.head(task).model)

    @property
    def processor_class(self):
        return None if self.processor is None else resolve(self.processor)

    def task_of(self, model) -> Task | None:
        """The first task (in declaration order) whose head class is `model`'s class (or `model` itself, a class)."""
        cls = model if isinstance(model, type) else type(model)
        return next((task for task, head in self.heads.items() if names_class(head.model, cls)), None)

    def example_inputs_for(self, config, task: Task | str, **kwargs) -> dict:
        """Random keyword arguments (labels included) for the `task` head built from `config`."""
        self.head(task)
        builder: Callable = resolve(self.example_inputs)
        return builder(config, Task(task), **kwargs)


def lazy_exports(package: str, exports: Mapping[str, tuple[str, ...]]):
    """`__getattr__` and `__dir__` for a package `__init__` whose names live in submodules imported on first access
    (PEP 562). `exports` maps a relative submodule (".modeling_uniter") to the names it provides."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        setattr(importlib.import_module(package), name, value)  # later lookups skip __getattr__
        return value

    def __dir__():
        return sorted(set(vars(importlib.import_module(package))) | set(where))

    return __getattr__, __dir__


__all__ = ["ArchitectureSpec", "Head", "InputKind", "Task", "lazy_exports", "names_class", "resolve"]
