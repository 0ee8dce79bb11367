"""VisualBERT processor: BERT uncased tokenizer + the shared region-feature processor, producing exactly the keyword
arguments of transformers' VisualBERT classes (`visual_embeds`, `visual_attention_mask`, `visual_token_type_ids`).

VisualBERT uses no boxes (region position ids are all 0 in the original), so `boxes` are optional here and no
`visual_pos` is returned. Region token types are 0, as the original uses for COCO, VQA, VCR and Flickr; NLVR2 inputs
give 0 / 1 per image (`visual_token_type_ids`, one array per example).
"""

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature

from hf_vlp.processing.vl_processor import RegionTextProcessor


class VisualBertProcessor(RegionTextProcessor):
    """`processor(text=[...], visual_feats=[(N_i, D), ...])` -> `input_ids`, `token_type_ids`, `attention_mask`,
    `visual_embeds`, `visual_attention_mask`, `visual_token_type_ids`.

    * `text_pair`: second segments (token type 1), as in the original two-caption pre-training.
    * `question_answering=True`: appends `[MASK]` to every question, the original VQA input
      `[CLS] question ? [MASK] [SEP]`: `VisualBertForVisualQuestionAnswering` reads the answer at that token
      (`attention_mask.sum(1) - 2`; the tokenizer pads on the right).
    * `boxes` / `image_sizes` are accepted (and validated) but not returned: VisualBERT has no box input.
    * `images` (+ `detector`, or an attached `processor.detector`) instead of `visual_feats`: see
      `RegionTextProcessor`.
    """

    output_names = {"visual_feats": "visual_embeds"}

    def __call__(
        self,
        text=None,
        visual_feats=None,
        boxes=None,
        image_sizes=None,
        text_pair=None,
        visual_token_type_ids=None,
        question_answering=False,
        images=None,
        detector=None,
        padding=True,
        truncation=True,
        max_length=None,
        return_tensors="pt",
        **region_fields,
    ):
        visual_feats, boxes, image_sizes, _ = self._region_inputs(images, visual_feats, boxes, image_sizes, detector)
        data = {}
        if text is not None:
            if isinstance(text, str):
                text = [text]
            if question_answering:
                text = [f"{question} {self.tokenizer.mask_token}" for question in text]
            encoded = self.tokenizer(
                text, text_pair, padding=padding, truncation=truncation, max_length=max_length, return_tensors="pt"
            )
            if question_answering and truncation and max_length is not None:
                answer_tokens = encoded["input_ids"].gather(1, (encoded["attention_mask"].sum(1, keepdim=True) - 2))
                if (answer_tokens != self.tokenizer.mask_token_id).any():
                    raise ValueError(f"a question is longer than max_length={max_length}: its [MASK] was truncated.")
            data.update(encoded)
        if visual_feats is not None:
            if boxes is None:  # VisualBERT has no box input: validate and pad the features alone
                boxes = [np.zeros((len(f), 4), dtype=np.float32) for f in visual_feats]
                image_sizes = [(1, 1)] * len(boxes)
            if visual_token_type_ids is not None:
                region_fields["visual_token_type_ids"] = list(
                    visual_token_type_ids
                )  # ids: checked by the region processor
            regions = self.image_processor(visual_feats, boxes, image_sizes, return_tensors="pt", **region_fields)
            if text is not None and len(regions["visual_feats"]) != len(data["input_ids"]):
                raise ValueError(
                    f"{len(data['input_ids'])} texts but {len(regions['visual_feats'])} images: each text needs one."
                )
            regions = dict(regions)
            regions.pop("visual_pos")
            types = regions.pop("visual_token_type_ids", None)
            if types is None:
                types = torch.zeros_like(regions["visual_attention_mask"])
            if types.max() >= 2 if types.numel() else False:
                raise ValueError("`visual_token_type_ids` must be 0 or 1 (VisualBERT has two region token types).")
            regions["visual_token_type_ids"] = types.clamp(min=0)  # padding (-100) -> 0
            data.update({self.output_names.get(k, k): v for k, v in regions.items()})
        elif boxes is not None:
            raise ValueError("`boxes` were given without `visual_feats`.")
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self):
        return list(self.tokenizer.model_input_names) + [
            "visual_embeds",
            "visual_attention_mask",
            "visual_token_type_ids",
        ]
