"""ERNIE-ViL configuration — a variant of ViLBERT (`hf_vlp.modeling.vilbert`): the same two-stream layout, built from
the same pieces, so the ViLBERT modules read this config through `attribute_map` aliases.

Field names are those of the released `ernie_vil_config.*.json` (PaddlePaddle/ERNIE, `ernie-vil/model/ernie_vil.py`
reads them). Defaults are ERNIE-ViL base; `ErnieVilConfig.large()` is ERNIE-ViL large. Sizes come from the paper
(Yu et al., AAAI 2021, Sec. 4.1: base 12 text layers 768/12 heads, 6 visual layers 1024/8 heads, co-attention
1024/8 heads; large 24 text layers 1024/16 heads, visual and co-attention 1024/16 heads). The JSON files inside the
released archives could not be downloaded here: `v_intermediate_size`, `class_attr_size`, `sent_type_vocab_size` and
`task_type_vocab_size` defaults are unverified (the converter reads every size the tensors pin down from them).
"""

from transformers import PreTrainedConfig

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


class ErnieVilConfig(PreTrainedConfig):
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

    def __init__(
        self,
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=None,
        num_attention_heads=12,
        intermediate_size=None,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        sent_type_vocab_size=2,
        task_type_vocab_size=3,
        initializer_range=0.02,
        layer_norm_eps=1e-5,
        pad_token_id=0,
        v_feature_size=2048,
        v_hidden_size=1024,
        v_num_hidden_layers=None,
        v_num_attention_heads=8,
        v_intermediate_size=1024,
        co_hidden_size=1024,
        co_num_attention_heads=8,
        co_intermediate_size=1024,
        v_biattention_id=None,
        t_biattention_id=None,
        class_size=1601,
        class_attr_size=401,
        fusion_method="mul",
        vqa_hidden_size=None,
        mlm_weight=1.0,
        object_weight=1.0,
        attribute_weight=1.0,
        relation_weight=1.0,
        mrc_weight=1.0,
        itm_weight=1.0,
        tie_word_embeddings=True,
        **kwargs,
    ):
        if "num_labels" not in kwargs and "id2label" not in kwargs:
            kwargs["num_labels"] = 3129
        kwargs.setdefault("auto_map", dict(ERNIE_VIL_AUTO_MAP))
        if v_biattention_id is None and t_biattention_id is None:
            # the released layout for the given depths (base: v [0..5], t [6..11]; large: t [18..23])
            v_biattention_id, t_biattention_id = default_schedule(v_num_hidden_layers or 6, num_hidden_layers or 12)
        elif v_biattention_id is None or t_biattention_id is None:
            raise ValueError("give both `v_biattention_id` and `t_biattention_id`, or neither (default schedule)")
        v_biattention_id, t_biattention_id = list(v_biattention_id), list(t_biattention_id)
        if not v_biattention_id or len(v_biattention_id) != len(t_biattention_id):
            raise ValueError(
                f"`v_biattention_id` {v_biattention_id} and `t_biattention_id` {t_biattention_id} must list one entry "
                "per co-attention block (at least one)"
            )
        for name, ids in (("v_biattention_id", v_biattention_id), ("t_biattention_id", t_biattention_id)):
            if any(b < a for a, b in zip(ids, ids[1:])) or ids[0] < 0:
                raise ValueError(f"`{name}`={ids} must be non-decreasing layer indices")
        # the original's tail runs layer t_ids[-1] / v_ids[-1] once after the last block: that fixes the depths
        for name, value, ids in (
            ("num_hidden_layers", num_hidden_layers, t_biattention_id),
            ("v_num_hidden_layers", v_num_hidden_layers, v_biattention_id),
        ):
            if value is not None and value != ids[-1] + 1:
                raise ValueError(
                    f"`{name}`={value} but the connection schedule implies {ids[-1] + 1} layers (ERNIE-ViL runs layer "
                    f"{ids[-1]} once after the last co-attention block)"
                )
        if fusion_method not in ("mul", "sum"):
            raise ValueError(f"`fusion_method` must be 'mul' or 'sum', got {fusion_method!r}")
        intermediate_size = intermediate_size or 4 * hidden_size  # hard-coded 4 * hidden in the original
        for name, size, heads in (
            ("hidden_size", hidden_size, num_attention_heads),
            ("v_hidden_size", v_hidden_size, v_num_attention_heads),
            ("co_hidden_size", co_hidden_size, co_num_attention_heads),
        ):
            if size % heads:
                raise ValueError(f"`{name}`={size} is not a multiple of its number of attention heads ({heads})")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = t_biattention_id[-1] + 1
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.sent_type_vocab_size = sent_type_vocab_size
        self.task_type_vocab_size = task_type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.v_feature_size = v_feature_size
        self.v_hidden_size = v_hidden_size
        self.v_num_hidden_layers = v_biattention_id[-1] + 1
        self.v_num_attention_heads = v_num_attention_heads
        self.v_intermediate_size = v_intermediate_size
        self.co_hidden_size = co_hidden_size
        self.co_num_attention_heads = co_num_attention_heads
        self.co_intermediate_size = co_intermediate_size
        self.v_biattention_id = v_biattention_id
        self.t_biattention_id = t_biattention_id
        self.class_size = class_size
        self.class_attr_size = class_attr_size
        self.fusion_method = fusion_method
        self.vqa_hidden_size = vqa_hidden_size or 2 * co_hidden_size
        self.mlm_weight = mlm_weight
        self.object_weight = object_weight
        self.attribute_weight = attribute_weight
        self.relation_weight = relation_weight
        self.mrc_weight = mrc_weight
        self.itm_weight = itm_weight
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(pad_token_id=pad_token_id, **kwargs)

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
