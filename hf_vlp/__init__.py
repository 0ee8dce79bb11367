"""hf_vlp: vision-language pretrained models in the Hugging Face stack.

`import hf_vlp` reads every architecture's spec (`hf_vlp.ARCHITECTURES`, no modeling code is imported) and enters
them lazily into the transformers Auto classes: `AutoModel*.from_pretrained` resolves hf_vlp's model types, and
imports an architecture's code on first use. What transformers returns for its own model types is unchanged unless
you call `hf_vlp.use_hf_vlp_classes_for_transformers_models()` (docs/design.md, "Auto classes").
"""

__version__ = "0.1.0"

from .registry import (
    ARCHITECTURES,
    FAILED_ARCHITECTURES,
    discover_architectures,
    get_spec,
    register_architecture,
    spec_for_model,
    spec_for_model_type,
    use_hf_vlp_classes_for_transformers_models,
)
from .spec import ArchitectureSpec, Head, InputKind, Task

discover_architectures()

__all__ = [
    "ARCHITECTURES",
    "FAILED_ARCHITECTURES",
    "ArchitectureSpec",
    "Head",
    "InputKind",
    "Task",
    "__version__",
    "get_spec",
    "register_architecture",
    "spec_for_model",
    "spec_for_model_type",
    "use_hf_vlp_classes_for_transformers_models",
]
