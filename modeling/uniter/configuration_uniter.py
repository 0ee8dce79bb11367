"""UNITER configuration. Defaults are UNITER-base (Chen et al., ECCV 2020; `config/uniter-base.json`)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from hf_vlp.config_utils import SavesLabelMaps

NLVR2_HEADS = ("paired", "triplet", "paired-attn")


@strict
class UniterConfig(SavesLabelMaps, PreTrainedConfig):
    r"""
    Text side: the BERT-base-cased sizes of the released model. Image side: sizes the original hard-codes in
    `utils/const.py` (`IMG_DIM = 2048`, `IMG_LABEL_DIM = 1601`) and the 7-d location vector.

    Args:
        visual_feat_dim: size of a region feature (2048 for bottom-up-attention Faster R-CNN).
        box_feature_kind: location features derived from normalized boxes; UNITER uses
            `x1, y1, x2, y2, w, h, w*h` ("xyxy_wh_area").
        num_region_classes: detector classes for masked region classification (1601 = 1600 VG + background).
        num_labels: answers of the VQA head (3129 for VQA v2); 3 for visual entailment.
        nlvr2_head: "paired", "triplet" or "paired-attn" (the original's NLVR2 variants).
        referring_head_layers: 1 (linear) or 2 (MLP) region scorer for referring expressions.
        wra_weight: weight of the word-region alignment (optimal transport) loss added to ITM (`itm_ot_lambda`).
        ot_beta, ot_iterations: IPOT step size and iterations (0.5, 50 in the original).
        retrieval_margin: hinge margin of the ranking loss for image-text retrieval.
        mlm_weight, mrfr_weight, mrc_weight, mrc_kl_weight, itm_weight: weights of each pretraining loss in the
            summed `loss`.
    """

    model_type = "uniter"

    vocab_size: int = 28996
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    visual_feat_dim: int = 2048
    box_feature_kind: str = "xyxy_wh_area"
    num_region_classes: int = 1601
    nlvr2_head: str = "paired-attn"
    referring_head_layers: int = 1
    wra_weight: float | int = 0.1
    ot_beta: float | int = 0.5
    ot_iterations: int = 50
    retrieval_margin: float | int = 0.2
    mlm_weight: float | int = 1.0
    mrfr_weight: float | int = 1.0
    mrc_weight: float | int = 1.0
    mrc_kl_weight: float | int = 1.0
    itm_weight: float | int = 1.0
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.id2label is None and "num_labels" not in kwargs:
            kwargs["num_labels"] = 3129  # the VQA v2 answer vocabulary
        # plain ValueErrors naming the field, as every hf_vlp input check
        if self.nlvr2_head not in NLVR2_HEADS:
            raise ValueError(f"`nlvr2_head` must be one of {NLVR2_HEADS}, got {self.nlvr2_head!r}")
        if self.referring_head_layers not in (1, 2):
            raise ValueError(f"`referring_head_layers` must be 1 or 2, got {self.referring_head_layers!r}")
        super().__post_init__(**kwargs)

    @classmethod
    def large(cls, **kwargs):
        """UNITER-large (`config/uniter-large.json`)."""
        sizes = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
        return cls(**{**sizes, **kwargs})
