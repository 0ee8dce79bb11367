"""UNITER configuration. Defaults are UNITER-base (Chen et al., ECCV 2020; `config/uniter-base.json`)."""

from transformers import PreTrainedConfig

NLVR2_HEADS = ("paired", "triplet", "paired-attn")


class UniterConfig(PreTrainedConfig):
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

    def __init__(
        self,
        vocab_size=28996,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        visual_feat_dim=2048,
        box_feature_kind="xyxy_wh_area",
        num_region_classes=1601,
        nlvr2_head="paired-attn",
        referring_head_layers=1,
        wra_weight=0.1,
        ot_beta=0.5,
        ot_iterations=50,
        retrieval_margin=0.2,
        mlm_weight=1.0,
        mrfr_weight=1.0,
        mrc_weight=1.0,
        mrc_kl_weight=1.0,
        itm_weight=1.0,
        tie_word_embeddings=True,
        **kwargs,
    ):
        if "num_labels" not in kwargs and "id2label" not in kwargs:
            kwargs["num_labels"] = 3129
        if nlvr2_head not in NLVR2_HEADS:
            raise ValueError(f"`nlvr2_head` must be one of {NLVR2_HEADS}, got {nlvr2_head!r}")
        if referring_head_layers not in (1, 2):
            raise ValueError(f"`referring_head_layers` must be 1 or 2, got {referring_head_layers!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.visual_feat_dim = visual_feat_dim
        self.box_feature_kind = box_feature_kind
        self.num_region_classes = num_region_classes
        self.nlvr2_head = nlvr2_head
        self.referring_head_layers = referring_head_layers
        self.wra_weight = wra_weight
        self.ot_beta = ot_beta
        self.ot_iterations = ot_iterations
        self.retrieval_margin = retrieval_margin
        self.mlm_weight = mlm_weight
        self.mrfr_weight = mrfr_weight
        self.mrc_weight = mrc_weight
        self.mrc_kl_weight = mrc_kl_weight
        self.itm_weight = itm_weight
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    @classmethod
    def large(cls, **kwargs):
        """UNITER-large (`config/uniter-large.json`)."""
        sizes = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
        return cls(**{**sizes, **kwargs})
