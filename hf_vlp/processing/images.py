"""Images in, region features out: loading photos and the duck-typed detector contract of hf_vlp's region processors.

**Images.** `load_image` accepts a file path (`str` / `os.PathLike`), a `PIL.Image.Image` or a numpy array (H, W),
(H, W, 1), (H, W, 3) or (H, W, 4), uint8 or float in [0, 1]. Every image becomes an 8-bit RGB PIL image:

* grayscale (PIL modes "L", "1", "I", "F", or 2-d / 1-channel arrays) is repeated into the three channels;
* transparency (RGBA, LA, palette images with a transparent colour, 4-channel arrays) is composited onto a white
  background, as transformers' `convert_to_rgb` does (a detector trained on photos never saw an alpha channel;
  dropping alpha would turn transparent pixels into whatever colour they happen to store, often black);
* CMYK, YCbCr, palette images: PIL's conversion to RGB.

An image with a zero side, a path that is not a file, a file that is not an image, or any other type is a
`ValueError` naming the argument and what was received.

**Detectors.** A region processor that receives `images` needs a detector, an object with

    detector.extract_regions(images: list[PIL.Image.Image]) -> list[dict]
    detector.feature_dim: int
    detector.detector_name: str

where each dict has `features` float32 (R, D), `boxes` (R, 4) x1y1x2y2 in raw-image pixels, `normalized_boxes`
(R, 4) in [0, 1], `image_size` (h, w), and optionally `class_probs` (R, K), `object_ids`, `attribute_ids`
(`hf_vlp.modeling.bottom_up.BottomUpDetector` implements it). A box-conditioned extractor, an object with
`extract(images, boxes) -> list of (N_i, D)` such as the shapes world's `hf_vlp.data.RegionFeatureExtractor`, gives
features for boxes the caller supplies (`processor(images=..., boxes=..., detector=extractor)`); `BoxFeatureDetector`
turns one into a full detector by proposing a fixed grid of boxes ("grid features", Jiang et al. 2020).

A detector saved with a processor is rebuilt from its class's `from_pretrained` (`load_detector`); only classes
inside `hf_vlp` or registered with `register_detector_class` are loaded from a saved config.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# the detector outputs a region processor reads (required) and may read (optional)
REQUIRED_REGION_KEYS = ("features", "boxes", "image_size")
# detector classes outside hf_vlp that a saved processor may name (dotted path -> class)
_DETECTOR_CLASSES: dict[str, type] = {}


def load_image(image, name: str = "images", index: int | None = None):
    """`image` (path, PIL image or numpy array) as an 8-bit RGB `PIL.Image.Image` (module docstring)."""
    from PIL import Image, UnidentifiedImageError

    where = f"`{name}`" if index is None else f"`{name}[{index}]`"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise ValueError(f"{where}: {str(image)!r} is not an image file.")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{where}: cannot read {str(path)!r} as an image ({error}).") from None
    elif isinstance(image, np.ndarray):
        image = _array_to_pil(image, where)
    elif not isinstance(image, Image.Image):
        raise ValueError(
            f"{where} must be a file path, a PIL image or a numpy array (H, W[, C]), got {type(image).__name__}."
        )
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{where} is empty ({image.width}x{image.height} pixels).")
    return _to_rgb(image)


def load_images(images, name: str = "images") -> list:
    """One image or a list of images -> a list of RGB PIL images."""
    if images is None:
        raise ValueError(f"`{name}` is None: pass one image or a list of images.")
    if isinstance(images, (str, os.PathLike, np.ndarray)) or hasattr(images, "getbands"):
        if not (isinstance(images, np.ndarray) and images.ndim == 4):
            return [load_image(images, name)]
    images = list(images)
    if not images:
        raise ValueError(f"`{name}` is empty: pass at least one image.")
    return [load_image(image, name, index) for index, image in enumerate(images)]


def _array_to_pil(array: np.ndarray, where: str):
    from PIL import Image

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(
            f"{where} must be an array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (channels last), got shape "
            f"{array.shape}."
        )
    if 0 in array.shape[:2]:
        raise ValueError(f"{where} is empty (array of shape {array.shape}).")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"{where}: float arrays must hold finite values in [0, 1], got [{np.nanmin(array)}, "
                f"{np.nanmax(array)}] (pass uint8 for 0-255 pixels)."
            )
        array = np.round(array * 255)
    elif array.dtype != np.uint8:
        if array.dtype.kind not in "biu" or array.min() < 0 or array.max() > 255:
            raise ValueError(f"{where}: integer arrays must hold 0-255 pixels, got dtype {array.dtype}.")
    array = np.ascontiguousarray(array.astype(np.uint8))
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[array.shape[-1] if array.ndim == 3 else 2]
    return Image.fromarray(array, mode=mode)


def _to_rgb(image):
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "F"):  # 16/32-bit grayscale: rescale to 8 bits instead of clipping
        values = np.asarray(image, dtype=np.float64)
        low, high = values.min(), values.max()
        scaled = np.zeros_like(values) if high == low else (values - low) / (high - low) * 255
        image = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# ------------------------------------------------------------------------------------------------------------------
# the detector contract
# ------------------------------------------------------------------------------------------------------------------


def is_detector(obj) -> bool:
    """Whether `obj` proposes its own regions (`extract_regions`)."""
    return callable(getattr(obj, "extract_regions", None))


def is_box_extractor(obj) -> bool:
    """Whether `obj` pools features for given boxes (`extract(images, boxes)`)."""
    return callable(getattr(obj, "extract", None))


def detector_feature_dim(detector) -> int | None:
    dim = getattr(detector, "feature_dim", None)
    return int(dim) if isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) else None


def detector_name(detector) -> str:
    name = getattr(detector, "detector_name", None)
    return str(name) if name else type(detector).__name__


def run_detector(detector, images: list) -> list[dict]:
    """`detector.extract_regions(images)`, checked: one dict per image with 2-d `features`, (R, 4) `boxes` and an
    `image_size` that matches the image. Returns numpy arrays (features float32)."""
    if not is_detector(detector):
        raise ValueError(
            f"`detector` must have `extract_regions(images) -> list[dict]` (e.g. hf_vlp.modeling.bottom_up."
            f"BottomUpDetector); {type(detector).__name__} has not. A box-conditioned extractor "
            "(`extract(images, boxes)`) needs `boxes`, or wrap it in hf_vlp.processing.images.BoxFeatureDetector."
        )
    regions = detector.extract_regions(images)
    if not isinstance(regions, (list, tuple)) or len(regions) != len(images):
        count = len(regions) if isinstance(regions, (list, tuple)) else type(regions).__name__
        raise ValueError(
            f"{detector_name(detector)}.extract_regions returned {count} results for {len(images)} images."
        )
    checked = []
    for index, (image, region) in enumerate(zip(images, regions)):
        missing = [key for key in REQUIRED_REGION_KEYS if key not in region]
        if missing:
            raise ValueError(f"{detector_name(detector)}: the regions of image {index} lack {missing}.")
        features = _numpy(region["features"], np.float32)
        boxes = _numpy(region["boxes"], np.float32)
        if features.ndim != 2 or boxes.shape != (len(features), 4):
            raise ValueError(
                f"{detector_name(detector)}: image {index} gave features {features.shape} and boxes {boxes.shape}; "
                "expected (R, D) and (R, 4)."
            )
        height, width = (int(v) for v in _numpy(region["image_size"], np.int64).reshape(-1)[:2])
        if (width, height) != image.size:
            raise ValueError(
                f"{detector_name(detector)}: image {index} is {image.width}x{image.height} but its regions report "
                f"image_size (h, w) = ({height}, {width}); boxes must be in raw-image pixels."
            )
        out = {key: _numpy(value) for key, value in region.items()}
        out.update(features=features, boxes=boxes, image_size=(height, width))
        checked.append(out)
    return checked


def _numpy(value, dtype=None):
    import torch

    if torch.is_tensor(value):
        value = value.detach().cpu()
        value = value.float() if value.is_floating_point() else value
        value = value.numpy()
    return np.asarray(value, dtype=dtype)


class BoxFeatureDetector:
    """A detector (the contract above) from a box-conditioned feature extractor (`extract(images, boxes)`, e.g.
    `hf_vlp.data.RegionFeatureExtractor`) and a fixed `rows` x `cols` grid of boxes over each image, plus the whole
    image as the first region when `whole_image` is set. Grid features are a known detector-free baseline for VQA
    (Jiang et al., "In Defense of Grid Features for Visual Question Answering", CVPR 2020); they are not what a
    checkpoint trained on bottom-up-attention features expects, which is why the name is recorded with the model.
    """

    def __init__(self, extractor, rows: int = 3, cols: int = 3, whole_image: bool = True, name: str | None = None):
        if not is_box_extractor(extractor):
            raise ValueError(f"`extractor` must have `extract(images, boxes)`, got {type(extractor).__name__}.")
        for label, value in (("rows", rows), ("cols", cols)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{label}` must be a positive int, got {value!r}.")
        self.extractor, self.rows, self.cols, self.whole_image = extractor, rows, cols, whole_image
        self.detector_name = name or f"grid{rows}x{cols}-{type(extractor).__name__}"

    @property
    def feature_dim(self):
        return detector_feature_dim(self.extractor)

    def grid_boxes(self, width: int, height: int) -> np.ndarray:
        xs = np.linspace(0, width, self.cols + 1, dtype=np.float32)
        ys = np.linspace(0, height, self.rows + 1, dtype=np.float32)
        boxes = [[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(self.rows) for c in range(self.cols)]
        if self.whole_image:
            boxes.insert(0, [0, 0, width, height])
        return np.asarray(boxes, dtype=np.float32)

    def extract_regions(self, images) -> list[dict]:
        boxes = [self.grid_boxes(*image.size) for image in images]
        features = self.extractor.extract(images, boxes)
        regions = []
        for image, box, feats in zip(images, boxes, features):
            width, height = image.size
            regions.append(
                dict(
                    features=np.asarray(feats, dtype=np.float32),
                    boxes=box,
                    normalized_boxes=box / np.array([width, height, width, height], dtype=np.float32),
                    image_size=(height, width),
                )
            )
        return regions


def register_detector_class(cls, name: str | None = None) -> type:
    """Allow a saved processor to name `cls` (outside hf_vlp) as its detector; usable as a class decorator."""
    if not isinstance(cls, type) or not callable(getattr(cls, "from_pretrained", None)):
        raise ValueError(f"a detector class needs `from_pretrained`, got {cls!r}.")
    _DETECTOR_CLASSES[name or f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def detector_class_path(detector) -> str:
    cls = type(detector)
    return f"{cls.__module__}.{cls.__qualname__}"


def load_detector(class_path: str, name_or_path, **kwargs):
    """`class.from_pretrained(name_or_path, **kwargs)` for a detector class inside hf_vlp or registered with
    `register_detector_class` (a saved config never imports arbitrary code)."""
    if class_path in _DETECTOR_CLASSES:
        cls = _DETECTOR_CLASSES[class_path]
    elif isinstance(class_path, str) and class_path.startswith("hf_vlp."):
        from ..spec import resolve

        cls = resolve(class_path)
    else:
        raise ValueError(
            f"the processor names detector class {class_path!r}, which is neither inside hf_vlp nor registered: "
            "call hf_vlp.processing.images.register_detector_class(cls) first, or pass `detector=` yourself."
        )
    return cls.from_pretrained(name_or_path, **kwargs)


def load_detector_from_folder(path, detector_class: str | None = None):
    """A detector from a folder: `detector_class.from_pretrained(path)` when the class is named; else the detector
    of a saved region processor (its config names the class, the weights are in `detector/` or
    `detector_name_or_path`); else a model folder whose `config.json` `model_type` is a registered hf_vlp
    architecture (its base head class) or an Auto model."""
    import json

    folder = Path(path).expanduser()
    if detector_class is not None:
        return load_detector(detector_class, str(folder))
    if not folder.is_dir():
        raise ValueError(f"--detector {str(path)!r} is not a folder")
    for name in ("processor_config.json", "preprocessor_config.json"):
        config_file = folder / name
        if config_file.is_file():
            config = json.loads(config_file.read_text())
            config = config.get("image_processor", config)
            if config.get("detector_class"):
                source = config.get("detector_name_or_path") or str(folder / "detector")
                return load_detector(config["detector_class"], source)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"--detector {str(path)!r} holds neither a processor with a detector nor a model config.json")
    model_type = json.loads(config_file.read_text()).get("model_type")
    from ..registry import ARCHITECTURES

    spec = next((s for s in ARCHITECTURES.values() if s.model_type == model_type), None)
    if spec is not None:
        detector = resolve_head(spec).from_pretrained(str(folder))
    else:
        from transformers import AutoModel

        detector = AutoModel.from_pretrained(str(folder))
    if not is_detector(detector):
        raise ValueError(
            f"the model in {str(path)!r} ({type(detector).__name__}) is not a detector (no extract_regions)"
        )
    return detector.eval() if hasattr(detector, "eval") else detector


def resolve_head(spec):
    """The class of an architecture's base head (or its first head)."""
    from ..spec import Task

    return spec.model_class(Task.BASE if Task.BASE in spec.heads else next(iter(spec.heads)))


__all__ = [
    "BoxFeatureDetector",
    "detector_class_path",
    "detector_feature_dim",
    "detector_name",
    "is_box_extractor",
    "is_detector",
    "load_detector",
    "load_detector_from_folder",
    "load_image",
    "load_images",
    "register_detector_class",
    "run_detector",
]
