"""ERNIE-ViL configuration — a variant of ViLBERT (`hf_vlp.modeling.vilbert`): the same two-stream layout, built from
the same pieces, so the ViLBERT modules read this config through `attribute_map` aliases.

Field names are those of the released `ernie_vil_config.*.json` (PaddlePaddle/ERNIE, `ernie-vil/model/ernie_vil.py`
reads them). Defaults are ERNIE-ViL base; `ErnieVilConfig.large()` is ERNIE-ViL large. Sizes come from the paper
(Yu et al., AAAI 2021, Sec. 4.1: base 12 text layers 768/12 heads, 6 visual layers 1024/8 heads, co-attention
1024/8 heads; large 24 text layers 1024/16 heads, visual and co-attention 1024/16 heads). The JSON files inside the
released archives could not be downloaded here: `v_intermediate_size`, `class_attr_size`, `sent_type_vocab_size` and
`task_type_vocab_size` defaults are unverified (the converter reads every size the tensors pin down from them).
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from hf_vlp.config_utils import SavesLabelMaps
from hf_vlp.modeling.vilbert.configuration_vilbert import default_schedule

ERNIE_VIL_AUTO_MAP = {
    "AutoConfig": "configuration_ernie_vil.ErnieVilConfig",
    "AutoModel": "modeling_ernie_vil.ErnieVilModel",
    "AutoModelForPreTraining": "modeling_ernie_vil.ErnieVilForPreTraining",
    "AutoModelForVisualQuestionAnswering": "modeling_ernie_vil.ErnieVilForVisualQuestionAnswering",
    "AutoModelForMultipleChoice": "modeling_ernie_vil.ErnieVilForMultipleChoice",
    "ErnieVilForImageTextRetrieval": "modeling_ernie_vil.ErnieVilForImageTextRetrieval",
    "ErnieVilForReferringExpression": "modeling_ernie_vil.ErnieVilForReferringExpression",
}


@strict
class ErnieVilConfig(SavesLabelMaps, PreTrainedConfig):
    r"""
    Args (original names):
        vocab_size, hidden_size, num_attention_heads, max_position_embeddings, sent_type_vocab_size, hidden_act,
            hidden_dropout_prob, attention_probs_dropout_prob, initializer_range: the text stream (BERT uncased
            vocabulary). `intermediate_size` defaults to 4 * hidden_size, which the original hard-codes.
        v_hidden_size, v_num_attention_heads, v_intermediate_size: the visual stream (same `hidden_act` and dropouts
            as the text stream in the original).
        co_hidden_size, co_num_attention_heads: the co-attention width and heads (ViLBERT's `bi_*`).
        co_intermediate_size: read by the original but unused (kept for round trips).
        v_biattention_id, t_biattention_id: connection schedule. The original runs exactly one text layer
            (`t_biattention_id[-1]`) and one visual layer (`v_biattention_id[-1]`) after the last co-attention block,
            so the depths are `t_biattention_id[-1] + 1` and `v_biattention_id[-1] + 1`; `num_hidden_layers` /
            `v_num_hidden_layers` must agree. Without the lists they follow the released layout for the given depths
            (ViLBERT's `default_schedule`; 12 / 6 layers by default).
        class_size: detector classes of the masked region classification head (1601 Visual Genome classes).
        class_attr_size: Visual Genome attribute classes (read by the original; unused by the released code).
        task_type_vocab_size: read by the original but unused (no task embedding is built).
        v_feature_size: region feature size (2048; a command-line flag of the original).
        layer_norm_eps: 1e-5, Paddle's `layer_norm` default (ViLBERT: 1e-12).
        fusion_method: "mul" (released) or "sum".
        num_labels: VQA answers (3129); vqa_hidden_size: hidden width of the VQA head (`classifier_hid_size` of
            the original task config).
        mlm_weight, object_weight, attribute_weight, relation_weight, mrc_weight, itm_weight: pretraining loss weights.
        retrieval_loss, circle_margin, circle_scale: the loss of `ErnieVilForImageTextRetrieval` over groups of rows
            (`group_size`): "circle", the original's circle loss on sigmoid scores (`conf/flickr/model_conf_flickr`:
            margin 0.3, scale 32), or "softmax", cross-entropy over each group (ViLBERT's).
    """

    model_type = "ernie_vil"
    # the ViLBERT modules read ViLBERT names; these aliases point them at ERNIE-ViL's fields
    attribute_map = {
        "bi_hidden_size": "co_hidden_size",
        "bi_num_attention_heads": "co_num_attention_heads",
        "type_vocab_size": "sent_type_vocab_size",
        "v_target_size": "class_size",
        "num_region_classes": "class_size",
        "visual_feat_dim": "v_feature_size",
        "v_hidden_act": "hidden_act",
        "v_hidden_dropout_prob": "hidden_dropout_prob",
        "v_attention_probs_dropout_prob": "attention_probs_dropout_prob",
    }
    # what the ViLBERT modules expect of a two-stream config and ERNIE-ViL does not vary
    task_specific_tokens = False
    num_task_tokens = 0
    task_token_ids = {}

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int | None = None
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    sent_type_vocab_size: int = 2
    task_type_vocab_size: int = 3
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    pad_token_id: int | None = 0
    v_feature_size: int = 2048
    v_hidden_size: int = 1024
    v_num_hidden_layers: int | None = None
    v_num_attention_heads: int = 8
    v_intermediate_size: int = 1024
    co_hidden_size: int = 1024
    co_num_attention_heads: int = 8
    co_intermediate_size: int = 1024
    v_biattention_id: list[int] | tuple[int, ...] | None = None
    t_biattention_id: list[int] | tuple[int, ...] | None = None
    class_size: int = 1601
    class_attr_size: int = 401
    fusion_method: str = "mul"
    vqa_hidden_size: int | None = None
    mlm_weight: float | int = 1.0
    object_weight: float | int = 1.0
    attribute_weight: float | int = 1.0
    relation_weight: float | int = 1.0
    mrc_weight: float | int = 1.0
    itm_weight: float | int = 1.0
    retrieval_loss: str = "circle"
    circle_margin: float | int = 0.3
    circle_scale: float | int = 32.0
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.id2label is None and "num_labels" not in kwargs:
            kwargs["num_labels"] = 3129
        kwargs.setdefault("auto_map", dict(ERNIE_VIL_AUTO_MAP))
        # plain ValueErrors naming the field, as every hf_vlp input check
        v_ids, t_ids = self.v_biattention_id, self.t_biattention_id
        if v_ids is None and t_ids is None:
            # the released layout for the given depths (base: v [0..5], t [6..11]; large: t [18..23])
            v_ids, t_ids = default_schedule(self.v_num_hidden_layers or 6, self.num_hidden_layers or 12)
        elif v_ids is None or t_ids is None:
            raise ValueError("give both `v_biattention_id` and `t_biattention_id`, or neither (default schedule)")
        v_ids, t_ids = list(v_ids), list(t_ids)
        if not v_ids or len(v_ids) != len(t_ids):
            raise ValueError(
                f"`v_biattention_id` {v_ids} and `t_biattention_id` {t_ids} must list one entry "
                "per co-attention block (at least one)"
            )
        for name, ids in (("v_biattention_id", v_ids), ("t_biattention_id", t_ids)):
            if any(b < a for a, b in zip(ids, ids[1:])) or ids[0] < 0:
                raise ValueError(f"`{name}`={ids} must be non-decreasing layer indices")
        # the original's tail runs layer t_ids[-1] / v_ids[-1] once after the last block: that fixes the depths
        for name, value, ids in (
            ("num_hidden_layers", self.num_hidden_layers, t_ids),
            ("v_num_hidden_layers", self.v_num_hidden_layers, v_ids),
        ):
            if value is not None and value != ids[-1] + 1:
                raise ValueError(
                    f"`{name}`={value} but the connection schedule implies {ids[-1] + 1} layers (ERNIE-ViL runs layer "
                    f"{ids[-1]} once after the last co-attention block)"
                )
        if self.retrieval_loss not in ("circle", "softmax"):
            raise ValueError(f"`retrieval_loss` must be 'circle' or 'softmax', got {self.retrieval_loss!r}")
        if not 0 <= self.circle_margin < 1 or not self.circle_scale > 0:
            raise ValueError(
                f"`circle_margin` must be in [0, 1) and `circle_scale` positive, got {self.circle_margin!r} and "
                f"{self.circle_scale!r}"
            )
        if self.fusion_method not in ("mul", "sum"):
            raise ValueError(f"`fusion_method` must be 'mul' or 'sum', got {self.fusion_method!r}")
        for name, size, heads in (
            ("hidden_size", self.hidden_size, self.num_attention_heads),
            ("v_hidden_size", self.v_hidden_size, self.v_num_attention_heads),
            ("co_hidden_size", self.co_hidden_size, self.co_num_attention_heads),
        ):
            if size % heads:
                raise ValueError(f"`{name}`={size} is not a multiple of its number of attention heads ({heads})")
        self.v_biattention_id, self.t_biattention_id = v_ids, t_ids
        self.num_hidden_layers = t_ids[-1] + 1
        self.v_num_hidden_layers = v_ids[-1] + 1
        self.intermediate_size = self.intermediate_size or 4 * self.hidden_size  # hard-coded 4 * hidden in the original
        self.vqa_hidden_size = self.vqa_hidden_size or 2 * self.co_hidden_size
        super().__post_init__(**kwargs)

    @classmethod
    def large(cls, **kwargs):
        """ERNIE-ViL large: 24 text layers (1024 wide, 16 heads), 6 visual layers and co-attention 1024 / 16 heads."""
        sizes = dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            v_num_attention_heads=16,
            co_num_attention_heads=16,
        )
        return cls(**{**sizes, **kwargs})

    @property
    def region_target_size(self):
        return self.class_size
