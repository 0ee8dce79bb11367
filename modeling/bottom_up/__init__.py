"""The bottom-up-attention Faster R-CNN region detector (Anderson et al. 2018), the source of the region features
UNITER, ViLBERT, VisualBERT, LXMERT, Oscar/VinVL and ERNIE-ViL read.

It is not a vision-language model: it has no text input, no task heads and no fine-tuning recipe, so it has no
`ArchitectureSpec` (`SPECS` is empty, and the registry's common tests do not run it). Its config, model and image
processor are registered with AutoConfig / AutoModel / AutoImageProcessor lazily, through `hf_vlp.registry.after_transformers_import`, as the registry does
for the specs: dotted paths entered into transformers' Auto mappings when those modules are imported, imported on
first lookup. `import hf_vlp` still imports nothing of transformers.
"""

from hf_vlp.spec import lazy_exports

SPECS = ()

MODEL_TYPE = "bottom_up_frcnn"
_CONFIG = f"{__name__}.configuration_bottom_up.BottomUpConfig"
_MODEL = f"{__name__}.modeling_bottom_up.BottomUpDetector"
_IMAGE_PROCESSOR = f"{__name__}.image_processing_bottom_up.BottomUpImageProcessor"


def _register_config(module):
    from hf_vlp.registry import _ClassRef, _lazy_extra_content

    registrations = _lazy_extra_content(module.CONFIG_MAPPING)
    if MODEL_TYPE not in module.CONFIG_MAPPING_NAMES and MODEL_TYPE not in registrations:
        dict.__setitem__(registrations, MODEL_TYPE, _ClassRef(_CONFIG))


def _register_model(module):
    from hf_vlp.registry import _ClassRef, _lazy_extra_content

    _lazy_extra_content(module.AutoModel._model_mapping).add(_CONFIG, _ClassRef(_MODEL))


def _register_image_processor(module):
    from hf_vlp.registry import _ClassRef, _lazy_extra_content

    _lazy_extra_content(module.IMAGE_PROCESSOR_MAPPING).add(_CONFIG, {"pil": _ClassRef(_IMAGE_PROCESSOR)})


_REGISTRARS = {
    "transformers.models.auto.configuration_auto": _register_config,
    "transformers.models.auto.modeling_auto": _register_model,
    "transformers.models.auto.image_processing_auto": _register_image_processor,
}


def _register_after_transformers_import():
    from hf_vlp.registry import after_transformers_import

    for module_name, registrar in _REGISTRARS.items():
        after_transformers_import(module_name, registrar)


_register_after_transformers_import()

_EXPORTS = {
    ".configuration_bottom_up": ("BottomUpConfig",),
    ".modeling_bottom_up": ("BottomUpDetector", "BottomUpDetectorOutput", "BottomUpPreTrainedModel"),
    ".image_processing_bottom_up": ("BottomUpImageProcessor",),
    ".box_ops": ("nms_keep", "nms_keep_loop", "roi_pool", "roi_pool_loop"),
    ".bench_bottom_up": ("benchmark_extraction",),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["MODEL_TYPE", "SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
