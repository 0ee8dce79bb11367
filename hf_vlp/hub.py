"""Hub layout: model cards, flat remote-code bundles, and saving / pushing a model with its processor.

`save_for_hub(model, processor, directory, ...)` writes safetensors weights, config, processor files, a model card
(README.md) and a self-contained copy of the architecture's code, so that
`AutoModel.from_pretrained(repo, trust_remote_code=True)` works on a machine without hf_vlp.
"""

import ast
import importlib
import importlib.util
import inspect
import json
from pathlib import Path

from .registry import spec_for_model
from .spec import InputKind, Task

# tags of a model card by what the model reads
INPUT_TAGS = {
    InputKind.REGIONS: ["vision-language", "region-features"],
    InputKind.PIXELS: ["image"],
    InputKind.TEXT: ["text"],
}


def _task(model, task=None) -> Task:
    """`task`, or the task whose head class `model` is (from its architecture's spec)."""
    spec = spec_for_model(model)
    if task is not None:
        spec.head(task)
        return Task(task)
    found = spec.task_of(model)
    if found is None:
        raise ValueError(f"{type(model).__name__} is no head of {spec.name} ({spec.tasks}); pass `task`")
    return found


def pipeline_tag(model, task=None) -> str | None:
    """The Hub pipeline tag of `model`'s head, as its spec declares it (None: no Hub pipeline takes its inputs)."""
    return spec_for_model(model).head(_task(model, task)).pipeline_tag


def _loading_code(model, task, name) -> tuple[str, str]:
    """(import line, load expression) of the card: the Auto class `import hf_vlp` sets up for this head's class if
    there is one, else the class itself."""
    spec = spec_for_model(model)
    head = spec.head(task)
    same_class = [head] + [other for other in spec.heads.values() if other.model == head.model and other is not head]
    auto = next((h.auto_classes[0] for h in same_class if h.auto_classes), None)
    if auto is not None:
        return (
            f"from transformers import AutoProcessor, {auto}\n"
            "import hf_vlp  # registers the architecture; or pass trust_remote_code=True without hf_vlp\n",
            f'{auto}.from_pretrained("{name}")',
        )
    module, _, class_name = head.model.rpartition(".")
    if spec.package and module.startswith(spec.package + "."):
        module = spec.package  # the architecture package exports its classes
    note = ""
    if head.opt_in_auto_classes:
        note = (
            f"# or: hf_vlp.use_hf_vlp_classes_for_transformers_models(), then {head.opt_in_auto_classes[0]}; "
            "transformers' own class otherwise\n"
        )
    return (
        f"from transformers import AutoProcessor\nfrom {module} import {class_name}\n{note}",
        f'{class_name}.from_pretrained("{name}")',
    )


def model_card(model, base_model=None, datasets=None, conversion=None, results=None, repo_id=None, task=None) -> str:
    """A README.md with Hub metadata (library, pipeline tag, tags, base model, datasets), how to load the model,
    how it was made, and measured results. `task`: the head the model is (default: found from its class)."""
    spec = spec_for_model(model)
    task = _task(model, task)
    arch = model.config.model_type
    meta = {"library_name": "transformers"}
    tag = spec.head(task).pipeline_tag
    if tag is not None:
        meta["pipeline_tag"] = tag
    meta["tags"] = ["hf_vlp", arch, *INPUT_TAGS[spec.inputs]]
    if base_model:
        meta["base_model"] = base_model
    if datasets:
        meta["datasets"] = list(datasets)
    front = "\n".join(f"{key}: {json.dumps(value)}" for key, value in meta.items())
    name = repo_id or f"<your-org>/{arch}"
    imports, load = _loading_code(model, task, name)
    if spec.inputs is InputKind.REGIONS:
        call = (
            "inputs = processor(text=[question], visual_feats=[region_features], boxes=[boxes_xyxy_pixels],\n"
            "                   image_sizes=[(width, height)])\n"
        )
        described = (
            "Inputs: region features (N, D) and their boxes `x1, y1, x2, y2` in pixels with the image size; the "
            "processor normalizes the boxes and pads the batch.\n"
        )
    elif spec.inputs is InputKind.PIXELS:
        reads_text = spec.vocab_size_field is not None
        call = f"inputs = processor(images=[image]{', text=[text]' if reads_text else ''}, return_tensors='pt')\n"
        described = (
            "Inputs: RGB images (the processor resizes and normalizes them)" + (" and text" * reads_text) + ".\n"
        )
    else:
        call = "inputs = processor(text=[text], return_tensors='pt')\n"
        described = "Inputs: text.\n"
    parts = [
        f"---\n{front}\n---\n",
        f"# {type(model).__name__}\n",
        f"A `{arch}` model ({type(model).__name__}, {task.value} head, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) packaged with "
        "[hf_vlp](https://pypi.org/project/hf_vlp/).\n",
        "## How to load\n",
        "```python\n"
        + imports
        + f'\nprocessor = AutoProcessor.from_pretrained("{name}")\n'
        + f"model = {load}\n"
        + call
        + "outputs = model(**inputs)\n"
        "```\n",
        described,
    ]
    return "\n".join(parts + _made_and_results(conversion, results))


def _made_and_results(conversion, results) -> list[str]:
    """The card's "How it was made" and "Results" sections."""
    parts = []
    if conversion:
        parts += ["## How it was made\n", conversion.strip() + "\n"]
    if results:
        parts += ["## Results\n", "| metric | value |\n| --- | --- |\n"]
        parts += [f"| {key} | {value} |\n" for key, value in results.items()]
    return parts


# ------------------------------------------------------------------------------------------------------------------
# flat remote-code bundle
# ------------------------------------------------------------------------------------------------------------------


def _local_imports(module):
    """hf_vlp modules a module imports (absolute `hf_vlp.*` or relative), in source order."""
    tree = ast.parse(inspect.getsource(module))
    found = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                name = importlib.util.resolve_name("." * node.level + (node.module or ""), module.__package__)
            else:
                name = node.module or ""
            if name.startswith("hf_vlp"):
                found.append(name)
    return found


def _bundle_order(module_name, seen=None, order=None):
    """Depth-first list of the hf_vlp modules `module_name` needs, dependencies first."""
    seen, order = (set() if seen is None else seen), ([] if order is None else order)
    if module_name in seen:
        return order
    seen.add(module_name)
    module = importlib.import_module(module_name)
    for dependency in _local_imports(module):
        dependency_module = importlib.import_module(dependency)
        if dependency_module.__file__.endswith("__init__.py"):
            # a package import: bundle the submodules whose names are used
            for submodule in _package_members(dependency_module):
                _bundle_order(submodule, seen, order)
        else:
            _bundle_order(dependency, seen, order)
    order.append(module_name)
    return order


def _package_members(package):
    """The submodules a package's `__init__` re-exports from (`from .x import ...`)."""
    tree = ast.parse(inspect.getsource(package))
    return [
        f"{package.__name__}.{node.module}"
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
    ]


def flat_source(module_name) -> str:
    """One self-contained Python source with `module_name` (or each of a list of module names, in order) and every
    hf_vlp module they need, hf_vlp imports removed (their names are then defined earlier in the same file)."""
    chunks, future = [], []
    seen, order = set(), []
    for name in [module_name] if isinstance(module_name, str) else module_name:
        _bundle_order(name, seen, order)
    for name in order:
        source = inspect.getsource(importlib.import_module(name))
        tree = ast.parse(source)
        lines = source.splitlines()
        drop = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("hf_vlp")):
                drop.update(range(node.lineno - 1, node.end_lineno))
            elif isinstance(node, ast.Import) and any(a.name.startswith("hf_vlp") for a in node.names):
                drop.update(range(node.lineno - 1, node.end_lineno))
            elif isinstance(node, ast.ImportFrom) and node.module == "__future__":
                future.append(lines[node.lineno - 1])
                drop.update(range(node.lineno - 1, node.end_lineno))
        kept = "\n".join(line for i, line in enumerate(lines) if i not in drop)
        chunks.append(f"# ---- {name} " + "-" * max(0, 100 - len(name)) + "\n" + kept)
    header = "# Generated by hf_vlp.hub.flat_source: a self-contained copy for trust_remote_code loading.\n"
    return header + "\n".join(sorted(set(future))) + "\n\n" + "\n\n".join(chunks) + "\n"


def write_remote_code(model, directory, processor=None):
    """Write `configuration_<arch>.py` and `modeling_<arch>.py` (flat bundles) and point `config.auto_map` at them:
    every head of the architecture whose class is in the bundle, under each Auto class its spec names for it (the
    opt-in ones too: with `trust_remote_code=True` they load hf_vlp's class) and under its class name (heads without
    an Auto class: `get_class_from_dynamic_module(auto_map[name], repo)`). With a `processor` already saved in
    `directory` whose class is hf_vlp's, also `processing_<arch>.py` (see `write_processor_code`)."""
    directory = Path(directory)
    spec = spec_for_model(model)
    arch = model.config.model_type
    config_module = type(model.config).__module__
    model_module = type(model).__module__
    config_class = type(model.config).__name__
    if config_module.startswith("hf_vlp"):
        (directory / f"configuration_{arch}.py").write_text(flat_source(config_module))
    else:  # a configuration transformers ships (LXMERT, VisualBERT, ...): import it rather than copy it
        (directory / f"configuration_{arch}.py").write_text(
            f"# {config_class} ships with transformers; hf_vlp adds no configuration code for it.\n"
            f"from {config_module} import {config_class}  # noqa: F401\n"
        )
    modeling = flat_source(model_module)
    # the modeling bundle imports its config from the sibling file instead of carrying a second copy
    modeling = modeling.replace(f"\nclass {config_class}(", f"\nclass _Unused{config_class}(", 1)
    lines = modeling.splitlines(keepends=True)
    after_future = max((i + 1 for i, line in enumerate(lines) if line.startswith("from __future__")), default=1)
    lines.insert(after_future, f"from .configuration_{arch} import {config_class}\n")
    modeling = "".join(lines)
    (directory / f"modeling_{arch}.py").write_text(modeling)

    # the heads whose classes the bundle defines (a head may be a class of transformers, e.g. ViLT's VQA)
    bundled = [head for head in spec.heads.values() if head.model.rpartition(".")[0] == model_module]
    auto_map = {"AutoConfig": f"configuration_{arch}.{config_class}"}
    for head in bundled:
        for auto_name in head.auto_classes + head.opt_in_auto_classes:
            auto_map.setdefault(auto_name, f"modeling_{arch}.{head.model.rpartition('.')[2]}")
    for class_name in [type(model).__name__] + [head.model.rpartition(".")[2] for head in bundled]:
        auto_map.setdefault(class_name, f"modeling_{arch}.{class_name}")
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = auto_map
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if processor is not None:
        write_processor_code(processor, directory, arch)


def write_processor_code(processor, directory, arch):
    """Bundle hf_vlp's processor classes into `processing_<arch>.py` and point the saved processor files at them
    (`auto_map` `AutoProcessor` / `AutoImageProcessor` in processor_config.json, in its nested `image_processor`
    entry and in preprocessor_config.json), so that `AutoProcessor.from_pretrained(repo, trust_remote_code=True)`
    returns this processor, not a bare tokenizer, where hf_vlp is not installed. Processors that are transformers'
    own classes (BLIP, ViLT) need nothing and get nothing. Returns the bundle's path or None."""
    directory = Path(directory)
    processor_class = type(processor)
    image_processor = getattr(processor, "image_processor", None)
    ours = [cls for cls in (type(image_processor), processor_class) if cls.__module__.startswith("hf_vlp")]
    if processor_class not in ours:
        return None
    bundle = directory / f"processing_{arch}.py"
    bundle.write_text(flat_source(list(dict.fromkeys(cls.__module__ for cls in ours))))
    processor_entry = f"processing_{arch}.{processor_class.__name__}"
    image_entry = None
    if image_processor is not None and type(image_processor) in ours:
        image_entry = f"processing_{arch}.{type(image_processor).__name__}"
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = directory / name
        if not path.is_file():
            continue
        saved = json.loads(path.read_text())
        auto_map = dict(saved.get("auto_map") or {})
        if name == "processor_config.json":
            auto_map["AutoProcessor"] = processor_entry
            if isinstance(saved.get("image_processor"), dict) and image_entry is not None:
                nested = saved["image_processor"]
                nested["auto_map"] = {**(nested.get("auto_map") or {}), "AutoImageProcessor": image_entry}
        if image_entry is not None:
            auto_map["AutoImageProcessor"] = image_entry
        if name == "preprocessor_config.json":
            auto_map.setdefault("AutoProcessor", processor_entry)
        saved["auto_map"] = auto_map
        path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return bundle


def save_for_hub(model, processor, directory, remote_code=True, **card):
    """Everything a Hub repo of this model needs, in `directory`."""
    directory = Path(directory)
    try:
        spec_for_model(model)
    except ValueError:  # a model without an ArchitectureSpec (the bottom-up detector)
        return _save_without_spec(model, processor, directory, **card)
    model.save_pretrained(directory, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(directory)
    if remote_code:
        write_remote_code(model, directory, processor)
    (directory / "README.md").write_text(model_card(model, **card))
    return directory


def _save_without_spec(
    model, processor, directory, base_model=None, datasets=None, conversion=None, results=None, repo_id=None, task=None
):
    """Weights, config, the image processor (the model's own when none is given) and a short card, for a model that
    is no vision-language architecture: no head, no remote-code bundle (hf_vlp must be installed to load it)."""
    model.save_pretrained(directory, safe_serialization=True)
    processor = processor if processor is not None else getattr(model, "image_processor", None)
    if processor is not None:
        processor.save_pretrained(directory)
    arch, name = model.config.model_type, repo_id or f"<your-org>/{model.config.model_type}"
    meta = {"library_name": "transformers", "tags": ["hf_vlp", arch]}
    if base_model:
        meta["base_model"] = base_model
    if datasets:
        meta["datasets"] = list(datasets)
    front = "\n".join(f"{key}: {json.dumps(value)}" for key, value in meta.items())
    parts = [
        f"---\n{front}\n---\n",
        f"# {type(model).__name__}\n",
        f"A `{arch}` model ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) packaged with "
        "[hf_vlp](https://pypi.org/project/hf_vlp/). Its classes ship with hf_vlp (no remote code):\n",
        f'```python\nimport hf_vlp  # registers the classes\nfrom transformers import AutoModel\n\nmodel = AutoModel.from_pretrained("{name}")\n```\n',
    ]
    (directory / "README.md").write_text("\n".join(parts + _made_and_results(conversion, results)))
    return directory


# ------------------------------------------------------------------------------------------------------------------
# publishing
# ------------------------------------------------------------------------------------------------------------------

# seconds one HTTP request to the Hub may wait for the server (connect, each read / write), and the default bound on a
# whole push (every request and retry); `push_folder(timeout=...)` / `hf-vlp push --timeout` change the latter
REQUEST_TIMEOUT = 60.0
PUSH_TIMEOUT = 1800.0
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.txt",
)


class HubPushError(RuntimeError):
    """A push that did not complete: the Hub refused it, did not answer in time, or the connection broke."""


def check_folder_loads(folder):
    """Load what `folder` holds the way a user of the repo will: the config with `AutoConfig`, the weights with the
    architecture's class for the saved head (config.architectures), and the processor with `AutoProcessor` when
    processor files are there. Returns (model, processor or None, task). A folder that does not load raises
    ValueError saying what is wrong; a folder without processor files returns processor None (the caller warns)."""
    from transformers import AutoConfig, AutoProcessor

    from .registry import spec_for_model_type

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"model folder {str(folder)!r} does not exist or is not a folder")
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"{folder} has no config.json: it is no saved model (save_pretrained / hf-vlp convert --output)"
        )
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ValueError(f"{folder / 'config.json'} does not load: {error}") from error
    try:
        spec = spec_for_model_type(config.model_type)
    except ValueError:
        if not type(config).__module__.startswith("hf_vlp."):
            raise  # not an hf_vlp model at all
        # an hf_vlp model without an ArchitectureSpec (the bottom-up detector): its own Auto registration
        from transformers import AutoImageProcessor, AutoModel

        try:
            model = AutoModel.from_pretrained(folder)
        except Exception as error:  # noqa: BLE001 - as below: every load failure means "does not load"
            raise ValueError(f"the weights in {folder} do not load with AutoModel: {error}") from error
        has_processor = (folder / "preprocessor_config.json").is_file()
        return model, AutoImageProcessor.from_pretrained(folder) if has_processor else None, None
    saved = (config.architectures or [None])[0]
    task = next((task for task, head in spec.heads.items() if head.model.rpartition(".")[2] == saved), None)
    if task is None:
        raise ValueError(f"{folder} holds a {saved!r}, which is no head of {spec.name} ({spec.tasks})")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ValueError(f"{folder} has no weights (*.safetensors)")
    try:
        model = spec.model_class(task).from_pretrained(folder)
    except Exception as error:  # noqa: BLE001 - safetensors / torch errors of every kind mean "does not load"
        raise ValueError(f"the weights in {folder} do not load into {saved}: {error}") from error
    processor = None
    if any((folder / name).is_file() for name in PROCESSOR_FILES):
        try:
            processor = AutoProcessor.from_pretrained(folder)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise ValueError(f"the processor files in {folder} do not load with AutoProcessor: {error}") from error
    return model, processor, task


def _with_deadline(call, timeout, what):
    """`call()` with every Hub request bounded by REQUEST_TIMEOUT (or `timeout` if shorter) and the whole call by
    `timeout` seconds; HubPushError if it does not finish in time or the connection fails."""
    import threading

    import httpx2
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import _http

    per_request = min(REQUEST_TIMEOUT, timeout)

    def bounded_client():
        client = _http.default_client_factory()
        client.timeout = httpx2.Timeout(per_request)
        return client

    result, failure = [], []

    def run():
        try:
            result.append(call())
        except BaseException as error:  # handed to the caller's thread below
            failure.append(error)

    _http.set_client_factory(bounded_client)
    try:
        worker = threading.Thread(target=run, name="hf_vlp-push", daemon=True)
        worker.start()
        worker.join(timeout)
    finally:
        _http.set_client_factory(_http.default_client_factory)
    if worker.is_alive():
        raise HubPushError(
            f"{what}: no answer from {_endpoint()} within {timeout:g} s (pass a longer timeout, or check "
            "the connection); the push did not complete"
        )
    if failure:
        error = failure[0]
        chain = [error]  # huggingface_hub wraps some failures (RuntimeError "Error while uploading ...")
        while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
            chain.append(chain[-1].__cause__ or chain[-1].__context__)
        refused = next((e for e in chain if isinstance(e, HfHubHTTPError)), None)
        if refused is not None:
            raise HubPushError(f"{what}: the Hub refused it: {str(refused).splitlines()[0]}") from error
        broken = next((e for e in chain if isinstance(e, (httpx2.HTTPError, OSError))), None)
        if broken is not None:
            reason = "timed out" if isinstance(broken, httpx2.TimeoutException) else "connection failed"
            where = f"{error}; " if error is not broken else ""
            raise HubPushError(
                f"{what}: {reason} talking to {_endpoint()} ({where}{type(broken).__name__}: "
                f"{str(broken) or 'no details'}); the push did not complete"
            ) from error
        raise error
    return result[0]


def _endpoint():
    from huggingface_hub import constants

    return constants.ENDPOINT


def push_folder(folder, repo_id, private=False, commit_message=None, timeout=PUSH_TIMEOUT, check=True, warn=None):
    """Upload `folder` as it is (every file, byte for byte: README.md with its edits, the conversion record
    `.hf_vlp_conversion.json`, extra files) to the Hub model repo `repo_id`, creating the repo if needed.

    With `check`, the folder must load first (`check_folder_loads`); a folder without processor files is pushed
    with a warning (through `warn`, default `warnings.warn`). Every request is bounded by REQUEST_TIMEOUT seconds
    and the whole push by `timeout`; a push that fails or does not finish raises HubPushError and leaves the folder
    untouched (nothing is written into it). Returns the commit URL."""
    import warnings

    folder = Path(folder)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"`timeout` must be a positive number of seconds, got {timeout!r}")
    if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.count("/") > 1:
        raise ValueError(f"`repo_id` must be 'name' or 'org/name', got {repo_id!r}")
    if check:
        model, processor, _ = check_folder_loads(folder)
        name = type(model).__name__
        if processor is None:
            (warn or (lambda message: warnings.warn(message, stacklevel=3)))(
                f"{folder} has no processor files: {repo_id} gets the model only and AutoProcessor.from_pretrained "
                "will fail on it (convert with --tokenizer, or save the processor into the folder first)"
            )
    elif not folder.is_dir():
        raise ValueError(f"model folder {str(folder)!r} does not exist or is not a folder")
    else:
        name = "model"
    from huggingface_hub import HfApi

    api = HfApi()

    def upload():
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message=commit_message or f"Upload {name}"
        )

    return _with_deadline(upload, timeout, f"push of {folder} to {repo_id}")


def push_to_hub(
    model, processor, repo_id, directory=None, private=False, timeout=PUSH_TIMEOUT, commit_message=None, **card
):
    """The complete Hub repo of `model` (+ `processor`): `save_for_hub` (weights, config, processor, model card naming
    hf_vlp and the architecture, remote code for model and processor) into `directory` (default: a temporary
    folder), then `push_folder`. `hf-vlp push DIR` of a folder `save_for_hub` wrote uploads the same files, and so do
    `model.push_to_hub(repo_id, processor)` of an hf_vlp model class (`hub_mixin.HubPushMixin`),
    `VLPTrainer.push_to_hub()` and `HubPushCallback` at the end of a Trainer run. Returns the commit URL."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        folder = save_for_hub(model, processor, directory or scratch, repo_id=repo_id, **card)
        return push_folder(
            folder,
            repo_id,
            private=private,
            timeout=timeout,
            check=False,
            commit_message=commit_message or f"Upload {type(model).__name__}",
        )


try:
    from transformers import TrainerCallback as _TrainerCallback
except ImportError:  # pragma: no cover - transformers always ships it
    _TrainerCallback = object


class HubPushCallback(_TrainerCallback):
    """`Trainer(..., callbacks=[HubPushCallback("org/name", processor)])`: at the end of training, push the trained
    model with `push_to_hub` (the same complete repo as `hf-vlp push`), from the main process only. `processor`
    defaults to the Trainer's `processing_class`; `card` goes to the model card (base_model, datasets, results)."""

    def __init__(self, repo_id, processor=None, private=False, timeout=PUSH_TIMEOUT, **card):
        self.repo_id, self.processor, self.private, self.timeout, self.card = repo_id, processor, private, timeout, card
        self.commit_url = None

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        model = getattr(model, "module", model)  # DDP / accelerate wrapper
        processor = self.processor if self.processor is not None else processing_class
        self.commit_url = push_to_hub(
            model, processor, self.repo_id, private=self.private, timeout=self.timeout, **self.card
        )
