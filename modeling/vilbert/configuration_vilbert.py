"""ViLBERT configuration. Defaults are the released ViLBERT base model (`config/bert_base_6layer_6conect.json` of
facebookresearch/vilbert-multi-task, used for both `pretrained_model.bin` and the 12-in-1 `multi_task_model.bin`)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from hf_vlp.config_utils import SavesLabelMaps

# `visual_target` of the original (`--visual_target 0/1/2`) plus hard-label classification.
VISUAL_TARGETS = ("kl", "regression", "nce", "classification")

# Task-token numbers of the 12-in-1 model (`TASK<n>` of `vilbert_tasks.yml`) used by each head when the model has
# task tokens and no `task_ids` are passed: VQA 1, VCR Q->A 5, Flickr30k retrieval 8, RefCOCO+ 10, NLVR2 12,
# SNLI-VE 13, GQA 15.
DEFAULT_TASK_TOKEN_IDS = {
    "vqa": 1,
    "vcr": 5,
    "retrieval": 8,
    "refexp": 10,
    "nlvr2": 12,
    "entailment": 13,
    "gqa": 15,
}

# `config.auto_map` for Hub remote code: the Auto classes plus the heads that have no Auto class (docs/design.md, "Auto
# classes"); values name classes of a flat bundle.
VILBERT_AUTO_MAP = {
    "AutoConfig": "configuration_vilbert.VilbertConfig",
    "AutoModel": "modeling_vilbert.VilbertModel",
    "AutoModelForPreTraining": "modeling_vilbert.VilbertForPreTraining",
    "AutoModelForVisualQuestionAnswering": "modeling_vilbert.VilbertForVisualQuestionAnswering",
    "AutoModelForMultipleChoice": "modeling_vilbert.VilbertForMultipleChoice",
    "VilbertForGQA": "modeling_vilbert.VilbertForGQA",
    "VilbertForImageTextRetrieval": "modeling_vilbert.VilbertForImageTextRetrieval",
    "VilbertForVisualReasoning": "modeling_vilbert.VilbertForVisualReasoning",
    "VilbertForVisualEntailment": "modeling_vilbert.VilbertForVisualEntailment",
    "VilbertForReferringExpression": "modeling_vilbert.VilbertForReferringExpression",
    "VilbertForMultiTask": "modeling_vilbert.VilbertForMultiTask",
}


def default_schedule(v_num_hidden_layers, num_hidden_layers):
    """The released models' connection layout: one co-attention layer before each of the first
    n = min(visual, text) visual layers and after each of the last n text layers (base 6/12: v ids [0..5],
    t ids [6..11]; the remaining visual layers, if any, run after the last connection)."""
    count = min(v_num_hidden_layers, num_hidden_layers)
    return list(range(count)), list(range(num_hidden_layers - count, num_hidden_layers))


@strict
class VilbertConfig(SavesLabelMaps, PreTrainedConfig):
    r"""
    Field names are those of the original `BertConfig` (so an original JSON reads as keyword arguments); the text
    stream uses the BERT names, the visual stream the `v_` names, the co-attention the `bi_` names.

    Args:
        vocab_size ... layer_norm_eps: the text stream (BERT-base uncased sizes by default).
        v_feature_size: region feature size (2048-d bottom-up-attention features); alias `visual_feat_dim`.
        v_target_size: detector classes of the region head (1601 Visual Genome classes incl. background); alias
            `num_region_classes`.
        v_hidden_size, v_num_hidden_layers, v_num_attention_heads, v_intermediate_size, v_hidden_act,
            v_hidden_dropout_prob, v_attention_probs_dropout_prob: the visual stream.
        bi_hidden_size, bi_num_attention_heads: width and heads of the co-attention (also the pooled size).
        v_biattention_id, t_biattention_id: connection schedule (default: `default_schedule`, the released layout).
            Co-attention layer k runs after visual layers
            `[v_biattention_id[k-1], v_biattention_id[k])` and text layers `[t_biattention_id[k-1],
            t_biattention_id[k])`; remaining layers of each stream run after the last connection. Gaps may be uneven
            or zero; both lists must be non-decreasing and of equal length.
        fusion_method: "mul" (element-wise product, as released) or "sum" of the two pooled vectors.
        task_specific_tokens: insert a learned task token after [CLS] (12-in-1 multi-task model).
        num_task_tokens: rows of the task-token table (20 in the original).
        task_token_ids: task token each head uses when `task_ids` is not passed (12-in-1 numbering).
        visual_target: masked region objective: "kl" (KL to the detector's class distribution; original 0),
            "regression" (MSE to the 2048-d feature; original 1), "nce" (pick the true feature among the batch's
            region features; original 2, with all in-batch regions as negatives instead of 128 sampled ones), or
            "classification" (cross-entropy to the detector's top class).
        num_labels: VQA answers (3129 for VQA v2). gqa_num_labels: GQA answers (1533).
        entailment_labels: class order of the visual-entailment head (the original's SNLI-VE label map).
        mlm_weight, mrm_weight, itm_weight: weights of the pretraining losses in the summed `loss`.
    """

    model_type = "vilbert"
    attribute_map = {"visual_feat_dim": "v_feature_size", "num_region_classes": "v_target_size"}

    vocab_size: int = 30522
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
    v_feature_size: int = 2048
    v_target_size: int = 1601
    v_hidden_size: int = 1024
    v_num_hidden_layers: int = 6
    v_num_attention_heads: int = 8
    v_intermediate_size: int = 1024
    v_hidden_act: str = "gelu"
    v_hidden_dropout_prob: float | int = 0.1
    v_attention_probs_dropout_prob: float | int = 0.1
    bi_hidden_size: int = 1024
    bi_num_attention_heads: int = 8
    v_biattention_id: list[int] | tuple[int, ...] | None = None
    t_biattention_id: list[int] | tuple[int, ...] | None = None
    fusion_method: str = "mul"
    task_specific_tokens: bool = False
    num_task_tokens: int = 20
    task_token_ids: dict | None = None
    visual_target: str = "kl"
    gqa_num_labels: int = 1533
    entailment_labels: list[str] | tuple[str, ...] = ("contradiction", "neutral", "entailment")
    mlm_weight: float | int = 1.0
    mrm_weight: float | int = 1.0
    itm_weight: float | int = 1.0
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.id2label is None and "num_labels" not in kwargs:
            kwargs["num_labels"] = 3129
        kwargs.setdefault("auto_map", dict(VILBERT_AUTO_MAP))
        # plain ValueErrors naming the field, as every hf_vlp input check
        if self.v_biattention_id is None and self.t_biattention_id is None:
            self.v_biattention_id, self.t_biattention_id = default_schedule(
                self.v_num_hidden_layers, self.num_hidden_layers
            )
        elif self.v_biattention_id is None or self.t_biattention_id is None:
            raise ValueError("give both `v_biattention_id` and `t_biattention_id`, or neither (default schedule)")
        self.v_biattention_id, self.t_biattention_id = list(self.v_biattention_id), list(self.t_biattention_id)
        self._check_schedule(
            self.v_biattention_id, self.t_biattention_id, self.v_num_hidden_layers, self.num_hidden_layers
        )
        if self.fusion_method not in ("mul", "sum"):
            raise ValueError(f"`fusion_method` must be 'mul' or 'sum', got {self.fusion_method!r}")
        if self.visual_target not in VISUAL_TARGETS:
            raise ValueError(f"`visual_target` must be one of {VISUAL_TARGETS}, got {self.visual_target!r}")
        for name, size, heads in (
            ("hidden_size", self.hidden_size, self.num_attention_heads),
            ("v_hidden_size", self.v_hidden_size, self.v_num_attention_heads),
            ("bi_hidden_size", self.bi_hidden_size, self.bi_num_attention_heads),
        ):
            if size % heads:
                raise ValueError(f"`{name}`={size} is not a multiple of its number of attention heads ({heads})")
        self.task_token_ids = dict(DEFAULT_TASK_TOKEN_IDS if self.task_token_ids is None else self.task_token_ids)
        self.entailment_labels = list(self.entailment_labels)
        super().__post_init__(**kwargs)

    @staticmethod
    def _check_schedule(v_ids, t_ids, v_layers, t_layers):
        if len(v_ids) != len(t_ids):
            raise ValueError(
                f"`v_biattention_id` {v_ids} and `t_biattention_id` {t_ids} must have one entry per co-attention layer"
            )
        for name, ids, layers in (("v_biattention_id", v_ids, v_layers), ("t_biattention_id", t_ids, t_layers)):
            if any(b < a for a, b in zip(ids, ids[1:])) or (ids and (ids[0] < 0 or ids[-1] > layers)):
                raise ValueError(f"`{name}`={ids} must be non-decreasing layer indices in [0, {layers}]")

    @property
    def region_target_size(self):
        """Width of the masked-region head: classes for "kl"/"classification", the feature size otherwise."""
        return self.v_target_size if self.visual_target in ("kl", "classification") else self.v_feature_size
