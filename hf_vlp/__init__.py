"""hf_vlp: vision-language pretrained models in the Hugging Face stack.

`import hf_vlp` registers every architecture with the transformers Auto classes.
"""

__version__ = "0.1.0"

from .registry import ARCHITECTURES, import_all_architectures, register_architecture

import_all_architectures()

__all__ = ["ARCHITECTURES", "register_architecture", "import_all_architectures", "__version__"]
