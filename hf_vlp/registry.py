"""The architecture registry and its lazy, side-effect-free link to the transformers Auto classes.

`import hf_vlp` reads every `hf_vlp.modeling.<arch>` package's `SPECS` (plain data, no modeling code) into
`ARCHITECTURES`. Nothing of transformers is imported then. When transformers' Auto machinery is imported (now, or
later by the user), hf_vlp enters its architectures into the Auto mappings as dotted paths that are imported on the
first lookup, in the spirit of transformers' own `_LazyModule`:

* AutoConfig learns hf_vlp's own model types (uniter, vilbert, ernie_vil, oscar, clip_resnet, vit_representation);
* each head's `Head.auto_classes` are added (an Auto class resolves the config to the hf_vlp head), always where
  transformers has no mapping of its own for the model type, so no call that worked before returns another class;
* transformers' pipeline registry learns hf_vlp's pipeline tasks (`visual-question-answering`,
  `image-text-retrieval`, `visual-grounding`, `image-to-text`: hf_vlp/pipelines.py) when `transformers.pipelines`
  is imported;
* `use_hf_vlp_classes_for_transformers_models()` is the one opt-in that makes transformers' Auto classes return
  hf_vlp's fixed subclasses for transformers' own model types (`Head.opt_in_auto_classes`).

See docs/design.md, "Auto classes".
"""

from __future__ import annotations

import importlib
import importlib.abc
import pkgutil
import sys
import warnings
from dataclasses import dataclass

from .spec import ArchitectureSpec, names_class, resolve

# architecture name -> spec
ARCHITECTURES: dict[str, ArchitectureSpec] = {}
# architecture package -> the exception that stopped reading its SPECS (a warning; tests assert it stays empty)
FAILED_ARCHITECTURES: dict[str, Exception] = {}


def get_spec(name: str) -> ArchitectureSpec:
    """The spec of architecture `name`; ValueError naming the registered ones."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; registered: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def spec_for_model_type(model_type: str) -> ArchitectureSpec:
    """The spec whose configs have `config.model_type == model_type`."""
    for spec in ARCHITECTURES.values():
        if spec.model_type == model_type:
            return spec
    raise ValueError(
        f"no hf_vlp architecture has model_type {model_type!r}; "
        f"known: {sorted(spec.model_type for spec in ARCHITECTURES.values())}"
    )


def spec_for_model(model) -> ArchitectureSpec:
    """The spec of a model (or config) instance, by its `config.model_type`."""
    config = getattr(model, "config", model)
    return spec_for_model_type(getattr(config, "model_type", None))


def register_architecture(spec: ArchitectureSpec, exist_ok: bool = False) -> ArchitectureSpec:
    """Add `spec` to `ARCHITECTURES` and to the transformers Auto mappings (now if transformers' Auto modules are
    imported, else when they are). The packages under `hf_vlp.modeling` are registered by `import hf_vlp`; call this
    for an architecture that lives elsewhere."""
    if not isinstance(spec, ArchitectureSpec):
        raise ValueError(f"`spec` must be an ArchitectureSpec, got {type(spec).__name__}")
    if spec.name in ARCHITECTURES and ARCHITECTURES[spec.name] != spec and not exist_ok:
        raise ValueError(f"architecture {spec.name!r} is already registered (pass exist_ok=True to replace it)")
    ARCHITECTURES[spec.name] = spec
    for module_name, registrar in _AUTO_MODULES.items():
        if module_name in sys.modules and module_name not in _AFTER_IMPORT.pending:
            registrar(sys.modules[module_name], [spec])
    return spec


def discover_architectures() -> dict[str, ArchitectureSpec]:
    """Read `SPECS` from every `hf_vlp.modeling.<arch>` package (their `__init__` holds no modeling imports)."""
    import hf_vlp.modeling as modeling

    for info in pkgutil.iter_modules(modeling.__path__):
        if not info.ispkg:
            continue
        try:
            package = importlib.import_module(f"hf_vlp.modeling.{info.name}")
            specs = package.SPECS
        except Exception as error:  # one broken architecture must not hide the others
            FAILED_ARCHITECTURES[info.name] = error
            warnings.warn(f"hf_vlp: architecture {info.name!r} failed to load its spec: {error!r}", stacklevel=2)
            continue
        for spec in specs:
            register_architecture(spec, exist_ok=True)
    _AFTER_IMPORT.install()
    return ARCHITECTURES


# ------------------------------------------------------------------------------------------------------------------
# lazy entries in transformers' Auto mappings
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ClassRef:
    """A class named by dotted path, not imported yet. As a mapping key it stands for the class it names: a class
    matches when its name is the same and its module is the path's module or inside it ("transformers.BlipConfig"
    matches `transformers.models.blip.configuration_blip.BlipConfig`)."""

    path: str

    def matches(self, cls) -> bool:
        return names_class(self.path, cls)

    def load(self):
        return resolve(self.path)


_MISSING = object()


def _load(value):
    if isinstance(value, _ClassRef):
        return value.load()
    if isinstance(value, dict) and any(isinstance(v, _ClassRef) for v in value.values()):
        return {key: _load(v) for key, v in value.items()}
    return value


class _LazyRegistrations(dict):
    """Replaces the `_extra_content` dict (what `register()` fills) of a transformers Auto mapping. Keys and values
    may be `_ClassRef`s; a lookup by class finds the matching key, imports the value and stores both resolved.
    Listing the mapping (keys / values / items / iteration) resolves every entry."""

    def _key_for(self, key):
        if dict.__contains__(self, key):
            return key
        if isinstance(key, type):
            return next((k for k in dict.keys(self) if isinstance(k, _ClassRef) and k.matches(key)), _MISSING)
        if isinstance(key, _ClassRef):
            return next((k for k in dict.keys(self) if isinstance(k, type) and key.matches(k)), _MISSING)
        return _MISSING

    def __contains__(self, key):
        return self._key_for(key) is not _MISSING

    def __getitem__(self, key):
        found = self._key_for(key)
        if found is _MISSING:
            raise KeyError(key)
        stored = dict.__getitem__(self, found)
        value = _load(stored)
        if found is not key and isinstance(key, type):
            dict.__delitem__(self, found)
            dict.__setitem__(self, key, value)
        elif value is not stored:
            dict.__setitem__(self, found, value)
        return value

    def get(self, key, default=None):
        return self[key] if key in self else default

    def keys(self):
        listed = []
        for key in list(dict.keys(self)):
            if isinstance(key, _ClassRef):
                try:
                    cls = key.load()
                except Exception as error:  # one unimportable entry must not break listing the others
                    warnings.warn(f"hf_vlp: cannot import {key.path}: {error!r}", stacklevel=2)
                    continue
                dict.__setitem__(self, cls, dict.pop(self, key))
                key = cls
            listed.append(key)
        return listed

    def __iter__(self):
        return iter(self.keys())

    def values(self):
        return [self[key] for key in self.keys()]

    def items(self):
        return [(key, self[key]) for key in self.keys()]

    # hf_vlp's own edits, by config path --------------------------------------------------------------------------

    def add(self, config_path: str, value) -> None:
        """Enter `value` for the config class at `config_path` unless an entry for that class exists."""
        if self._key_for(_ClassRef(config_path)) is _MISSING:
            dict.__setitem__(self, _ClassRef(config_path), value)

    def swap(self, config_path: str, value):
        """Set the entry of the config at `config_path` to `value`; returns what was there (or `_MISSING`)."""
        found = self._key_for(_ClassRef(config_path))
        previous = _MISSING if found is _MISSING else dict.pop(self, found)
        dict.__setitem__(self, _ClassRef(config_path) if found is _MISSING else found, value)
        return previous

    def restore(self, config_path: str, previous) -> None:
        found = self._key_for(_ClassRef(config_path))
        if found is not _MISSING:
            dict.__delitem__(self, found)
        if previous is not _MISSING:
            dict.__setitem__(self, _ClassRef(config_path) if found is _MISSING else found, previous)


def _lazy_extra_content(mapping) -> _LazyRegistrations:
    if not isinstance(mapping._extra_content, _LazyRegistrations):
        mapping._extra_content = _LazyRegistrations(mapping._extra_content)
    return mapping._extra_content


def _register_configs(configuration_auto, specs):
    """AutoConfig: hf_vlp's own model types (transformers' model types keep transformers' configs)."""
    registrations = _lazy_extra_content(configuration_auto.CONFIG_MAPPING)
    for spec in specs:
        if spec.model_type not in configuration_auto.CONFIG_MAPPING_NAMES and spec.model_type not in registrations:
            dict.__setitem__(registrations, spec.model_type, _ClassRef(spec.config))


def _transformers_maps(mapping, model_type) -> bool:
    """Whether transformers itself maps `model_type` in this Auto mapping (its static name table)."""
    return model_type in mapping._model_mapping


def _register_models(modeling_auto, specs):
    for spec in specs:
        for head in spec.heads.values():
            for auto_name in head.auto_classes:
                mapping = getattr(modeling_auto, auto_name)._model_mapping
                if not _transformers_maps(mapping, spec.model_type):  # never replace what transformers returns
                    _lazy_extra_content(mapping).add(spec.config, _ClassRef(head.model))
    if _OPT_IN["enabled"]:
        _apply_opt_in(modeling_auto, specs)


def _register_processors(processing_auto, specs):
    mapping = processing_auto.PROCESSOR_MAPPING
    for spec in specs:
        if spec.processor is not None and not _transformers_maps(mapping, spec.model_type):
            _lazy_extra_content(mapping).add(spec.config, _ClassRef(spec.processor))


def _register_image_processors(image_processing_auto, specs):
    mapping = image_processing_auto.IMAGE_PROCESSOR_MAPPING
    for spec in specs:
        if spec.image_processor is not None and not _transformers_maps(mapping, spec.model_type):
            _lazy_extra_content(mapping).add(spec.config, {"pil": _ClassRef(spec.image_processor)})


def _register_pipelines(pipelines_module, specs):
    """transformers' pipeline registry: hf_vlp's pipeline tasks (hf_vlp.pipelines; per task, not per spec: the
    pipelines find the head of any registered architecture when they load a model)."""
    from .pipelines import register_pipelines

    register_pipelines(pipelines_module)


_AUTO_MODULES = {
    "transformers.models.auto.configuration_auto": _register_configs,
    "transformers.models.auto.modeling_auto": _register_models,
    "transformers.models.auto.processing_auto": _register_processors,
    "transformers.models.auto.image_processing_auto": _register_image_processors,
    "transformers.pipelines": _register_pipelines,
}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Registers hf_vlp's architectures in each transformers Auto module right after that module is imported, so
    `import hf_vlp` itself imports nothing of transformers. The finder only wraps the normal loader of the module
    names of `_AUTO_MODULES` (and of `after_transformers_import`'s) and leaves `sys.meta_path` once all are done."""

    def __init__(self):
        self.pending = dict(_AUTO_MODULES)
        self.extra = {}  # module name -> [registrar(module)] of models without a spec (after_transformers_import)

    def _run(self, name, module):
        registrar = self.pending.pop(name, None)
        if registrar is not None:
            registrar(module, list(ARCHITECTURES.values()))
        for extra in self.extra.pop(name, []):
            extra(module)

    def install(self):
        for name in list(self.pending) + list(self.extra):
            if name in sys.modules:  # imported before hf_vlp: register now
                self._run(name, sys.modules[name])
        waiting = self.pending or self.extra
        if waiting and self not in sys.meta_path:
            sys.meta_path.insert(0, self)
        elif not waiting and self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.pending and fullname not in self.extra:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            module_spec = finder.find_spec(fullname, path, target)
            if module_spec is not None:
                break
        else:
            return None
        loader = module_spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return module_spec
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            self._run(fullname, module)
            if not (self.pending or self.extra) and self in sys.meta_path:
                sys.meta_path.remove(self)

        loader.exec_module = exec_then_register  # this spec's own loader instance
        return module_spec


_AFTER_IMPORT = _AfterImport()


def after_transformers_import(module_name: str, registrar) -> None:
    """Call `registrar(module)` once transformers' `module_name` is imported (now, if it already is), through the
    import hook the specs use: how a model without an `ArchitectureSpec` (the bottom-up detector) enters its config,
    model and image processor into transformers' Auto mappings without `import hf_vlp` importing transformers."""
    _AFTER_IMPORT.extra.setdefault(module_name, []).append(registrar)
    _AFTER_IMPORT.install()


# ------------------------------------------------------------------------------------------------------------------
# the opt-in for transformers' own model types
# ------------------------------------------------------------------------------------------------------------------

_OPT_IN = {"enabled": False, "replaced": {}}


def _apply_opt_in(modeling_auto, specs):
    for spec in specs:
        for head in spec.heads.values():
            for auto_name in head.opt_in_auto_classes:
                registrations = _lazy_extra_content(getattr(modeling_auto, auto_name)._model_mapping)
                key = (auto_name, spec.config)
                previous = registrations.swap(spec.config, _ClassRef(head.model))
                _OPT_IN["replaced"].setdefault(key, previous)


def use_hf_vlp_classes_for_transformers_models(enabled: bool = True) -> None:
    """Make transformers' Auto classes return hf_vlp's fixed subclasses for transformers' own model types.

    After `import hf_vlp` alone, e.g. `AutoModelForVisualQuestionAnswering` of a `BlipConfig` is transformers'
    `BlipForQuestionAnswering`. After this call it is hf_vlp's (cross-attention padding mask, the original VQA
    loss); likewise BLIP captioning, Switch Transformers (router losses), LXMERT (loss weights, gradient
    checkpointing) and VisualBERT (region token types). Each architecture lists these under
    `Head.opt_in_auto_classes`. `enabled=False` gives transformers its own classes back.

    Without the call, reach the hf_vlp classes by name (`hf_vlp.modeling.blip.BlipForQuestionAnswering`) or load a
    folder written by `hf_vlp.hub.save_for_hub` with `trust_remote_code=True` (its `auto_map` names them).
    """
    if not isinstance(enabled, bool):
        raise ValueError(f"`enabled` must be True or False, got {enabled!r}")
    if enabled == _OPT_IN["enabled"]:
        return
    _OPT_IN["enabled"] = enabled
    name = "transformers.models.auto.modeling_auto"
    if name not in sys.modules or name in _AFTER_IMPORT.pending:
        return  # applied when transformers' modeling_auto is imported
    modeling_auto = sys.modules[name]
    if enabled:
        _apply_opt_in(modeling_auto, list(ARCHITECTURES.values()))
    else:
        for (auto_name, config_path), previous in _OPT_IN["replaced"].items():
            _lazy_extra_content(getattr(modeling_auto, auto_name)._model_mapping).restore(config_path, previous)
        _OPT_IN["replaced"].clear()


__all__ = [
    "ARCHITECTURES",
    "FAILED_ARCHITECTURES",
    "discover_architectures",
    "get_spec",
    "register_architecture",
    "spec_for_model",
    "spec_for_model_type",
    "use_hf_vlp_classes_for_transformers_models",
]
