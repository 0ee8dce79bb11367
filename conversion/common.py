"""The converter frame shared by every architecture: load an original checkpoint, map its keys with a declarative
table, refuse unknown keys, and verify a converted model against outputs saved from the original code.

An architecture module (`hf_vlp.conversion.<arch>`) provides
  * `convert(checkpoint, config=None, **options) -> PreTrainedModel`
  * `fixture_outputs(model, fixture_dir) -> dict[name, Tensor | Skipped]` for `--verify`
and uses `KeyMap` for the mapping.
"""

import json
import os
import re
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
        raise ConversionError(f"the checkpoint lacks {len(missing)} parameter(s) of {type(model).__name__}: {missing[:20]}")
    if result.unexpected_keys:
        raise ConversionError(
            f"mapped keys that {type(model).__name__} does not have (wrong architecture?): {result.unexpected_keys[:20]}"
        )
    model.tie_weights()
    return model


def parse_option_values(options: dict) -> dict:
    """`--option key=value` strings from the CLI become JSON values (numbers, booleans, lists) where they parse."""
    parsed = {}
    for key, value in options.items():
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # a plain string value
        parsed[key] = value
    return parsed


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


def compare_outputs(ours: dict, reference: dict, atol=1e-4, rtol=0.0, print_fn=print) -> bool:
    """Print `<name>: max_abs_diff=<v> ok|FAIL` or `<name>: skipped (<reason>)` for every reference output.

    Returns False if any output differs beyond `atol + rtol * |ref|`, has another shape, or is not produced.
    """
    success = True
    for name in sorted(reference):
        expected = reference[name]
        produced = ours.get(name)
        if isinstance(produced, Skipped):
            print_fn(f"{name}: skipped ({produced.reason})")
            continue
        if produced is None:
            print_fn(f"{name}: FAIL (not produced by the converted model)")
            success = False
            continue
        valid, note = None, ""
        if isinstance(produced, Masked):
            valid, note = produced.valid.bool().cpu(), f" ({produced.reason})"
            produced = produced.value
        produced = produced.detach().float().cpu()
        expected = expected.float()
        if produced.shape != expected.shape:
            print_fn(f"{name}: FAIL (shape {tuple(produced.shape)} != reference {tuple(expected.shape)})")
            success = False
            continue
        diff = (produced - expected).abs()
        if valid is not None:
            valid = valid.reshape(*valid.shape, *([1] * (diff.dim() - valid.dim()))).expand_as(diff)
            diff, expected = diff[valid], expected[valid]
        max_diff = diff.max().item() if diff.numel() else 0.0
        ok = bool((diff <= atol + rtol * expected.abs()).all())
        success &= ok
        print_fn(f"{name}: max_abs_diff={max_diff:.3e} {'ok' if ok else 'FAIL'}{note}")
    return success


def verify(module, model, fixture_dir, atol=1e-4, rtol=0.0, print_fn=print) -> bool:
    """Run an architecture module's `fixture_outputs` and compare with `fixture_dir/outputs.safetensors`."""
    from safetensors.torch import load_file

    fixture_dir = Path(fixture_dir)
    reference = load_file(fixture_dir / "outputs.safetensors")
    model.eval()
    with torch.no_grad():
        ours = module.fixture_outputs(model, fixture_dir)
    return compare_outputs(ours, reference, atol=atol, rtol=rtol, print_fn=print_fn)
