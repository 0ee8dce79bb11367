"""LXMERT processor: BERT uncased tokenizer + the shared region-feature processor.

Returns exactly the keyword arguments of transformers' LXMERT classes: `input_ids`, `token_type_ids` (all 0: the
original never uses type 1), `attention_mask`, `visual_feats`, `visual_pos` (x1/W, y1/H, x2/W, y2/H — the original's
box normalisation, nothing else) and `visual_attention_mask` (only needed when images have different region counts;
the original always uses 36 regions).
"""

from hf_vlp.processing.vl_processor import RegionTextProcessor


class LxmertProcessor(RegionTextProcessor):
    """`processor(text=[...], visual_feats=[(N_i, 2048), ...], boxes=[(N_i, 4) pixels, ...],
    image_sizes=[(width, height), ...])` -> LXMERT's keyword arguments."""
