"""Reading a PyTorch Lightning `.ckpt` without pytorch_lightning and without running what the pickle names.

A Lightning checkpoint is a `torch.save` zip whose pickle holds, besides tensors, Lightning's own objects: METER's
files (PL 1.3.2) key `callbacks` by the class object `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`
(shared/fixtures/meter/README.md), so `torch.load(weights_only=True)` refuses them and `weights_only=False` imports
Lightning and would call whatever global the file names.

`load_lightning_checkpoint` unpickles with an allowlist:
* the globals torch's own weights-only unpickler admits (tensor and storage rebuilders, OrderedDict, ...), which only
  build data;
* the few Lightning / sacred classes a training checkpoint carries (`LIGHTNING_GLOBALS`): each becomes an inert
  placeholder class (a dict subclass, so container classes keep their items) that is never imported and runs no
  code of the original;
* every other global (`builtins.eval`, `os.system`, a class of some package, ...) is refused with a
  `ConversionError` naming it, before anything of it is executed.
"""

import io
import pickle
from pathlib import Path

import torch

from ..common import ConversionError, is_torchscript_archive

# Lightning and sacred objects a training checkpoint may hold: callback classes (keys of `callbacks`), the
# hyper-parameter containers. Admitted only as inert placeholders.
LIGHTNING_GLOBALS = frozenset(
    {
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
        "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
        "pytorch_lightning.callbacks.progress.ProgressBar",
        "pytorch_lightning.utilities.parsing.AttributeDict",
        "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
        "lightning.pytorch.callbacks.lr_monitor.LearningRateMonitor",
        "lightning.pytorch.utilities.parsing.AttributeDict",
        "sacred.config.custom_containers.ReadOnlyDict",
        "sacred.config.custom_containers.ReadOnlyList",
    }
)


class LightningPlaceholder(dict):
    """Stand-in for an admitted Lightning / sacred global. A dict, so that dict-like containers keep their items;
    constructor arguments and pickled state are recorded, nothing else happens."""

    original_global = "?"

    def __init__(self, *args, **kwargs):
        try:
            super().__init__(*args, **kwargs)
        except (TypeError, ValueError):
            self.args = args

    def __setstate__(self, state):
        self.state = state

    def __reduce__(self):  # never pickled back as the original class
        return (dict, (dict(self),))


def _torch_safe_globals() -> dict:
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = dict(_get_allowed_globals())
    allowed.update(
        {f"{k.__module__}.{k.__name__}": k for k in torch.serialization.get_safe_globals() if hasattr(k, "__name__")}
    )
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """`find_class` admits torch's weights-only globals and `LIGHTNING_GLOBALS` (as placeholders); anything else
    raises `ConversionError`. `source` names the file in the error."""

    source = "the checkpoint"
    _allowed = None
    _placeholders = {}

    def find_class(self, module, name):
        key = f"{module}.{name}"
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _torch_safe_globals()
        if key in RestrictedUnpickler._allowed:
            return RestrictedUnpickler._allowed[key]
        if key in LIGHTNING_GLOBALS:
            if key not in RestrictedUnpickler._placeholders:
                RestrictedUnpickler._placeholders[key] = type(
                    f"Placeholder[{key}]", (LightningPlaceholder,), {"original_global": key}
                )
            return RestrictedUnpickler._placeholders[key]
        raise ConversionError(
            f"{self.source} refers to the Python global {key!r}, which a METER Lightning checkpoint never needs; "
            "refusing to load it (nothing from it was imported or run). Admitted: tensor data, OrderedDict and "
            f"the Lightning / sacred containers {sorted(LIGHTNING_GLOBALS)}"
        )


def _pickle_module(source):
    """What `torch.load(pickle_module=...)` needs: an `Unpickler` class (and `load` for the legacy format)."""

    unpickler = type("RestrictedUnpickler", (RestrictedUnpickler,), {"source": str(source)})

    class Module:
        Unpickler = unpickler
        __name__ = "hf_vlp_restricted_pickle"

        @staticmethod
        def load(file, **kwargs):
            return unpickler(file, **kwargs).load()

    return Module


def load_lightning_checkpoint(path) -> dict:
    """The top-level dict of a Lightning `.ckpt` (`state_dict`, `hyper_parameters`, `callbacks`, ...), loaded with
    `RestrictedUnpickler` (module docstring); tensors on CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if is_torchscript_archive(path):  # torch.load(weights_only=False) would hand it to torch.jit.load, which runs it
        raise ConversionError(f"{path} is a TorchScript archive, not a Lightning checkpoint")
    data = path.read_bytes()
    try:
        checkpoint = torch.load(
            io.BytesIO(data), map_location="cpu", weights_only=False, pickle_module=_pickle_module(path)
        )
    except ConversionError:
        raise
    except Exception as error:
        raise ConversionError(f"{path} is not a readable PyTorch / Lightning checkpoint: {error}") from error
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path}: expected a Lightning checkpoint dict, got {type(checkpoint).__name__}")
    return checkpoint


__all__ = ["LIGHTNING_GLOBALS", "LightningPlaceholder", "RestrictedUnpickler", "load_lightning_checkpoint"]
