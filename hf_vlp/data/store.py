"""A region-feature store: one row of detector output per image, in memory-mapped Arrow files, looked up by image id.

    hf-vlp extract --detector DIR --images 'train2014/*.jpg' --output vqa_features --id_pattern '(\\d+)$'

writes `STORE/part-00000.arrow`, `part-00001.arrow`, ... (the Arrow stream files `datasets` writes; each holds
`shard_size` images and appears only when complete, so an interrupted run leaves no half shard) and
`STORE/store.json` (detector name, feature size, columns). Rerunning the command skips the ids already written.

Reading: `FeatureStore(STORE)` memory-maps the shards (`datasets.Dataset.from_file`): opening a store of any size
costs the id index only (a dict of image id -> row), and a row is read from the page cache when asked for. Every
process that opens the same store (each DDP rank, each DataLoader worker) shares those pages through the operating
system, so a VQA v2 training run holds one copy of each image's features however many questions and ranks read it.
`FeatureStore.dataset` is the `datasets.Dataset` itself (columns `image_id`, `features` (R, D), `boxes` (R, 4) pixel
x1y1x2y2, `image_width`, `image_height`, plus whatever optional detector outputs were kept); a plain
`datasets.load_dataset("arrow", data_files=f"{STORE}/*.arrow")` reads it too (as a copy in the datasets cache).

Task datasets keep image ids only: `with_region_features(dataset, store)` (an on-access transform) and
`StoreFeaturesCollator(store, collator)` (for `Trainer`, whose column pruning would drop transform columns) add
`region_features`, `boxes`, `image_width`, `image_height` to each example at batch time, the columns
`RegionFeatureProcessor` and the collators read.

Image ids are strings in the store; an integer id (COCO, VQA) is looked up as its decimal string, and an id made of
digits is written without leading zeros, so `COCO_train2014_000000123456.jpg` with `--id_pattern '(\\d+)$'` is found
by the VQA annotation's `image_id` 123456.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

STORE_FORMAT_VERSION = 1
SHARD_PATTERN = "part-{:05d}.arrow"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# optional per-region detector outputs a store may keep (`--keep`): name -> (numpy dtype, trailing dims from data)
OPTIONAL_COLUMNS = ("normalized_boxes", "class_probs", "object_ids", "attribute_ids")


def image_id_key(image_id) -> str:
    """The store's key of an image id: ints and digit strings as their decimal string without leading zeros."""
    if isinstance(image_id, (bool, np.bool_)):
        raise ValueError(f"an image id must be a string or an int, got {image_id!r}")
    if isinstance(image_id, (int, np.integer)):
        return str(int(image_id))
    if not isinstance(image_id, str) or not image_id:
        raise ValueError(f"an image id must be a non-empty string or an int, got {image_id!r}")
    return str(int(image_id)) if image_id.isdigit() else image_id


def image_id_from_path(path, id_pattern: str | None = None) -> str:
    """The image id of a file: its name without extension, or the first group of `id_pattern` searched in it."""
    stem = Path(path).stem
    if id_pattern is None:
        return image_id_key(stem)
    match = re.search(id_pattern, stem)
    if match is None:
        raise ValueError(f"--id_pattern {id_pattern!r} does not match the file name {Path(path).name!r}")
    return image_id_key(match.group(1) if match.groups() else match.group(0))


def list_images(images: str | os.PathLike | Sequence) -> list[Path]:
    """Image files of a directory (recursively, by suffix), a glob pattern or a list of paths; sorted."""
    if isinstance(images, (list, tuple)):
        files = [Path(p) for p in images]
    elif Path(images).is_dir():
        files = [p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    else:
        files = [Path(p) for p in glob.glob(str(images), recursive=True)]
    files = sorted(set(files))
    if not files:
        raise ValueError(f"--images {images!s}: no image files found (a directory, a glob pattern or a list)")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise ValueError(f"--images: {len(missing)} path(s) are not files, e.g. {missing[:3]}")
    return files


def _features_schema(feature_dim: int, extra: Mapping[str, tuple]):
    import datasets

    columns = {
        "image_id": datasets.Value("string"),
        "features": datasets.Array2D((None, feature_dim), "float32"),
        "boxes": datasets.Array2D((None, 4), "float32"),
        "image_width": datasets.Value("int32"),
        "image_height": datasets.Value("int32"),
    }
    for name, (dtype, width) in extra.items():
        if width is None:
            columns[name] = datasets.List(datasets.Value(dtype))
        else:
            columns[name] = datasets.Array2D((None, width), dtype)
    return datasets.Features(columns)


class FeatureStore:
    """The memory-mapped store at `path` (module docstring): `store[image_id]` -> dict of numpy arrays,
    `image_id in store`, `len(store)`, `store.ids`, `store.dataset`."""

    def __init__(self, path: str | os.PathLike):
        import datasets

        self.path = Path(path)
        meta_file = self.path / "store.json"
        if not meta_file.is_file():
            raise ValueError(
                f"{str(self.path)!r} is not a feature store (no store.json); write one with hf-vlp extract"
            )
        self.meta = json.loads(meta_file.read_text())
        shards = sorted(self.path.glob("part-*.arrow"))
        if shards:
            self.dataset = datasets.concatenate_datasets([datasets.Dataset.from_file(str(s)) for s in shards])
        else:
            self.dataset = datasets.Dataset.from_dict(
                {name: [] for name in self.features_schema}, features=self.features_schema
            )
        ids = self.dataset.data.column("image_id").to_pylist()
        self._rows = {image_id: row for row, image_id in enumerate(ids)}
        if len(self._rows) != len(ids):
            raise ValueError(f"feature store {str(self.path)!r} holds duplicate image ids")
        self._columns = {}  # name -> (chunks, first row of each chunk), read straight from the mapped Arrow data

    @property
    def features_schema(self):
        extra = {name: tuple(spec) for name, spec in self.meta.get("extra_columns", {}).items()}
        return _features_schema(self.meta["feature_dim"], extra)

    @property
    def feature_dim(self) -> int:
        return int(self.meta["feature_dim"])

    @property
    def detector_name(self) -> str | None:
        return self.meta.get("detector_name")

    @property
    def ids(self) -> list[str]:
        return list(self._rows)

    def __len__(self):
        return len(self._rows)

    def __contains__(self, image_id):
        try:
            return image_id_key(image_id) in self._rows
        except ValueError:
            return False

    def row_of(self, image_id) -> int:
        key = image_id_key(image_id)
        if key not in self._rows:
            raise KeyError(f"image id {image_id!r} is not in the feature store {str(self.path)!r} ({len(self)} images)")
        return self._rows[key]

    def __getitem__(self, image_id) -> dict:
        """The image's row: numpy arrays (`features` (R, D) float32, `boxes` (R, 4), ...) and ints, copied out of
        the memory-mapped store (a few hundred KB for a 36x2048 image; the store itself is never copied)."""
        row = self.row_of(image_id)
        return {name: self._value(name, row) for name in self.dataset.column_names}

    def _value(self, name, row):
        # pyarrow directly: ~30 us per 36x2048 row, where datasets' numpy formatting takes ~4 ms
        if name not in self._columns:
            chunks = self.dataset.data.table.column(name).chunks
            starts = np.cumsum([0] + [len(chunk) for chunk in chunks])
            self._columns[name] = (chunks, starts)
        chunks, starts = self._columns[name]
        index = int(np.searchsorted(starts, row, side="right")) - 1
        array = chunks[index]
        array = getattr(array, "storage", array)  # datasets' Array2D extension type wraps a list<list<...>>
        value = array[row - int(starts[index])]
        if not hasattr(value, "values"):  # a scalar column (id, width, height)
            return value.as_py()
        values = value.values
        if hasattr(values, "flatten") and hasattr(values.type, "value_type"):  # (R, width) matrix
            width = self.dataset.features[name].shape[1]
            return np.array(values.flatten().to_numpy(zero_copy_only=False)).reshape(-1, width)
        return np.array(values.to_numpy(zero_copy_only=False))

    def missing(self, image_ids: Iterable) -> list:
        """The ids of `image_ids` the store lacks (each once, in order)."""
        seen, out = set(), []
        for image_id in image_ids:
            key = image_id_key(image_id)
            if key not in self._rows and key not in seen:
                seen.add(key)
                out.append(image_id)
        return out

    def region_columns(self, image_id) -> dict:
        """The columns a task example needs: `region_features`, `boxes`, `image_width`, `image_height`."""
        row = self[image_id]
        return {
            "region_features": row["features"],
            "boxes": row["boxes"],
            "image_width": int(row["image_width"]),
            "image_height": int(row["image_height"]),
        }


# ------------------------------------------------------------------------------------------------------------------
# task datasets that hold ids
# ------------------------------------------------------------------------------------------------------------------


def with_region_features(dataset, store: FeatureStore, id_column: str = "image_id"):
    """`dataset` (one row per question / caption, holding `id_column`) with `region_features`, `boxes`,
    `image_width`, `image_height` fetched from `store` on access (`datasets.Dataset.with_transform`): the dataset
    itself holds ids only. Every id must be in the store (`ValueError` naming the missing ones)."""
    if id_column not in dataset.column_names:
        raise ValueError(f"the dataset has no {id_column!r} column (columns: {dataset.column_names})")
    missing = store.missing(dataset.unique(id_column))
    if missing:
        raise ValueError(
            f"the feature store has no features for {len(missing)} image(s) of the dataset, e.g. {missing[:5]}; "
            "extract them (hf-vlp extract resumes) or filter the rows"
        )
    columns = [name for name in dataset.column_names]

    def fetch(batch):
        out = {name: batch[name] for name in columns}
        regions = [store.region_columns(image_id) for image_id in batch[id_column]]
        for name in ("region_features", "boxes", "image_width", "image_height"):
            out[name] = [region[name] for region in regions]
        return out

    return dataset.with_transform(fetch)


class StoreFeaturesCollator:
    """Wraps a collator: each example (a dict with `id_column`) gets its image's region columns from `store` just
    before `collator` sees it. The examples, and the dataset behind them, hold ids only."""

    def __init__(self, store: FeatureStore, collator, id_column: str = "image_id"):
        self.store, self.collator, self.id_column = store, collator, id_column

    def __call__(self, examples):
        filled = []
        for example in examples:
            if self.id_column not in example:
                raise ValueError(f"an example has no {self.id_column!r}: {sorted(example)}")
            filled.append({**example, **self.store.region_columns(example[self.id_column])})
        return self.collator(filled)


# ------------------------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------------------------


def extract_to_store(
    detector,
    images,
    output: str | os.PathLike,
    batch_size: int = 8,
    shard_size: int = 1000,
    id_pattern: str | None = None,
    keep: Sequence[str] = (),
    progress: bool = True,
) -> FeatureStore:
    """Run `detector` (the contract of hf_vlp.processing.images) over `images` (directory, glob or list of paths)
    and write its regions to the store at `output`, `batch_size` images per detector call and `shard_size` images
    per shard. Ids already in the store are skipped (resumable); `keep` adds optional detector outputs
    (`OPTIONAL_COLUMNS`). Returns the store."""
    from datasets.arrow_writer import ArrowWriter

    from ..processing.images import detector_feature_dim, detector_name, load_image, run_detector

    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    unknown = sorted(set(keep) - set(OPTIONAL_COLUMNS))
    if unknown:
        raise ValueError(f"`keep` may name {list(OPTIONAL_COLUMNS)}, got {unknown}")
    feature_dim = detector_feature_dim(detector)
    if feature_dim is None:
        raise ValueError(f"the detector ({type(detector).__name__}) must report its `feature_dim`")
    files = list_images(images)
    ids = [image_id_from_path(path, id_pattern) for path in files]
    duplicates = sorted(i for i, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ValueError(f"several files map to the same image id, e.g. {duplicates[:5]}; pass --id_pattern")

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    meta_file = output / "store.json"
    meta = dict(
        format_version=STORE_FORMAT_VERSION,
        detector_name=detector_name(detector),
        feature_dim=feature_dim,
        extra_columns={},
    )
    if meta_file.exists():
        previous = json.loads(meta_file.read_text())
        if (previous["detector_name"], previous["feature_dim"]) != (meta["detector_name"], feature_dim):
            raise ValueError(
                f"{str(output)!r} holds {previous['feature_dim']}-d features of {previous['detector_name']!r}; this "
                f"detector gives {feature_dim}-d features of {meta['detector_name']!r}: write to another store"
            )
        if sorted(previous.get("extra_columns", {})) != sorted(keep):
            raise ValueError(
                f"{str(output)!r} keeps {sorted(previous.get('extra_columns', {}))}, not {sorted(keep)}: resume with "
                "the same --keep"
            )
        meta = previous
    for stale in output.glob("*.arrow.tmp"):  # an interrupted shard: its images are extracted again
        stale.unlink()
    meta_written = meta_file.exists()
    done = FeatureStore(output) if meta_written else None
    todo = [(path, i) for path, i in zip(files, ids) if done is None or i not in done]
    next_shard = len(list(output.glob("part-*.arrow")))

    bar = _progress(len(files), len(files) - len(todo), progress)
    writer, in_shard, shard_path = None, 0, None
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            pictures = [load_image(path, "images") for path, _ in chunk]
            regions = run_detector(detector, pictures)
            if not meta_written:  # the optional columns' shapes are known from the first detector output
                meta["extra_columns"] = _extra_columns(regions[0], keep)
                meta_file.write_text(json.dumps(meta, indent=2))
                meta_written = True
            schema = _features_schema(feature_dim, {k: tuple(v) for k, v in meta["extra_columns"].items()})
            rows = {name: [] for name in schema}
            for (_, image_id), region in zip(chunk, regions):
                if region["features"].shape[1] != feature_dim:
                    raise ValueError(
                        f"the detector reported feature_dim {feature_dim} but gave {region['features'].shape[1]}-d "
                        "features"
                    )
                height, width = region["image_size"]
                rows["image_id"].append(image_id)
                rows["features"].append(region["features"])
                rows["boxes"].append(region["boxes"])
                rows["image_width"].append(int(width))
                rows["image_height"].append(int(height))
                for name in meta["extra_columns"]:
                    if name not in region:
                        raise ValueError(f"--keep {name}: the detector's regions of {image_id!r} have no {name!r}")
                    rows[name].append(np.asarray(region[name]))
            for offset in range(len(chunk)):
                if writer is None:
                    shard_path = output / SHARD_PATTERN.format(next_shard)
                    writer = ArrowWriter(features=schema, path=str(shard_path) + ".tmp")
                    in_shard = 0
                writer.write({name: values[offset] for name, values in rows.items()})
                in_shard += 1
                if in_shard == shard_size:
                    _close_shard(writer, shard_path)
                    writer, next_shard = None, next_shard + 1
            bar.update(len(chunk))
        if writer is not None:
            _close_shard(writer, shard_path)
            writer = None
    finally:
        bar.close()
        if writer is not None:  # interrupted: drop the partial shard (its images are redone on resume)
            writer.close()
            Path(str(shard_path) + ".tmp").unlink(missing_ok=True)
    return FeatureStore(output)


def _extra_columns(region: dict, keep) -> dict:
    extra = {}
    for name in keep:
        if name not in region:
            raise ValueError(f"--keep {name}: the detector gives no {name!r} (it gives {sorted(region)})")
        value = np.asarray(region[name])
        dtype = "float32" if value.dtype.kind == "f" else "int32"
        extra[name] = (dtype, int(value.shape[1]) if value.ndim == 2 else None)
    return extra


def _close_shard(writer, shard_path: Path):
    writer.finalize()
    writer.close()
    os.replace(str(shard_path) + ".tmp", shard_path)  # a shard appears only when complete


def _progress(total: int, done: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="img", desc="extract", disable=not enabled)


__all__ = [
    "OPTIONAL_COLUMNS",
    "FeatureStore",
    "StoreFeaturesCollator",
    "extract_to_store",
    "image_id_from_path",
    "image_id_key",
    "list_images",
    "with_region_features",
]
