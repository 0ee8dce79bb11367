"""Publishing safely: `hf-vlp push` uploads the folder as it is, warns without a processor, fails clearly (and in
bounded time) on a Hub that does not answer or dies mid-upload; the documented `hf_vlp.hub.push_to_hub` route and
`HubPushCallback` upload the same files; the remote-code processor works where hf_vlp cannot be imported."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from test_uniter import tiny_config

import hf_vlp  # noqa: F401
from hf_vlp import cli
from hf_vlp.hub import HubPushCallback, HubPushError, push_folder, push_to_hub, save_for_hub
from hf_vlp.modeling.uniter import UniterForVisualQuestionAnswering, UniterProcessor
from hf_vlp.processing.region import RegionFeatureProcessor


def _model(bert_tokenizer=None):
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(bert_tokenizer)) if bert_tokenizer is not None else tiny_config()
    return UniterForVisualQuestionAnswering(config).eval()


def _processor(bert_tokenizer):
    return UniterProcessor(RegionFeatureProcessor(), bert_tokenizer)


def _files(folder):
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _received(repo_id):
    """The files of the newest commit the Hub stand-in holds for `repo_id` (its own .gitattributes left out)."""
    import hubstub

    files = dict(hubstub.REPOS[("models", repo_id)]["commits"][-1]["files"])
    files.pop(".gitattributes", None)
    return files


@pytest.fixture
def endpoint(monkeypatch):
    """Point huggingface_hub at another server for one test (HfApi reads constants.ENDPOINT when built)."""
    from huggingface_hub import constants

    def use(url):
        monkeypatch.setattr(constants, "ENDPOINT", url)

    return use


def test_push_uploads_a_converted_folder_byte_for_byte(hub_endpoint, tmp_path, bert_tokenizer, capsys):
    from hf_vlp.conversion.common import MANIFEST_NAME, save_converted

    folder = save_converted(
        _model(bert_tokenizer),
        _processor(bert_tokenizer),
        tmp_path / "out",
        conversion="Converted from the original `x.pt`.",
    )
    assert (folder / MANIFEST_NAME).is_file()
    with open(folder / "README.md", "a") as readme:
        readme.write("\n## Notes by hand\nThe user's edit must reach the Hub.\n")
    (folder / "eval").mkdir()
    (folder / "eval" / "scores.txt").write_text("vqa 0.71\n")
    before = _files(folder)
    assert cli.main(["push", "--model", str(folder), "--repo_id", "tester/pushed-as-is"]) == 0
    assert _received("tester/pushed-as-is") == before
    assert _files(folder) == before
    assert "warning" not in capsys.readouterr().err


def test_push_without_processor_warns_and_pushes_the_model(hub_endpoint, tmp_path, capsys):
    folder = save_for_hub(_model(), None, tmp_path / "no-tokenizer")
    assert cli.main(["push", "--model", str(folder), "--repo_id", "tester/no-processor"]) == 0
    err = capsys.readouterr().err
    assert "hf-vlp push: warning:" in err and "no processor files" in err
    assert _received("tester/no-processor") == _files(folder)


def test_push_refuses_a_folder_whose_weights_do_not_load(hub_endpoint, tmp_path):
    folder = save_for_hub(_model(), None, tmp_path / "broken")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="do not load"):
        push_folder(folder, "tester/broken")


class _Silent:
    """A loopback TCP server that accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.held, self.stopped = [], False
        threading.Thread(target=self._accept, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self):
        while not self.stopped:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(connection)  # read nothing, answer nothing

    def close(self):
        self.stopped = True
        self.sock.close()
        for connection in self.held:
            connection.close()


def test_push_to_a_hub_that_never_answers_fails_within_the_timeout(hub_endpoint, tmp_path, endpoint, monkeypatch):
    import hf_vlp.hub

    folder = save_for_hub(_model(), None, tmp_path / "model")
    before = _files(folder)
    silent = _Silent()
    endpoint(silent.url)
    monkeypatch.setattr(hf_vlp.hub, "REQUEST_TIMEOUT", 1.0)
    try:
        start = time.monotonic()
        with pytest.raises(HubPushError, match="no answer from|timed out") as raised:
            push_folder(folder, "tester/silent", timeout=4, check=False)
        assert time.monotonic() - start < 10
    finally:
        silent.close()
    print(raised.value)
    assert silent.url in str(raised.value)
    assert _files(folder) == before


@pytest.mark.parametrize("dies_at", ["commit", "weights"])
def test_push_to_a_hub_that_dies_mid_upload_fails_clearly(hub_endpoint, tmp_path, endpoint, bert_tokenizer, dies_at):
    """`weights`: the LFS upload connection drops (huggingface_hub retries with backoff, ~25 s of sleeping);
    `commit`: the stub already holds the weights, the commit request drops."""
    import hashlib

    import hubstub

    class DiesOnUpload(hubstub.Handler):
        """Answers create_repo and preupload, then goes away without answering the weights upload (PUT) or, when
        the stub already holds those bytes, the commit."""

        def _die(self):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def do_PUT(self):
            self._die()

        def do_POST(self):
            if "/commit/" in self.path:
                return self._die()
            return super().do_POST()

    server = ThreadingHTTPServer(("127.0.0.1", 0), DiesOnUpload)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    folder = save_for_hub(_model(bert_tokenizer), _processor(bert_tokenizer), tmp_path / "model")
    before = _files(folder)
    weights = hashlib.sha256(before["model.safetensors"]).hexdigest()
    if dies_at == "commit":
        hubstub.LFS[weights] = before["model.safetensors"]
    else:
        hubstub.LFS.pop(weights, None)
    endpoint(f"http://127.0.0.1:{server.server_address[1]}")
    repo_id = f"tester/dies-at-{dies_at}"
    try:
        with pytest.raises(HubPushError, match=f"push of .* to {repo_id}") as raised:
            push_folder(folder, repo_id, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    message = str(raised.value)
    print(message)
    assert "\n" not in message and "connection failed talking to http://127.0.0.1" in message
    assert _files(folder) == before
    assert len(hubstub.REPOS[("models", repo_id)]["commits"]) == 1  # nothing committed


def test_documented_route_and_callback_upload_what_hf_vlp_push_uploads(hub_endpoint, tmp_path, bert_tokenizer):
    from types import SimpleNamespace

    model, processor = _model(bert_tokenizer), _processor(bert_tokenizer)
    folder = save_for_hub(model, processor, tmp_path / "saved")
    assert cli.main(["push", "--model", str(folder), "--repo_id", "tester/by-cli"]) == 0
    push_to_hub(model, processor, "tester/by-function")
    callback = HubPushCallback("tester/by-callback")
    callback.on_train_end(
        None, SimpleNamespace(is_world_process_zero=True), None, model=model, processing_class=processor
    )
    assert callback.commit_url
    by_cli = _received("tester/by-cli")
    assert {"README.md", "processing_uniter.py", "modeling_uniter.py", "processor_config.json"} <= set(by_cli)
    for repo in ("tester/by-function", "tester/by-callback"):
        received = _received(repo)
        assert set(received) == set(by_cli), repo
        for name in set(by_cli) - {"README.md"}:  # the card names the repo id
            assert received[name] == by_cli[name], (repo, name)
        assert f'"{repo}"' in received["README.md"].decode() and "hf_vlp" in received["README.md"].decode()
    # VLPTrainer.push_to_hub: the same repo from a Trainer run
    from hf_vlp.recipes import training_arguments
    from hf_vlp.trainer import VLPTrainer

    arguments = training_arguments(tmp_path / "run", hub_model_id="tester/by-trainer", use_cpu=True)
    trainer = VLPTrainer(model=model, args=arguments, processing_class=processor)
    assert trainer.push_to_hub()
    received = _received("tester/by-trainer")
    assert set(received) == set(by_cli)
    for name in set(by_cli) - {"README.md", "config.json"}:
        assert received[name] == by_cli[name], name
    # the Trainer sets `use_cache=False` on the model's config for training; the rest of the config is the same
    trained_config, saved_config = json.loads(received["config.json"]), json.loads(by_cli["config.json"])
    assert trained_config.pop("use_cache", False) is False and saved_config.pop("use_cache", False) in (
        True,
        False,
        None,
    )
    assert trained_config == saved_config
    # model.push_to_hub of an hf_vlp class: the same repo, with the processor given or found next to the weights
    model.push_to_hub("tester/by-model", processor)
    reloaded = type(model).from_pretrained(folder)
    reloaded.push_to_hub("tester/by-reloaded-model")
    for repo in ("tester/by-model", "tester/by-reloaded-model"):
        received = _received(repo)
        assert set(received) == set(by_cli), repo
        for name in set(by_cli) - {"README.md", "config.json"}:
            assert received[name] == by_cli[name], (repo, name)
        pushed_config = json.loads(received["config.json"])
        pushed_config.pop("use_cache", None)  # set by the Trainer run above on this same model object
        assert pushed_config == saved_config, repo
    with pytest.raises(TypeError, match="create_pr"):
        model.push_to_hub("tester/by-model", processor, create_pr=True)
    with pytest.warns(UserWarning, match="AutoProcessor.from_pretrained will fail"):
        _model(bert_tokenizer).push_to_hub("tester/model-only")
    assert "processor_config.json" not in _received("tester/model-only")
    assert "modeling_uniter.py" in _received("tester/model-only")


_BLOCKER = """
import sys
class BlockHfVlp:
    def find_spec(self, name, path=None, target=None):
        if name == "hf_vlp" or name.startswith("hf_vlp."):
            raise ImportError("hf_vlp is not installed here")
sys.meta_path.insert(0, BlockHfVlp())
"""


def test_remote_code_processor_works_without_hf_vlp(tmp_path, bert_tokenizer):
    import numpy as np

    model, processor = _model(bert_tokenizer), _processor(bert_tokenizer)
    save_for_hub(model, processor, tmp_path / "repo")
    rng = np.random.default_rng(0)
    call = dict(
        text=["what colour is the cube?", "a red ball"],
        visual_feats=[
            rng.random((3, model.config.visual_feat_dim), dtype=np.float32),
            rng.random((5, model.config.visual_feat_dim), dtype=np.float32),
        ],
        boxes=[
            np.array([[0, 0, 10, 10], [2, 3, 20, 18], [5, 5, 30, 30]], np.float32),
            np.array([[1, 1, 4, 4], [0, 0, 40, 30], [3, 2, 9, 9], [10, 10, 20, 25], [0, 5, 5, 10]], np.float32),
        ],
        image_sizes=[(32, 32), (40, 30)],
    )
    torch.save(call, tmp_path / "call.pt")
    expected = processor(**call)
    with torch.no_grad():
        logits = model(**expected).logits
    torch.save({"inputs": dict(expected), "logits": logits}, tmp_path / "expected.pt")
    script = (
        _BLOCKER
        + f"""
import torch
from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor
try:
    import hf_vlp
    raise SystemExit("hf_vlp importable")
except ImportError:
    pass
processor = AutoProcessor.from_pretrained(r"{tmp_path / "repo"}", trust_remote_code=True)
model = AutoModelForVisualQuestionAnswering.from_pretrained(r"{tmp_path / "repo"}", trust_remote_code=True).eval()
print("classes", type(processor).__name__, type(processor.image_processor).__name__, type(model).__name__)
assert "hf_vlp" not in type(processor).__module__ and "hf_vlp" not in type(model).__module__
inputs = processor(**torch.load(r"{tmp_path / "call.pt"}", weights_only=False))
expected = torch.load(r"{tmp_path / "expected.pt"}")
assert sorted(inputs) == sorted(expected["inputs"]), (sorted(inputs), sorted(expected["inputs"]))
for name, value in expected["inputs"].items():
    assert torch.equal(inputs[name], value), name
with torch.no_grad():
    print("max_abs_diff", (model(**inputs).logits - expected["logits"]).abs().max().item())
"""
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-1000:] + result.stderr[-3000:]
    assert "classes UniterProcessor RegionFeatureProcessor UniterForVisualQuestionAnswering" in result.stdout
    assert "max_abs_diff 0.0" in result.stdout


def test_processor_bundle_keeps_loading_with_hf_vlp_without_remote_code(tmp_path, bert_tokenizer):
    import json

    from transformers import AutoProcessor

    save_for_hub(_model(bert_tokenizer), _processor(bert_tokenizer), tmp_path / "repo")
    saved = json.loads((tmp_path / "repo" / "processor_config.json").read_text())
    assert saved["auto_map"]["AutoProcessor"] == "processing_uniter.UniterProcessor"
    assert saved["image_processor"]["auto_map"]["AutoImageProcessor"] == "processing_uniter.RegionFeatureProcessor"
    # with hf_vlp installed the registered classes load without trust_remote_code (no remote-code prompt)
    assert type(AutoProcessor.from_pretrained(tmp_path / "repo")) is UniterProcessor
