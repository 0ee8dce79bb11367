"""Oscar / VinVL processor: BERT uncased WordPiece tokenizer + object tags + the shared region-feature processor.

Oscar's text is a BERT sentence pair: `[CLS] text [SEP] tags [SEP]`, segment 0 for the text, 1 for the tags. The tags
are the detector's class names of the image's regions, in region order, joined by spaces (`run_vqa.py`:
`line['o'].replace(';', ' ')`), so they come with the region data (`region_labels`), never from the user's text.
The pair is truncated as BERT's `_truncate_seq_pair`: the last token of the longer part goes first.

Boxes become `visual_pos` (normalized x1,y1,x2,y2); the model appends the 6-d `[x1, y1, x2, y2, w, h]` vector to
each feature itself (docs/design.md, "Input vocabulary": one region processor for every
model).
"""

import torch
from transformers.feature_extraction_utils import BatchFeature

from hf_vlp.processing.vl_processor import RegionTextProcessor


class OscarProcessor(RegionTextProcessor):
    r"""
    `processor(text=[...], visual_feats=[...], boxes=[...], image_sizes=[(w, h), ...], region_labels=[...])` -> the
    keyword arguments of every Oscar model.

    Args:
        image_processor: a `RegionFeatureProcessor`.
        tokenizer: BERT uncased WordPiece tokenizer (the released models use bert-base-uncased's vocabulary).
        region_class_names: detector class names, to turn integer `region_labels` into tags (e.g. the 1600 Visual
            Genome classes of bottom-up attention, or `hf_vlp.data.SHAPES_CLASSES`).
        use_tags: Oscar models are trained with tags, so `region_labels` is required with a text; set False for a
            model trained without them (the original's `add_od_labels=False`).

    Call arguments:
        text: the caption / question / statement per example (segment 0), or None for the tags alone.
        region_labels: per image, the detector class of each region (names, or ids into `region_class_names`);
            tags are taken for the regions kept by the region processor (`max_regions`). None: no tag segment.
        caption_length: captioning layout (`run_captioning.py`): `[CLS] caption [SEP]` truncated / padded with [PAD]
            to this length, tags after it, so the tags sit at the positions `generate()` gives them
            (`config.caption_tag_position_offset` = this length).
        max_length: total text length (tokens); longer pairs are truncated longest-part-first.

    `images` (+ `detector`, or an attached `processor.detector`) replace `visual_feats` / `boxes` / `image_sizes`; the
    tags are then the detector's `object_ids` (named by `region_class_names`, or by the detector's `object_names`)
    unless `region_labels` are given.

    With `text=None` the output text is the tag segment alone (`tags [SEP]`, segment 1), the input of
    `OscarForConditionalGeneration.generate()`.
    """

    def __init__(self, image_processor=None, tokenizer=None, region_class_names=None, use_tags=True, **kwargs):
        self.region_class_names = list(region_class_names) if region_class_names is not None else None
        self.use_tags = use_tags
        super().__init__(image_processor, tokenizer, **kwargs)

    def _detected_tags(self, detections, detector):
        """The detector's object classes as tags: ids into `region_class_names`, or names when the processor has
        none and the detector names its classes (`object_names`)."""
        names = getattr(detector, "object_names", None)
        if self.region_class_names is None and names is not None:
            return [[names[int(i)] for i in d["object_ids"]] for d in detections]
        return [d["object_ids"] for d in detections]

    def tags_for(self, region_labels, num_regions=None):
        """One tag string per image: class names of its regions (the first `num_regions`), joined by spaces."""
        tags = []
        for index, labels in enumerate(region_labels):
            labels = labels.tolist() if torch.is_tensor(labels) or hasattr(labels, "tolist") else list(labels)
            if num_regions is not None:
                labels = labels[: num_regions[index]]
            names = []
            for label in labels:
                if isinstance(label, str):
                    names.append(label)
                elif self.region_class_names is None:
                    raise ValueError(
                        "`region_labels` holds class ids: build the processor with `region_class_names` to name them."
                    )
                elif not (float(label).is_integer() and 0 <= int(label) < len(self.region_class_names)):
                    raise ValueError(f"`region_labels[{index}]` holds {label}, not an id into region_class_names.")
                else:
                    names.append(self.region_class_names[int(label)])
            # the original joins the label strings with spaces; multi-word names stay several words
            tags.append(" ".join(name.replace(";", " ").strip() for name in names))
        return tags

    def __call__(
        self,
        text=None,
        visual_feats=None,
        boxes=None,
        image_sizes=None,
        region_labels=None,
        caption_length=None,
        images=None,
        detector=None,
        padding=True,
        truncation=True,
        max_length=None,
        return_tensors="pt",
        **region_fields,
    ):
        visual_feats, boxes, image_sizes, detections = self._region_inputs(
            images, visual_feats, boxes, image_sizes, detector
        )
        if region_labels is None and detections and all("object_ids" in d for d in detections):
            region_labels = self._detected_tags(detections, detector if detector is not None else self.detector)
        if region_labels is None and (self.use_tags or text is None):
            raise ValueError(
                "Oscar pairs the text with the object tags of the image: pass `region_labels` (the detector class of "
                "each region, names or ids into `region_class_names`), or build the processor with use_tags=False."
            )
        data = {}
        num_regions = None
        if visual_feats is not None or boxes is not None:
            regions = self.image_processor(
                visual_feats, boxes, image_sizes, return_tensors=return_tensors, **region_fields
            )
            data.update(regions)
            num_regions = [int(n) for n in torch.as_tensor(regions["visual_attention_mask"]).sum(-1).tolist()]
            if self.image_processor.add_global_region:
                raise ValueError("Oscar has no whole-image region: build the RegionFeatureProcessor without it.")
        texts = [text] if isinstance(text, str) else text
        tags = None
        if region_labels is not None:
            tags = self.tags_for(region_labels, num_regions)
            if texts is not None and len(tags) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(tags)} `region_labels` entries: one per example.")
        if texts is not None and num_regions is not None and len(texts) != len(num_regions):
            raise ValueError(f"{len(texts)} texts but {len(num_regions)} images: each text needs its image.")
        rows = self._encode_rows(texts, tags, caption_length, truncation, max_length)
        data.update(self._pad(rows, padding, max_length))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _encode_rows(self, texts, tags, caption_length, truncation, max_length):
        """Lists of (input_ids, token_type_ids, attention_mask) per example."""
        tokenizer = self.tokenizer
        cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        count = len(texts) if texts is not None else len(tags)
        rows = []
        for i in range(count):
            tag_ids = tokenizer.encode(tags[i], add_special_tokens=False) if tags is not None else None
            if texts is None:  # tag segment alone (captioning generation)
                ids = tag_ids + [sep_id]
                if truncation and max_length is not None and len(ids) > max_length:
                    ids = ids[: max_length - 1] + [sep_id]
                rows.append((ids, [1] * len(ids), [1] * len(ids)))
                continue
            text_ids = tokenizer.encode(texts[i], add_special_tokens=False)
            if caption_length is not None:  # [CLS] caption [SEP] [PAD]... | tags [SEP]
                text_ids = text_ids[: caption_length - 2]
                caption = [cls_id, *text_ids, sep_id]
                padding = caption_length - len(caption)
                ids = caption + [pad_id] * padding
                types, mask = [0] * caption_length, [1] * len(caption) + [0] * padding
                if tag_ids is not None:
                    if truncation and max_length is not None:
                        tag_ids = tag_ids[: max(max_length - caption_length - 1, 0)]
                    ids, types, mask = (
                        ids + tag_ids + [sep_id],
                        types + [1] * (len(tag_ids) + 1),
                        mask + [1] * (len(tag_ids) + 1),
                    )
                rows.append((ids, types, mask))
                continue
            if truncation and max_length is not None:
                budget = max_length - (3 if tag_ids is not None else 2)
                text_ids, tag_ids = _truncate_pair(text_ids, tag_ids, budget)
            ids = [cls_id, *text_ids, sep_id]
            types = [0] * len(ids)
            if tag_ids is not None:
                ids += [*tag_ids, sep_id]
                types += [1] * (len(tag_ids) + 1)
            rows.append((ids, types, [1] * len(ids)))
        return rows

    def _pad(self, rows, padding, max_length):
        longest = max(len(ids) for ids, _, _ in rows)
        if padding == "max_length" and max_length is not None:
            longest = max(longest, max_length)
        elif not padding and len({len(ids) for ids, _, _ in rows}) > 1:
            raise ValueError("texts of different lengths need `padding=True` to form a batch.")
        pad_id = self.tokenizer.pad_token_id
        pad = lambda values, value: values + [value] * (longest - len(values))
        return {
            "input_ids": torch.tensor([pad(ids, pad_id) for ids, _, _ in rows]),
            "token_type_ids": torch.tensor([pad(types, 0) for _, types, _ in rows]),
            "attention_mask": torch.tensor([pad(mask, 0) for _, _, mask in rows]),
        }

    @property
    def model_input_names(self):
        return ["input_ids", "token_type_ids", "attention_mask", *self.image_processor.model_input_names]


def _truncate_pair(first, second, budget):
    """BERT's `_truncate_seq_pair`: drop the last token of the longer sequence until both fit in `budget`."""
    first, second = list(first), list(second) if second is not None else None
    if second is None:
        return first[: max(budget, 0)], None
    while len(first) + len(second) > max(budget, 0):
        if len(first) > len(second):
            first.pop()
        else:
            second.pop()
    return first, second
