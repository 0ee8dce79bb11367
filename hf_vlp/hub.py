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
        described = "Inputs: RGB images (the processor resizes and normalizes them)" + (" and text" * reads_text) + ".\n"
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
    if conversion:
        parts += ["## How it was made\n", conversion.strip() + "\n"]
    if results:
        parts += ["## Results\n", "| metric | value |\n| --- | --- |\n"]
        parts += [f"| {key} | {value} |\n" for key, value in results.items()]
    return "\n".join(parts)


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
    return [f"{package.__name__}.{node.module}" for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module]


def flat_source(module_name) -> str:
    """One self-contained Python source with `module_name` and every hf_vlp module it needs, hf_vlp imports
    removed (their names are then defined earlier in the same file)."""
    chunks, future = [], []
    for name in _bundle_order(module_name):
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


def write_remote_code(model, directory):
    """Write `configuration_<arch>.py` and `modeling_<arch>.py` (flat bundles) and point `config.auto_map` at them:
    every head of the architecture whose class is in the bundle, under each Auto class its spec names for it (the
    opt-in ones too: with `trust_remote_code=True` they load hf_vlp's class) and under its class name (heads without
    an Auto class: `get_class_from_dynamic_module(auto_map[name], repo)`)."""
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


def save_for_hub(model, processor, directory, remote_code=True, **card):
    """Everything a Hub repo of this model needs, in `directory`."""
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(directory)
    if remote_code:
        write_remote_code(model, directory)
    (directory / "README.md").write_text(model_card(model, **card))
    return directory


def push_to_hub(model, processor, repo_id, directory=None, private=False, **card):
    """`save_for_hub` then upload the folder (create the repo if needed). Returns the commit URL."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = save_for_hub(model, processor, directory or scratch, repo_id=repo_id, **card)
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=f"Upload {type(model).__name__}")
