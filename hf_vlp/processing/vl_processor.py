"""`RegionTextProcessor`: tokenizer + `RegionFeatureProcessor`, the base of every region model's processor."""

from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature


class RegionTextProcessor(ProcessorMixin):
    """Tokenizes `text` and pads region inputs; the output holds exactly the model's keyword arguments.

    Subclasses set `tokenizer_class` and may rename outputs (`output_names`) for models that take other names
    (e.g. VisualBERT's `visual_embeds`).
    """

    # the sub-processors are found through the Auto classes: `register_architecture` registers
    # RegionFeatureProcessor with AutoImageProcessor for the model's config
    output_names: dict = {}

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        text=None,
        visual_feats=None,
        boxes=None,
        image_sizes=None,
        padding=True,
        truncation=True,
        max_length=None,
        return_tensors="pt",
        **region_fields,
    ):
        if text is None and visual_feats is None and boxes is None:
            raise ValueError("nothing to process: pass `text`, `visual_feats` with `boxes`, or both.")
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
