"""UNITER processor: BERT tokenizer (the released model is cased) + the shared region-feature processor."""

from hf_vlp.processing.vl_processor import RegionTextProcessor


class UniterProcessor(RegionTextProcessor):
    """`processor(text=[...], visual_feats=[...], boxes=[...], image_sizes=[(w, h), ...])` -> the keyword arguments
    of every UNITER model (`input_ids`, `attention_mask`, `token_type_ids`, `visual_feats`, `visual_pos`,
    `visual_attention_mask`). The 7-d location features are derived inside the model."""
