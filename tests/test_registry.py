"""Every architecture imports, registers with the Auto classes, and has a converter with the --verify contract."""

import importlib
import pkgutil

import transformers

import hf_vlp
from hf_vlp.registry import ARCHITECTURES, FAILED_ARCHITECTURES


def test_every_architecture_imports_and_registers():
    assert not FAILED_ARCHITECTURES, FAILED_ARCHITECTURES
    folders = {info.name for info in pkgutil.iter_modules(hf_vlp.modeling.__path__) if info.ispkg}
    registered_modules = {cls.__module__.split(".")[2] for info in ARCHITECTURES.values() for cls in info["heads"].values()}
    assert folders <= registered_modules | set(ARCHITECTURES), folders - registered_modules
    for name, info in ARCHITECTURES.items():
        assert info["heads"], f"{name} registers no heads"
        for auto_name, model_class in info["models"].items():
            mapping = getattr(transformers, auto_name)._model_mapping
            assert mapping[info["config"]] is model_class, (name, auto_name)


def test_every_converter_has_the_verify_contract():
    import hf_vlp.conversion as conversion

    modules = [m.name for m in pkgutil.iter_modules(conversion.__path__) if m.name not in ("common", "paddle_format")]
    assert "uniter" in modules
    for name in modules:
        module = importlib.import_module(f"hf_vlp.conversion.{name}")
        assert callable(module.convert) and callable(module.fixture_outputs), name
