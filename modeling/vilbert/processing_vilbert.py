"""ViLBERT processor: BERT uncased tokenizer + the shared region-feature processor with the whole-image region."""

import warnings

from hf_vlp.processing.region import RegionFeatureProcessor
from hf_vlp.processing.vl_processor import RegionTextProcessor


class VilbertProcessor(RegionTextProcessor):
    """`processor(text=[...], visual_feats=[...], boxes=[...], image_sizes=[(w, h), ...])` -> the keyword arguments
    of every ViLBERT model (`input_ids`, `attention_mask`, `token_type_ids`, `visual_feats`, `visual_pos`,
    `visual_attention_mask`).

    As the original data loaders (`ImageFeaturesH5Reader`), region 0 is the whole image: the mean of the image's
    region features with box [0, 0, 1, 1] (location `[0, 0, 1, 1, 1]` inside the model). The default region
    processor therefore has `add_global_region=True`; the released models saw at most 100 detector regions plus
    this global one (`max_regions=101`). The tokenizer is bert-base-uncased's (`do_lower_case=True`).
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        if image_processor is None:
            image_processor = RegionFeatureProcessor(add_global_region=True)
        elif not image_processor.add_global_region:
            # the visual pooler reads region 0: without the whole-image region it would pool one detection
            warnings.warn(
                "VilbertProcessor turns on `add_global_region` of its region processor: ViLBERT expects region 0 "
                "to be the whole image (set processor.image_processor.add_global_region=False afterwards to opt out)",
                stacklevel=2,
            )
            image_processor.add_global_region = True
        super().__init__(image_processor, tokenizer, **kwargs)
