"""The converter frame shared by every architecture: load an original checkpoint without running foreign code, map
its keys with a declarative table, refuse unknown keys and unknown options, verify a converted model against outputs
saved from the original code, and save it without touching files the conversion did not write.

An architecture module (`hf_vlp.conversion.<arch>`) provides
  * `convert(checkpoint, config=None, **options) -> PreTrainedModel`, whose keyword parameters are its options; it
    passes any other keyword to `check_options` (with `CONFIG_OVERRIDES`, a config class, where options may override
    config fields);
  * `fixture_outputs(model, fixture_dir) -> dict[name, Tensor | Masked | Skipped]` for `--verify`;
  * optionally `VERIFY_ATOL` / `VERIFY_RTOL`: the tolerances its fixture README justifies;
and uses `KeyMap` for the mapping.
"""

import collections
import difflib
import hashlib
import inspect
import json
import os
import pickle
import pkgutil
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

WRAPPER_KEYS = ("model_state", "model_state_dict", "state_dict", "model", "module", "network")


class ConversionError(ValueError):
    """A checkpoint that does not fit the converter: unknown keys, missing keys, wrong architecture."""


def load_checkpoint(path, upcast=True) -> dict:
    """Load a PyTorch checkpoint (zip or legacy serializer) as a flat `{name: tensor}` dict on CPU.

    Unwraps `{'model_state': ...}`-style wrappers and a leading `module.` (DataParallel/DDP) prefix, and upcasts
    fp16/bf16 tensors to fp32 (original releases were often saved from apex AMP O2 models).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    elif is_torchscript_archive(path):
        raise ConversionError(
            f"{path} is a TorchScript archive, not a state dict; this converter does not read TorchScript (loading it "
            "with torch.jit.load would run the code inside it)"
        )
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a pickle with non-tensor objects (e.g. argparse Namespace in a Lightning ckpt)
            raise ConversionError(
                f"{path} cannot be loaded with weights_only=True ({error}); the converter for this format must "
                "parse it explicitly"
            ) from error
    while isinstance(state, dict) and not any(torch.is_tensor(v) for v in state.values()):
        wrapper = next((k for k in WRAPPER_KEYS if k in state), None)
        if wrapper is None:
            raise ConversionError(f"{path}: no tensors found; top-level keys are {sorted(state)[:10]}")
        state = state[wrapper]
    state = {k: v for k, v in state.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if upcast:
        state = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()}
    return state


# ------------------------------------------------------------------------------------------------------------------
# TorchScript archives, read without running them
# ------------------------------------------------------------------------------------------------------------------

# `torch.<X>Storage` names a TorchScript pickle uses for its tensor storages
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}


def _identity_list(data, *_):
    return data


# every global a TorchScript module state needs besides its own `__torch__.*` classes; each only builds data
_ARCHIVE_GLOBALS = {
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "collections.OrderedDict": collections.OrderedDict,
    # torch.jit._pickle's helpers return their argument unchanged (type tags for TorchScript's own unpickler)
    **{
        f"torch.jit._pickle.{name}": _identity_list
        for name in ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist", "restore_type_tag")
    },
}


@dataclass
class _ScriptClass:
    """What an archive's `code/` says about one TorchScript class (read as text, never compiled)."""

    qualified_name: str
    is_module: bool
    parameters: list[str]
    buffers: list[str]
    custom_setstate: bool


class _ArchivedObject:
    """Inert stand-in for an instance of a `__torch__.*` class: unpickling only records its state, no method of the
    archive runs."""

    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self._args = args

    def __setstate__(self, state):
        self._state = state


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles `data.pkl` of a TorchScript archive: tensors come from the archive's `data/<key>` records, `__torch__`
    classes become `_ArchivedObject`s, and every other global is refused."""

    def __init__(self, handle, archive: zipfile.ZipFile, prefix: str, path):
        super().__init__(handle)
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages, self.objects, self.placeholders = {}, [], {}

    def find_class(self, module, name):
        key = f"{module}.{name}"
        if key in _ARCHIVE_GLOBALS:
            return _ARCHIVE_GLOBALS[key]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "__torch__" or module.startswith("__torch__."):
            if key not in self.placeholders:
                objects = self.objects

                def record(cls, *args, **kwargs):
                    instance = object.__new__(cls)
                    objects.append(instance)
                    return instance

                self.placeholders[key] = type(name, (_ArchivedObject,), {"qualified_name": key, "__new__": record})
            return self.placeholders[key]
        raise ConversionError(
            f"{self.path}: the TorchScript archive's data.pkl refers to {key}, which a module state never needs; "
            "refusing to load it (nothing was executed)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise ConversionError(f"{self.path}: unexpected persistent id {pid!r} in the archive's data.pkl")
        _, dtype, key, _location, numel = pid
        if key not in self.storages:
            record = f"{self.prefix}data/{key}"
            try:
                data = self.archive.read(record)
            except KeyError as error:
                raise ConversionError(f"{self.path}: the archive lacks the tensor record {record}") from error
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(data) < numel * itemsize:
                raise ConversionError(f"{self.path}: {record} holds {len(data)} bytes, fewer than {numel} x {dtype}")
            flat = torch.empty(0, dtype=dtype)
            if numel:
                flat = torch.frombuffer(bytearray(data[: numel * itemsize]), dtype=dtype)
            self.storages[key] = torch.storage.TypedStorage(
                wrap_storage=flat.untyped_storage(), dtype=dtype, _internal=True
            )
        return self.storages[key]


def is_torchscript_archive(path) -> bool:
    """A TorchScript zip holds `<name>/constants.pkl` (and code/); a `torch.save` zip does not."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())


def _script_classes(archive: zipfile.ZipFile, prefix: str) -> dict:
    """`{qualified name: _ScriptClass}` from the archive's `code/__torch__/**.py` text (TorchScript's own source
    listing: `class X(Module):` with `__parameters__ = [...]` and `__buffers__ = [...]`)."""
    classes = {}
    for name in archive.namelist():
        if not (name.startswith(f"{prefix}code/") and name.endswith(".py")):
            continue
        module = name[len(f"{prefix}code/") : -len(".py")].replace("/", ".")
        source = archive.read(name).decode("utf-8", errors="replace")
        for block in re.split(r"^(?=class )", source, flags=re.MULTILINE):
            header = re.match(r"class (\w+)\((\w*)\):", block)
            if header is None:
                continue
            lists = {}
            for kind in ("__parameters__", "__buffers__"):
                found = re.search(rf"^\s+{kind} = \[(.*?)\]", block, flags=re.MULTILINE)
                lists[kind] = re.findall(r'"([^"]*)"', found.group(1)) if found else []
            classes[f"{module}.{header.group(1)}"] = _ScriptClass(
                qualified_name=f"{module}.{header.group(1)}",
                is_module=header.group(2) == "Module",
                parameters=lists["__parameters__"],
                buffers=lists["__buffers__"],
                custom_setstate=re.search(r"^\s+def __setstate__\(", block, flags=re.MULTILINE) is not None,
            )
    return classes


def load_torchscript_state(path) -> dict:
    """The parameters and buffers of a TorchScript archive (what `torch.jit.load(path).state_dict()` returns, in the
    same order and dtypes) WITHOUT running the archive: `torch.jit.load` restores every object by executing the
    archive's TorchScript code, including any custom `__setstate__`, which can read files or build tensors from
    anything. Here the archive is read as data: `data.pkl` goes through a restricted unpickler (tensor rebuild
    functions, storage types, OrderedDict and inert `__torch__` placeholders; anything else is refused), the tensors
    come from the `data/<key>` records, and which attributes are parameters or buffers is read from the class
    listings in `code/`. An object whose class defines its own `__setstate__` (its state means whatever that code
    makes of it) or that has no listing is refused with an error naming the class."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("data.pkl") and name.count("/") <= 1]
        if len(pickles) != 1:
            raise ConversionError(f"{path}: expected one <archive>/data.pkl in the TorchScript zip, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names:
            order = archive.read(f"{prefix}byteorder").decode().strip()
            if order != sys.byteorder:
                raise ConversionError(
                    f"{path}: tensors are stored {order}-endian, this machine is {sys.byteorder}-endian"
                )
        classes = _script_classes(archive, prefix)
        with archive.open(pickles[0]) as handle:
            unpickler = _ArchiveUnpickler(handle, archive, prefix, path)
            root = unpickler.load()
    for instance in unpickler.objects:
        script_class = classes.get(instance.qualified_name)
        if script_class is None:
            raise ConversionError(
                f"{path}: {instance.qualified_name} has no TorchScript listing in the archive (a native class restored "
                "by its own code); refusing to read the archive"
            )
        if script_class.custom_setstate or not isinstance(getattr(instance, "_state", None), dict):
            raise ConversionError(
                f"{path}: {instance.qualified_name} restores itself with a custom __setstate__, i.e. by running code "
                "stored in the archive; hf_vlp did not run it and will not read its state. Only if you trust this "
                "file, convert it with the option trust_torchscript=true (torch.jit.load, which executes that code)"
            )
    if not isinstance(root, _ArchivedObject):
        raise ConversionError(f"{path}: the TorchScript archive's data.pkl holds a {type(root).__name__}, not a module")
    state = {}
    _collect_module_tensors(root, "", classes, state)
    return state


def _collect_module_tensors(instance, prefix, classes, state):
    script_class = classes[instance.qualified_name]
    attributes = instance._state
    for name in script_class.parameters + script_class.buffers:
        value = attributes.get(name)
        if torch.is_tensor(value):
            state[prefix + name] = value.detach()  # as `state_dict()` returns parameters
        elif value is not None:
            raise ConversionError(
                f"{instance.qualified_name}.{name} is listed as a parameter or buffer but is a {type(value).__name__}"
            )
    for name, value in attributes.items():
        if isinstance(value, _ArchivedObject) and classes[value.qualified_name].is_module:
            _collect_module_tensors(value, f"{prefix}{name}.", classes, state)


@dataclass
class KeyMap:
    """Declarative key mapping: ordered `(pattern, replacement)` renames (first match wins), `(pattern, reason)`
    drops, and `{new_key: function}` value transforms. Every original key must be renamed or dropped."""

    renames: list[tuple[str, str]]
    drops: list[tuple[str, str]] = field(default_factory=list)
    transforms: dict = field(default_factory=dict)

    def apply(self, state: dict) -> tuple[dict, dict]:
        """Returns (mapped state dict, {dropped key: reason}); raises `ConversionError` on unknown keys."""
        mapped, dropped, unknown = {}, {}, []
        for key, value in state.items():
            key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))  # old BERT LayerNorm names
            reason = next((why for pattern, why in self.drops if re.search(pattern, key)), None)
            if reason is not None:
                dropped[key] = reason
                continue
            for pattern, replacement in self.renames:
                if re.search(pattern, key):
                    new_key = re.sub(pattern, replacement, key)
                    mapped[new_key] = self.transforms.get(new_key, lambda t: t)(value)
                    break
            else:
                unknown.append(key)
        if unknown:
            raise ConversionError(
                f"{len(unknown)} checkpoint key(s) are neither mapped nor deliberately dropped: {unknown[:20]}"
            )
        return mapped, dropped


def load_mapped_state(model, mapped: dict, allow_missing=()):
    """Load a mapped state dict; missing keys other than tied ones and `allow_missing` patterns are an error."""
    result = model.load_state_dict(mapped, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in result.missing_keys if k not in tied and not any(re.search(p, k) for p in allow_missing)]
    if missing:
        raise ConversionError(
            f"the checkpoint lacks {len(missing)} parameter(s) of {type(model).__name__}: {missing[:20]}"
        )
    if result.unexpected_keys:
        raise ConversionError(
            f"mapped keys that {type(model).__name__} does not have (wrong architecture?): {result.unexpected_keys[:20]}"
        )
    model.tie_weights()
    return model


# ------------------------------------------------------------------------------------------------------------------
# converters and their options
# ------------------------------------------------------------------------------------------------------------------

# modules of this package that are not converters
HELPER_MODULES = ("common", "paddle_format")


def converter_names() -> list[str]:
    """The architectures `hf-vlp convert ARCH` knows: every converter module of this package."""
    package = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(package)]) if m.name not in HELPER_MODULES)


def load_converter(arch: str):
    """The converter module `hf_vlp.conversion.<arch>`; an unknown `arch` is a ValueError listing the known ones."""
    known = converter_names()
    if arch not in known:
        close = difflib.get_close_matches(str(arch), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown architecture {arch!r} for conversion{hint}; known architectures: {', '.join(known)}")
    import importlib

    return importlib.import_module(f"{__package__}.{arch}")


def parse_option_values(options: dict) -> dict:
    """`--option key=value` strings become JSON values (numbers, booleans, lists, null) where they parse."""
    parsed = {}
    for key, value in options.items():
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # a plain string value
        parsed[key] = value
    return parsed


def parse_option_strings(pairs) -> dict:
    """`["key=value", ...]` (repeated `--option`) -> `{key: JSON value or string}`; a pair without `=`, an empty key or
    a key given twice is a ValueError."""
    options = {}
    for pair in pairs:
        key, separator, value = str(pair).partition("=")
        key = key.strip()
        if not separator or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        if key in options:
            raise ValueError(f"--option {key} is given twice")
        options[key] = value
    return parse_option_values(options)


def _declared_options(convert) -> list[str]:
    parameters = inspect.signature(convert).parameters.values()
    return [
        p.name
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("checkpoint", "config")
    ]


def _config_fields(config_class) -> list[str]:
    internal = ("_name_or_path", "architectures", "model_type", "transformers_version")
    return sorted(k for k in config_class().to_dict() if k not in internal)


def check_options(convert, options: dict, config_class=None) -> dict:
    """The one rule for converter options, used by every converter on its `**options` and by `hf-vlp convert` on
    `--option` before it loads anything: a name must be a keyword parameter of `convert` or, where the converter
    accepts config overrides (`config_class`), a field of that config. Anything else is a ValueError naming the option,
    suggesting the closest valid name and listing the valid ones. Returns the options with string values parsed as
    JSON where they parse."""
    declared = _declared_options(convert)
    fields = _config_fields(config_class) if config_class is not None else []
    unknown = [name for name in options if name not in declared and name not in fields]
    if unknown:
        arch = convert.__module__.rpartition(".")[2]
        name = unknown[0]
        close = difflib.get_close_matches(name, declared + fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        valid = [", ".join(declared)] if declared else []
        if fields:
            valid.append(f"any {config_class.__name__} field to override: {', '.join(fields)}")
        valid = f"valid options: {'; or '.join(valid)}" if valid else "it takes no options"
        more = f" (and {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else ""
        raise ValueError(f"unknown option {name!r}{more} for the {arch} converter{hint}; {valid}")
    return parse_option_values(options)


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


# ------------------------------------------------------------------------------------------------------------------
# verification against outputs saved from the original implementation
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class Skipped:
    reason: str


@dataclass
class Masked:
    """An output compared only where `valid` is True (broadcast over trailing dims), for fixtures whose README marks
    some rows as not comparable (e.g. padding rows the original computes with an all-masked attention row)."""

    value: torch.Tensor
    valid: torch.Tensor
    reason: str = "padding rows not compared"


def fixture_root() -> Path:
    """`HF_VLP_FIXTURES`, else `../shared/fixtures` next to the repository."""
    env = os.environ.get("HF_VLP_FIXTURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@dataclass
class OutputCheck:
    """One reference output: `status` is "ok", "FAIL" or "skipped"; `elements` counts the entries compared."""

    name: str
    status: str
    max_abs_diff: float | None = None
    elements: int = 0
    note: str = ""

    def line(self) -> str:
        if self.status == "skipped":
            return f"{self.name}: skipped ({self.note})"
        if self.max_abs_diff is None:
            return f"{self.name}: FAIL ({self.note})"
        note = f" ({self.note})" if self.note else ""
        return f"{self.name}: max_abs_diff={self.max_abs_diff:.3e} {self.status}{note}"


@dataclass
class VerificationReport:
    """The result of comparing a converted model with a fixture. It passes only if at least one output was compared
    (on at least one entry) and none failed; `bool(report)` is that verdict."""

    fixture: str  # the fixture folder's name (never a local path: it goes into model cards)
    atol: float
    rtol: float
    checks: list[OutputCheck] = field(default_factory=list)

    @property
    def compared(self) -> list[OutputCheck]:
        return [c for c in self.checks if c.status != "skipped" and c.max_abs_diff is not None and c.elements > 0]

    @property
    def failed(self) -> list[OutputCheck]:
        return [c for c in self.checks if c.status == "FAIL"]

    @property
    def skipped(self) -> list[OutputCheck]:
        return [c for c in self.checks if c.status == "skipped"]

    @property
    def passed(self) -> bool:
        return bool(self.compared) and not self.failed

    def __bool__(self) -> bool:
        return self.passed

    @property
    def rule(self) -> str:
        return f"|ours - original| <= atol + rtol * |original| with atol={self.atol:g}, rtol={self.rtol:g}"

    def summary(self) -> str:
        """One line: the verdict and why."""
        counts = f"{len(self.compared)} of {len(self.checks)} outputs compared, {len(self.skipped)} skipped"
        if not self.checks:
            return f"verification FAILED: the fixture {self.fixture!r} has no outputs"
        if not self.compared:
            return f"verification FAILED: no output was compared ({counts})"
        if self.failed:
            names = ", ".join(c.name for c in self.failed[:5]) + (" ..." if len(self.failed) > 5 else "")
            return f"verification FAILED: {len(self.failed)} output(s) outside tolerance or missing: {names} ({counts})"
        worst = max(self.compared, key=lambda c: c.max_abs_diff)
        return f"verification ok: {counts}; worst {worst.name} max abs diff {worst.max_abs_diff:.3e}; {self.rule}"

    def card_text(self) -> str:
        """Markdown for a model card: exactly what was compared, with which tolerance, against which fixture."""
        if not self.passed:
            raise ValueError(f"a failed verification does not go into a model card: {self.summary()}")
        rows = "".join(f"| `{c.name}` | {c.max_abs_diff:.2e} |\n" for c in self.compared)
        text = (
            f"Verified against the parity fixture `{self.fixture}` (outputs of the original code on the same inputs, "
            f"`hf-vlp convert --verify`): {len(self.compared)} outputs compared, each within {self.rule}.\n\n"
            f"| output | max abs diff |\n| --- | --- |\n{rows}"
        )
        reasons = {}
        for check in self.skipped:
            reasons.setdefault(check.note, []).append(f"`{check.name}`")
        for reason, names in reasons.items():
            text += f"\nNot compared ({reason}): {', '.join(names)}.\n"
        return text


def compare_outputs(ours: dict, reference: dict, atol=1e-4, rtol=0.0, print_fn=print, fixture="?"):
    """Print `<name>: max_abs_diff=<v> ok|FAIL` or `<name>: skipped (<reason>)` for every reference output.

    An output fails if it differs anywhere beyond `atol + rtol * |ref|` (NaN fails), has another shape, or is not
    produced. Returns a `VerificationReport`, true only if at least one output was compared and none failed.
    """
    report = VerificationReport(fixture=fixture, atol=float(atol), rtol=float(rtol))
    for name in sorted(reference):
        check = _compare_one(name, ours.get(name), reference[name], atol, rtol)
        report.checks.append(check)
        print_fn(check.line())
    return report


def _compare_one(name, produced, expected, atol, rtol) -> OutputCheck:
    if isinstance(produced, Skipped):
        return OutputCheck(name, "skipped", note=produced.reason)
    if produced is None:
        return OutputCheck(name, "FAIL", note="not produced by the converted model")
    valid, note = None, ""
    if isinstance(produced, Masked):
        valid, note = produced.valid.bool().cpu(), produced.reason
        produced = produced.value
    produced = produced.detach().float().cpu()
    expected = expected.float()
    if produced.shape != expected.shape:
        return OutputCheck(name, "FAIL", note=f"shape {tuple(produced.shape)} != reference {tuple(expected.shape)}")
    diff = (produced - expected).abs()
    if valid is not None:
        valid = valid.reshape(*valid.shape, *([1] * (diff.dim() - valid.dim()))).expand_as(diff)
        diff, expected = diff[valid], expected[valid]
    if diff.numel() == 0:
        return OutputCheck(name, "skipped", note="no entry to compare" + (f": {note}" if note else ""))
    max_diff = diff.max().item()
    ok = bool((diff <= atol + rtol * expected.abs()).all())
    return OutputCheck(name, "ok" if ok else "FAIL", max_abs_diff=max_diff, elements=diff.numel(), note=note)


def verify(module, model, fixture_dir, atol=None, rtol=None, print_fn=print) -> VerificationReport:
    """Run an architecture module's `fixture_outputs` and compare with `fixture_dir/outputs.safetensors`, with the
    module's `VERIFY_ATOL` / `VERIFY_RTOL` (defaults 1e-4 / 0) unless given. Prints one line per output, then the
    summary; returns the `VerificationReport`."""
    from safetensors.torch import load_file

    fixture_dir = Path(fixture_dir)
    outputs = fixture_dir / "outputs.safetensors"
    if not outputs.is_file():
        raise FileNotFoundError(f"--verify: {outputs} does not exist (a fixture folder holds outputs.safetensors)")
    atol = getattr(module, "VERIFY_ATOL", 1e-4) if atol is None else atol
    rtol = getattr(module, "VERIFY_RTOL", 0.0) if rtol is None else rtol
    reference = load_file(outputs)
    model.eval()
    with torch.no_grad():
        ours = module.fixture_outputs(model, fixture_dir)
    name = fixture_dir.resolve().name
    report = compare_outputs(ours, reference, atol=atol, rtol=rtol, print_fn=print_fn, fixture=name)
    print_fn(report.summary())
    return report


# ------------------------------------------------------------------------------------------------------------------
# saving: never into the inputs, never over files the conversion did not write
# ------------------------------------------------------------------------------------------------------------------

# a record of the files a conversion wrote (name -> sha256), kept in the output folder so that a later `--overwrite`
# may remove weight files of that earlier save which the new one no longer writes (and nothing else)
MANIFEST_NAME = ".hf_vlp_conversion.json"
WEIGHT_FILE = re.compile(
    r"^(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)$|^(model\.safetensors|pytorch_model\.bin)\.index\.json$"
)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_folder(output, inputs=(), overwrite=False) -> Path:
    """Refuse an output folder that would lose data; returns it resolved.

    * never (not even with `overwrite`) a folder that is, contains or is inside an input folder (a folder checkpoint,
      a fixture, a tokenizer folder), nor one that contains an input file: the conversion would write `config.json`,
      `README.md` ... over the original's files. A single-file checkpoint's folder may hold a new output subfolder.
    * an existing non-empty folder only with `overwrite`; an existing file never.
    """
    output = Path(output).expanduser().resolve()
    for source in inputs:
        if source is None:
            continue
        source = Path(source).expanduser().resolve()
        if not source.exists():
            continue
        if source.is_dir() and (_inside(output, source) or _inside(source, output)):
            relation = "is" if output == source else "is inside" if _inside(output, source) else "contains"
            raise ValueError(f"--output {output} {relation} the input folder {source}: choose a folder outside it")
        if source.is_file() and _inside(source, output):
            raise ValueError(f"--output {output} contains the input file {source}: choose another folder")
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is an existing file, not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        present = sorted(p.name for p in output.iterdir())
        listing = ", ".join(present[:8]) + (" ..." if len(present) > 8 else "")
        raise ValueError(
            f"--output {output} is not empty ({listing}); choose an empty or new folder, or pass --overwrite to "
            "replace the files this conversion writes there (nothing else is touched)"
        )
    return output


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def save_converted(model, processor, output, inputs=(), overwrite=False, print_fn=print, **card) -> Path:
    """`hub.save_for_hub` into a new temporary sibling of `output`, then move the result into place.

    `output` must pass `check_output_folder(output, inputs, overwrite)`. A new or empty folder receives the
    temporary folder whole. With `overwrite`, each file the conversion wrote replaces the file of the same name;
    files it did not write stay, except weight shards / indexes that an earlier hf_vlp conversion recorded in
    `.hf_vlp_conversion.json` and that are unchanged since (same sha256): those would otherwise mix with the new
    weights, so they are removed. Any other weight file the new save does not replace is a conflict: nothing is
    moved and a ValueError says which files to remove. If anything fails, the output folder is as it was.
    """
    from hf_vlp.hub import save_for_hub

    output = check_output_folder(output, inputs, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".hf_vlp-partial", dir=output.parent))
    try:
        save_for_hub(model, processor, staging, **card)
        written = _files_under(staging)
        manifest = {"written_by": "hf-vlp convert", "files": {name: _sha256(staging / name) for name in written}}
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if not output.exists() or not any(output.iterdir()):
            if output.exists():
                output.rmdir()
            os.rename(staging, output)
            return output
        _merge_into(staging, output, written, print_fn)
        return output
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _merge_into(staging: Path, output: Path, written: list[str], print_fn):
    """The `--overwrite` move (see `save_converted`): check every conflict first, then move, then clean up."""
    previous = {}
    if (output / MANIFEST_NAME).is_file():
        try:
            previous = json.loads((output / MANIFEST_NAME).read_text()).get("files", {})
        except (json.JSONDecodeError, AttributeError):
            previous = {}
    existing = _files_under(output)
    new = set(written) | {MANIFEST_NAME}
    for name in new:  # a file where a folder is, or the other way round
        for parent in Path(name).parents:
            if str(parent) != "." and (output / parent).exists() and not (output / parent).is_dir():
                raise ValueError(f"--overwrite: {output / parent} is a file where the conversion writes a folder")
        if (output / name).is_dir():
            raise ValueError(f"--overwrite: {output / name} is a folder where the conversion writes a file")
    stale_weights = [name for name in existing if WEIGHT_FILE.match(name) and name not in new]
    removable = [name for name in stale_weights if previous.get(name) == _sha256(output / name)]
    foreign = sorted(set(stale_weights) - set(removable))
    if foreign:
        raise ValueError(
            f"--overwrite: {output} holds weight files that this conversion does not replace and that no earlier "
            f"hf_vlp conversion recorded there: {foreign}; transformers could load them instead of (or mixed with) the "
            "new weights. Remove them yourself or choose an empty --output; nothing was changed"
        )
    for name in written + [MANIFEST_NAME]:
        target = output / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, target)
    for name in removable:
        (output / name).unlink()
    kept = sorted(set(existing) - new - set(removable))
    if removable:
        print_fn(f"removed weight files of the previous hf_vlp conversion that this one does not write: {removable}")
    if kept:
        print_fn(f"left untouched (not written by this conversion): {', '.join(kept)}")
