"""Readers (and a writer) for the region-feature files people already have.

Both return one dict per image, the form `RegionFeatureProcessor` and `hf_vlp.data` loaders take, after refusing
(with the line / file and the image id) NaN or infinite values, boxes with x2 < x1 or y2 < y1 and non-positive sizes:

    {"image_id": int | str, "image_width": int, "image_height": int,
     "boxes": float32 (N, 4) pixel x1, y1, x2, y2, "features": float32 (N, D)}

* bottom-up-attention TSV (Anderson et al. 2018, `generate_tsv.py` of peteanderson80/bottom-up-attention): one
  line per image, tab-separated, no header, columns `image_id, image_w, image_h, num_boxes, boxes, features`,
  the last two base64-encoded float32 arrays of shape (num_boxes, 4) and (num_boxes, D). Used by LXMERT,
  ViLBERT, VisualBERT, UNITER's preprocessing.
* per-image `.npz` (detectron2 / py-bottom-up-attention extractors): features under `x` or `features`, boxes under
  `bbox` or `boxes`, sizes under `image_w` / `image_h` (or `image_width` / `image_height`), optional `num_bbox`.
"""

from __future__ import annotations

import base64
import csv
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

BUA_TSV_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
# Alternative key names accepted in .npz files, first match wins.
NPZ_KEYS = {
    "features": ("x", "features"),
    "boxes": ("bbox", "boxes"),
    "image_width": ("image_w", "image_width"),
    "image_height": ("image_h", "image_height"),
}


def _image_id(value: str) -> int | str:
    """COCO-style numeric ids become ints (as the original readers do); anything else stays a string."""
    return int(value) if value.isdigit() else value


def _decode(field: str, count: int, width: int | None, name: str, where: str) -> np.ndarray:
    try:
        flat = np.frombuffer(base64.b64decode(field, validate=True), dtype=np.float32)
    except ValueError as error:
        raise ValueError(f"{where}: column {name!r} is not valid base64 ({error})") from None
    if count == 0:
        return flat.reshape(0, width or 0)
    if width is None:  # feature dimension: whatever divides evenly
        if flat.size % count:
            raise ValueError(f"{where}: column {name!r} has {flat.size} floats, not a multiple of num_boxes={count}")
        width = flat.size // count
    if flat.size != count * width:
        raise ValueError(
            f"{where}: column {name!r} has {flat.size} floats, expected num_boxes * {width} = {count * width}"
        )
    return flat.reshape(count, width).copy()  # copy: frombuffer arrays are read-only


def _check_record(record: dict, where: str) -> dict:
    """Refuse values no model can use, naming the file position and image id: non-positive image sizes, NaN / inf
    boxes or features, boxes with x2 < x1 or y2 < y1."""
    where = f"{where} (image_id {record['image_id']!r})"
    if record["image_width"] <= 0 or record["image_height"] <= 0:
        raise ValueError(f"{where}: image size must be positive, got {record['image_width']}x{record['image_height']}")
    for name in ("boxes", "features"):
        finite = np.isfinite(record[name])
        if not finite.all():
            row, column = (int(i) for i in np.argwhere(~finite)[0])
            raise ValueError(
                f"{where}: {name} hold {int((~finite).sum())} NaN or infinite value(s), first at box "
                f"{row}, column {column}"
            )
    boxes = record["boxes"]
    flipped = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if flipped.any():
        row = int(np.argmax(flipped))
        raise ValueError(
            f"{where}: boxes must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1; box {row} is "
            f"{boxes[row].tolist()} ({int(flipped.sum())} such box(es))"
        )
    return record


def read_bua_tsv(path: str | os.PathLike, fieldnames: tuple[str, ...] = BUA_TSV_FIELDS) -> Iterator[dict]:
    """Iterate over a bottom-up-attention TSV file, one dict per image (module docstring).

    `fieldnames` names the columns when a file carries extra ones (e.g. `cls_prob`); the six standard columns
    must be among them. Extra columns are ignored.
    """
    missing = [name for name in BUA_TSV_FIELDS if name not in fieldnames]
    if missing:
        raise ValueError(f"fieldnames must include {BUA_TSV_FIELDS}, missing {missing}")
    # A row holds N x D float32 in base64 (100 x 2048 -> ~1.1 MB), far above csv's 128 KB default limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, newline="") as handle:
        for line_number, row in enumerate(csv.DictReader(handle, fieldnames=fieldnames, delimiter="\t"), start=1):
            where = f"{path}, line {line_number}"
            if None in row or any(row[name] is None for name in BUA_TSV_FIELDS):
                raise ValueError(f"{where}: expected {len(fieldnames)} tab-separated columns {fieldnames}")
            try:
                num_boxes, width, height = int(row["num_boxes"]), int(float(row["image_w"])), int(float(row["image_h"]))
            except (ValueError, OverflowError):  # OverflowError: int(float("inf"))
                raise ValueError(
                    f"{where}: num_boxes / image_w / image_h must be finite numbers, got "
                    f"{row['num_boxes']!r} / {row['image_w']!r} / {row['image_h']!r}"
                ) from None
            if num_boxes < 0:
                raise ValueError(f"{where}: num_boxes must be >= 0, got {num_boxes}")
            yield _check_record(
                {
                    "image_id": _image_id(row["image_id"]),
                    "image_width": width,
                    "image_height": height,
                    "boxes": _decode(row["boxes"], num_boxes, 4, "boxes", where),
                    "features": _decode(row["features"], num_boxes, None, "features", where),
                },
                where,
            )


def write_bua_tsv(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write dicts in the reader's form (image_id, image_width, image_height, boxes (N, 4), features (N, D)) as a
    bottom-up-attention TSV. Returns the number of images written."""
    written = 0
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        for index, record in enumerate(records):
            missing = [k for k in ("image_id", "image_width", "image_height", "boxes", "features") if k not in record]
            if missing:
                raise ValueError(f"records[{index}] is missing {missing}")
            boxes = np.asarray(record["boxes"], dtype=np.float32)
            features = np.asarray(record["features"], dtype=np.float32)
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(f"records[{index}]['boxes'] must have shape (N, 4), got {boxes.shape}")
            if features.ndim != 2 or features.shape[0] != boxes.shape[0]:
                raise ValueError(
                    f"records[{index}]['features'] must have shape (N={boxes.shape[0]}, D), got {features.shape}"
                )
            _check_record({**record, "boxes": boxes, "features": features}, f"records[{index}]")
            writer.writerow(
                [
                    record["image_id"],
                    int(record["image_width"]),
                    int(record["image_height"]),
                    boxes.shape[0],
                    base64.b64encode(boxes.tobytes()).decode("ascii"),
                    base64.b64encode(features.tobytes()).decode("ascii"),
                ]
            )
            written += 1
    return written


def _npz_value(data, path, name: str):
    for key in NPZ_KEYS[name]:
        if key in data.files:
            return data[key]
    raise ValueError(f"{path}: no {name} array; expected one of the keys {NPZ_KEYS[name]}, found {data.files}")


def read_npz_features(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[dict]:
    """Iterate over per-image `.npz` feature files: a file, a directory (every `*.npz` in it, sorted) or a list.

    `image_id` comes from an `image_id` array in the file when present, else from the file name (stem; numeric
    stems become ints).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = sorted(Path(paths).glob("*.npz")) if Path(paths).is_dir() else [paths]
    for path in paths:
        with np.load(path, allow_pickle=False) as data:
            boxes = np.asarray(_npz_value(data, path, "boxes"), dtype=np.float32)
            features = np.asarray(_npz_value(data, path, "features"), dtype=np.float32)
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(f"{path}: boxes must have shape (N, 4), got {boxes.shape}")
            if features.ndim != 2 or features.shape[0] != boxes.shape[0]:
                raise ValueError(f"{path}: features must have shape (N={boxes.shape[0]}, D), got {features.shape}")
            if "num_bbox" in data.files and int(data["num_bbox"]) != boxes.shape[0]:
                raise ValueError(f"{path}: num_bbox={int(data['num_bbox'])} but boxes has {boxes.shape[0]} rows")
            image_id = data["image_id"].item() if "image_id" in data.files else _image_id(Path(path).stem)
            sizes = _npz_value(data, path, "image_width"), _npz_value(data, path, "image_height")
            try:
                width, height = int(sizes[0]), int(sizes[1])
            except (TypeError, ValueError, OverflowError):  # NaN / inf / an array instead of a number
                raise ValueError(
                    f"{path}: the image width / height must be finite numbers, got {sizes[0]!r} / {sizes[1]!r}"
                ) from None
            yield _check_record(
                {
                    "image_id": image_id,
                    "image_width": width,
                    "image_height": height,
                    "boxes": boxes,
                    "features": features,
                },
                str(path),
            )
