"""What CPT needs from a masked-LM vision-language model, and where each architecture keeps it.

CPT scores with a pretraining model's own heads: the text hidden states of its encoder, its masked-LM head, and (for
VCR) its image-text matching head. For most architectures that is a matter of attribute names, so an adapter is
data: a `CptAdapterSpec`, registered under the architecture name (= `config.model_type` in hf_vlp) and looked up
with `get_cpt_adapter(name)`. An architecture whose model does not fit the spec registers a `CptAdapter` subclass
instead (`@register_adapter("<name>")`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

MODEL_INPUT_NAMES = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "visual_feats",
    "visual_pos",
    "visual_attention_mask",
)
MATCHING_CLASS_MEANINGS = ("match", "mismatch")


class CptAdapter:
    """What CPT needs from a masked-LM VL model. Inputs use hf_vlp's vocabulary (docs/design.md): `input_ids`,
    `attention_mask`, `token_type_ids` (B, T), `visual_feats` (B, R, D), `visual_pos` (B, R, 4) normalized boxes,
    `visual_attention_mask` (B, R)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def text_hidden_states(self, inputs: dict) -> torch.Tensor:
        """(B, T, H) final hidden states of the text positions."""
        raise NotImplementedError

    def mlm_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (..., V) from hidden states (..., H)."""
        raise NotImplementedError

    def match_probability(self, inputs: dict) -> torch.Tensor:
        """(B,) probability that the text belongs to the image (the pretraining matching head)."""
        raise NotImplementedError(f"{type(self).__name__} has no image-text matching head")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass(frozen=True)
class CptAdapterSpec:
    """Where CPT finds its parts in an architecture's pretraining model (e.g. `UniterForPreTraining`).

    Args:
        encoder: attribute holding the encoder; called with hf_vlp's inputs it returns an output with `text_output`
            (B, T, H) and `pooled_output` (B, H).
        mlm_head: attribute of the masked-LM head, hidden states (..., H) -> vocabulary logits (..., V).
        matching_head: attribute of the image-text matching head on the pooled output (None: the model has none).
        matching_class: the softmax class of the matching head that CPT reads.
        matching_class_meaning: "match" (the answer's score is p[class]) or "mismatch" (1 - p[class]: Oscar+'s
            class 1 means "text_b does not belong to text_a and the image", `vcr_nsp_cpt.py`).
        text_output, pooled_output: the encoder output's fields.

    Calling a spec with a model gives its `CptAdapter`.
    """

    encoder: str
    mlm_head: str = "mlm_head"
    matching_head: str | None = None
    matching_class: int = 1
    matching_class_meaning: str = "match"
    text_output: str = "text_hidden_state"
    pooled_output: str = "pooler_output"

    def __post_init__(self):
        if self.matching_class_meaning not in MATCHING_CLASS_MEANINGS:
            raise ValueError(
                f"`matching_class_meaning` must be one of {MATCHING_CLASS_MEANINGS}, "
                f"got {self.matching_class_meaning!r}."
            )
        if int(self.matching_class) < 0:
            raise ValueError(f"`matching_class` must be a class index >= 0, got {self.matching_class}.")

    def __call__(self, model: nn.Module) -> CptAdapter:
        return SpecAdapter(model, self)


def _model_inputs(inputs: dict, device) -> dict:
    missing = [n for n in ("input_ids", "visual_feats", "visual_pos") if inputs.get(n) is None]
    if missing:
        raise ValueError(f"CPT model inputs lack {missing}; expected the keys {MODEL_INPUT_NAMES}.")
    return {n: inputs[n].to(device) for n in MODEL_INPUT_NAMES if inputs.get(n) is not None}


def _submodule(model, name: str, what: str):
    module = getattr(model, name, None)
    if module is None:
        raise ValueError(
            f"{type(model).__name__} has no {what} `{name}`; CPT needs the pretraining model with its masked-LM "
            "head (e.g. AutoModelForPreTraining)."
        )
    return module


class SpecAdapter(CptAdapter):
    """The `CptAdapter` a `CptAdapterSpec` describes (subclasses may set the class attribute `spec`)."""

    spec: CptAdapterSpec | None = None

    def __init__(self, model: nn.Module, spec: CptAdapterSpec | None = None):
        super().__init__(model)
        self.spec = spec if spec is not None else type(self).spec
        if self.spec is None:
            raise ValueError(f"{type(self).__name__} needs a `spec` (CptAdapterSpec).")

    def _encode(self, inputs: dict):
        encoder = _submodule(self.model, self.spec.encoder, "encoder")
        return encoder(**_model_inputs(inputs, self.device))

    def text_hidden_states(self, inputs):
        return getattr(self._encode(inputs), self.spec.text_output)

    def mlm_logits(self, hidden_states):
        return _submodule(self.model, self.spec.mlm_head, "masked-LM head")(hidden_states)

    def match_probability(self, inputs):
        if self.spec.matching_head is None:
            return super().match_probability(inputs)
        pooled = getattr(self._encode(inputs), self.spec.pooled_output)
        logits = _submodule(self.model, self.spec.matching_head, "image-text matching head")(pooled)
        probability = logits.float().softmax(-1)[:, self.spec.matching_class]
        return probability if self.spec.matching_class_meaning == "match" else 1.0 - probability


CptAdapterFactory = CptAdapterSpec | type[CptAdapter]

# Architecture name (= config.model_type) -> its adapter: a `CptAdapterSpec` or a `CptAdapter` subclass.
ADAPTERS: dict[str, CptAdapterFactory] = {
    # UniterForPreTraining: ITM head class 1 = matched
    "uniter": CptAdapterSpec(encoder="uniter", mlm_head="mlm_head", matching_head="itm_head"),
    # OscarForPreTraining (Oscar / VinVL): the contrastive head's class 1 = "polluted"; CPT's VCR score is
    # 1 - softmax(logits)[1] (`vcr_nsp_cpt.py`)
    "oscar": CptAdapterSpec(
        encoder="oscar",
        mlm_head="mlm_head",
        matching_head="contrastive_head",
        matching_class=1,
        matching_class_meaning="mismatch",
    ),
}


def register_cpt_adapter(arch_name: str, adapter: CptAdapterFactory) -> None:
    """Use `adapter` (a `CptAdapterSpec` or a `CptAdapter` subclass) for the architecture `arch_name`."""
    if not isinstance(adapter, CptAdapterSpec) and not (isinstance(adapter, type) and issubclass(adapter, CptAdapter)):
        raise ValueError(f"a CPT adapter must be a CptAdapterSpec or a CptAdapter subclass, got {adapter!r}.")
    ADAPTERS[arch_name] = adapter


def register_adapter(*arch_names: str):
    """Class decorator: use this `CptAdapter` subclass for the architectures `arch_names` (config.model_type)."""

    def wrap(cls):
        for name in arch_names:
            register_cpt_adapter(name, cls)
        return cls

    return wrap


def get_cpt_adapter(arch_name: str) -> CptAdapterFactory:
    """The registered adapter of an architecture: a `CptAdapterSpec` or a `CptAdapter` subclass; calling it with a
    model gives the model's `CptAdapter`."""
    if arch_name not in ADAPTERS:
        raise ValueError(
            f"no CPT adapter for architecture {arch_name!r}; registered: {sorted(ADAPTERS)}. Register a "
            "CptAdapterSpec with `register_cpt_adapter(name, spec)` or decorate a CptAdapter subclass with "
            "`@register_adapter(name)`."
        )
    return ADAPTERS[arch_name]


def adapter_for(model) -> CptAdapter:
    """The `CptAdapter` of a model (found by its architecture, `config.model_type`), or the model itself if it is
    one."""
    if isinstance(model, CptAdapter):
        return model
    from hf_vlp.registry import ARCHITECTURES
    from hf_vlp.spec import resolve

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    # an adapter registered here wins; else the one the architecture's spec names (`cpt_adapter`)
    by_spec = {spec.model_type: spec.cpt_adapter for spec in ARCHITECTURES.values() if spec.cpt_adapter}
    if model_type not in ADAPTERS and model_type not in by_spec:
        raise ValueError(
            f"no CPT adapter for model_type {model_type!r} ({type(model).__name__}); registered: "
            f"{sorted(set(ADAPTERS) | set(by_spec))}. Name one in the architecture's spec (`cpt_adapter`), register "
            "a CptAdapterSpec with `register_cpt_adapter(model_type, spec)` or decorate a CptAdapter subclass with "
            "`@register_adapter(model_type)`."
        )
    if model_type in ADAPTERS:
        return ADAPTERS[model_type](model)
    return resolve(by_spec[model_type])(model)


class UniterAdapter(SpecAdapter):
    """`UniterForPreTraining`: encoder `uniter`, MLM head `mlm_head`, ITM head `itm_head` (class 1 = matched)."""

    spec = ADAPTERS["uniter"]


class OscarAdapter(SpecAdapter):
    """`OscarForPreTraining` (Oscar / VinVL): encoder `oscar`, MLM head `mlm_head` and `contrastive_head` on the
    pooled output, whose class 1 means "polluted"; the matching probability is `1 - softmax(logits)[1]`."""

    spec = ADAPTERS["oscar"]
