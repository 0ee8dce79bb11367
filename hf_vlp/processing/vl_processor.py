"""`RegionTextProcessor`: tokenizer + `RegionFeatureProcessor` (+ an optional detector), the base of every region
model's processor.

Region inputs come either precomputed (`visual_feats` + `boxes` + `image_sizes`) or as `images` (paths, PIL images,
numpy arrays; `hf_vlp.processing.images.load_image` says how grayscale and RGBA are converted) run through a
detector: `processor(images=..., text=..., detector=...)`, or a detector attached once (`processor.detector = d`,
saved with the processor in its `detector/` subfolder). Both paths return the same fields. `images` are never
dropped: without a detector they are a `ValueError`.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from . import images as image_utils

DETECTOR_SUBFOLDER = "detector"


class RegionTextProcessor(ProcessorMixin):
    """Tokenizes `text` and pads region inputs; the output holds exactly the model's keyword arguments.

    Subclasses set `tokenizer_class` and may rename outputs (`output_names`) for models that take other names
    (e.g. VisualBERT's `visual_embeds`).

    Args:
        image_processor: a `RegionFeatureProcessor`; its `feature_dim` / `detector_name` / `max_regions` record the
            features the model expects (saved in `preprocessor_config.json`).
        tokenizer: the model's tokenizer.
        detector: optional; used when the processor is called with `images` (module docstring).
    """

    # the sub-processors are found through the Auto classes: `register_architecture` registers
    # RegionFeatureProcessor with AutoImageProcessor for the model's config
    output_names: dict = {}

    def __init__(self, image_processor=None, tokenizer=None, detector=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)
        self._detector = None
        self._detector_source = None  # (name_or_path, subfolder) of a saved detector, loaded on first use
        if detector is not None:
            self.detector = detector

    # ---- the detector -------------------------------------------------------------------------------------------

    @property
    def detector(self):
        """The attached detector; a detector saved with the processor is loaded on first access (None: none)."""
        if self._detector is None and self._detector_source is not None and self.image_processor.detector_class:
            name_or_path, subfolder = self._detector_source
            kwargs = {"subfolder": subfolder} if subfolder else {}
            self._detector = image_utils.load_detector(self.image_processor.detector_class, name_or_path, **kwargs)
            self._check_detector(self._detector)
        return self._detector

    @detector.setter
    def detector(self, detector):
        if detector is not None:
            if not (image_utils.is_detector(detector) or image_utils.is_box_extractor(detector)):
                raise ValueError(
                    "`detector` must have `extract_regions(images)` (a detector) or `extract(images, boxes)` (a "
                    f"box-conditioned extractor), got {type(detector).__name__}."
                )
            self._check_detector(detector)
            regions = self.image_processor
            regions.detector_name = image_utils.detector_name(detector)
            if regions.feature_dim is None:
                regions.feature_dim = image_utils.detector_feature_dim(detector)
            regions.detector_class = image_utils.detector_class_path(detector)
        self._detector = detector
        self._detector_source = None

    def _check_detector(self, detector):
        dim = image_utils.detector_feature_dim(detector)
        self.image_processor.check_feature_dim(dim, f"detector {image_utils.detector_name(detector)!r}")

    def to_dict(self):
        # the detector is a model, saved in its own subfolder, never deep-copied into the processor config
        detector = self.__dict__.pop("_detector", None)
        try:
            output = super().to_dict()
        finally:
            self._detector = detector
        output.pop("_detector_source", None)
        return output

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """As transformers' `save_pretrained`; an attached detector with `save_pretrained` is saved in the
        `detector/` subfolder (unless `image_processor.detector_name_or_path` points at where it lives)."""
        detector = self._detector
        if detector is not None and self.image_processor.detector_name_or_path is None:
            if not callable(getattr(detector, "save_pretrained", None)):
                raise ValueError(
                    f"the attached detector ({type(detector).__name__}) has no `save_pretrained`: set "
                    "`processor.image_processor.detector_name_or_path` to where it can be loaded from, or detach it "
                    "(`processor.detector = None`) before saving."
                )
            detector.save_pretrained(os.path.join(save_directory, DETECTOR_SUBFOLDER))
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        regions = processor.image_processor
        if getattr(regions, "detector_class", None):
            if regions.detector_name_or_path is not None:
                processor._detector_source = (regions.detector_name_or_path, None)
            elif Path(pretrained_model_name_or_path).is_dir():
                folder = Path(pretrained_model_name_or_path) / DETECTOR_SUBFOLDER
                processor._detector_source = (str(folder), None) if folder.is_dir() else None
            else:  # a Hub repository: the detector lives in its subfolder
                processor._detector_source = (str(pretrained_model_name_or_path), DETECTOR_SUBFOLDER)
        return processor

    # ---- images -> regions --------------------------------------------------------------------------------------

    def regions_from_images(self, images, boxes=None, detector=None) -> dict:
        """Run the detector on `images` (or pool the given `boxes` with a box-conditioned extractor).

        Returns per-image lists: `visual_feats` (R_i, D), `boxes` (R_i, 4) pixels, `image_sizes` (w, h), and
        `detections` (the detector's dicts; empty dicts for given boxes).
        """
        detector = detector if detector is not None else self.detector
        images = image_utils.load_images(images)
        if detector is None:
            raise ValueError(
                "`images` need a detector to become region features: pass `detector=` (e.g. hf_vlp.modeling."
                "bottom_up.BottomUpDetector.from_pretrained(...)), attach one with `processor.detector = ...`, or "
                "pass precomputed `visual_feats` and `boxes` instead of `images`."
            )
        self._check_detector(detector)
        sizes = [image.size for image in images]
        if boxes is not None:
            if not image_utils.is_box_extractor(detector):
                raise ValueError(
                    f"`boxes` were given with `images`, but {image_utils.detector_name(detector)} cannot pool given "
                    "boxes (it has no `extract(images, boxes)`); leave `boxes` out to use the detector's own regions."
                )
            if len(boxes) != len(images):
                raise ValueError(f"got {len(images)} images but {len(boxes)} `boxes` entries (one per image).")
            boxes = [image_utils._numpy(b, "float32").reshape(-1, 4) for b in boxes]
            features = detector.extract(images, boxes)
            if len(features) != len(images):
                raise ValueError(f"the extractor returned {len(features)} feature sets for {len(images)} images.")
            detections = [{} for _ in images]
        else:
            detections = image_utils.run_detector(detector, images)
            features = [region["features"] for region in detections]
            boxes = [region["boxes"] for region in detections]
        return dict(visual_feats=list(features), boxes=list(boxes), image_sizes=sizes, detections=detections)

    def _region_inputs(self, images, visual_feats, boxes, image_sizes, detector):
        """(visual_feats, boxes, image_sizes, detections): from `images` when given, else as passed."""
        if images is None:
            if detector is not None:
                raise ValueError("`detector` was given without `images`.")
            return visual_feats, boxes, image_sizes, None
        if visual_feats is not None:
            raise ValueError("pass either `images` (run through a detector) or precomputed `visual_feats`, not both.")
        if image_sizes is not None:
            raise ValueError("`image_sizes` are read from `images`: leave them out.")
        regions = self.regions_from_images(images, boxes, detector)
        return regions["visual_feats"], regions["boxes"], regions["image_sizes"], regions["detections"]

    # ---- the call -----------------------------------------------------------------------------------------------

    def __call__(
        self,
        text=None,
        visual_feats=None,
        boxes=None,
        image_sizes=None,
        images=None,
        detector=None,
        padding=True,
        truncation=True,
        max_length=None,
        return_tensors="pt",
        **region_fields,
    ):
        """`text` and either `images` (+ a detector) or `visual_feats` + `boxes` (+ `image_sizes` for pixel boxes).
        With `images`, `boxes` are optional: given, the detector must pool given boxes (`extract(images, boxes)`)."""
        visual_feats, boxes, image_sizes, _ = self._region_inputs(images, visual_feats, boxes, image_sizes, detector)
        if text is None and visual_feats is None and boxes is None:
            raise ValueError(
                "nothing to process: pass `text`, `visual_feats` with `boxes`, or both (or `images` with a detector)."
            )
        if visual_feats is None and boxes is None and (image_sizes is not None or region_fields):
            given = (["image_sizes"] if image_sizes is not None else []) + sorted(region_fields)
            raise ValueError(f"{', '.join(f'`{name}`' for name in given)} given without `visual_feats` and `boxes`.")
        data = {}
        if text is not None:
            data.update(
                self.tokenizer(
                    text,
                    padding=padding,
                    truncation=truncation,
                    max_length=max_length,
                    return_tensors=return_tensors,
                )
            )
        if visual_feats is not None or boxes is not None:
            regions = self.image_processor(
                visual_feats, boxes, image_sizes, return_tensors=return_tensors, **region_fields
            )
            if text is not None and len(regions["visual_feats"]) != len(data["input_ids"]):
                raise ValueError(
                    f"{len(data['input_ids'])} texts but {len(regions['visual_feats'])} images: `text` and "
                    "`visual_feats` need one entry per example."
                )
            data.update(regions)
        data = {self.output_names.get(k, k): v for k, v in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self):
        names = list(self.tokenizer.model_input_names) + list(self.image_processor.model_input_names)
        return [self.output_names.get(n, n) for n in names]
