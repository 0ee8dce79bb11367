"""Registration of architectures with the transformers Auto classes.

Every `hf_vlp.modeling.<arch>` package calls `register_architecture` at import; `import hf_vlp` imports them all,
so `AutoModel.from_pretrained(...)` resolves hf_vlp model types. Adding an architecture needs no edit here.
"""

import importlib
import pkgutil
import warnings

import transformers

# architecture name -> {"config": cls, "models": {auto class name: cls}, "heads": {task: cls}, "processor": cls}
ARCHITECTURES: dict[str, dict] = {}
# architecture name -> the exception that stopped its import (reported as a warning; tests assert it stays empty)
FAILED_ARCHITECTURES: dict[str, Exception] = {}


def register_architecture(
    name, config_class=None, models=None, heads=None, processor_class=None, image_processor_class=None
):
    """Register `config_class` with AutoConfig, each `models[auto_name]` with that Auto class (e.g.
    "AutoModelForVisualQuestionAnswering"), and `processor_class` with AutoProcessor. `heads` lists every task head
    (also those without an Auto class) for the CLI, Hub bundles and tests. `image_processor_class` (e.g.
    `RegionFeatureProcessor`) is registered with AutoImageProcessor so processors reload with `AutoProcessor`. Architectures transformers already has
    pass their config/model classes only in `heads` and register just what transformers lacks."""
    models, heads = models or {}, heads or {}
    if config_class is not None and config_class.model_type not in transformers.CONFIG_MAPPING:
        transformers.AutoConfig.register(config_class.model_type, config_class)
    for auto_name, model_class in models.items():
        getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)
    if image_processor_class is not None and config_class is not None:
        transformers.AutoImageProcessor.register(
            config_class, image_processor_classes={"pil": image_processor_class}, exist_ok=True
        )
    if processor_class is not None and config_class is not None:
        transformers.AutoProcessor.register(config_class, processor_class, exist_ok=True)
    ARCHITECTURES[name] = {"config": config_class, "models": models, "heads": heads, "processor": processor_class}


def import_all_architectures():
    """Import every `hf_vlp.modeling.<arch>` package (each registers itself)."""
    import hf_vlp.modeling as modeling

    for info in pkgutil.iter_modules(modeling.__path__):
        if info.ispkg and info.name not in ARCHITECTURES:
            try:
                importlib.import_module(f"hf_vlp.modeling.{info.name}")
            except Exception as error:  # one broken architecture must not hide the others
                FAILED_ARCHITECTURES[info.name] = error
                warnings.warn(f"hf_vlp: architecture {info.name!r} failed to import: {error!r}", stacklevel=2)
    return ARCHITECTURES
