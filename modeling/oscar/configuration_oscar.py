"""Oscar / VinVL configuration. Defaults are Oscar-base (Li et al., ECCV 2020; github.com/microsoft/Oscar).

VinVL (Zhang et al., CVPR 2021; "Oscar+") is the same model with other settings, not another architecture: an image
LayerNorm after the region projection (`use_img_layer_norm=True`), a 3-way contrastive head (`num_contrast_classes=3`)
and X152-C4 region features of the same 2048 + 6 layout. `OscarConfig.vinvl()` returns those settings.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from hf_vlp.config_utils import SavesLabelMaps
from hf_vlp.layers import BOX_FEATURE_SIZES

CLASSIFIER_TYPES = ("linear", "mlp")
DEFAULT_NUM_LABELS = 3129  # VQA v2 answer vocabulary of the released VQA models
VQA_LOSSES = ("bce", "ce")


@strict
class OscarConfig(SavesLabelMaps, PreTrainedConfig):
    r"""
    Text side: bert-base-uncased (the released models start from it). Image side: the sizes the original reads from
    its config (`img_feature_dim` = 2054 = 2048-d detector feature + 6-d box) and its fine-tuning scripts' options.

    Args:
        visual_feat_dim: size of a region feature without the box part (2048 for bottom-up-attention Faster R-CNN and
            VinVL's X152-C4).
        box_feature_kind: location vector derived from normalized boxes and appended to each feature before the
            projection. Oscar / VinVL use `x1, y1, x2, y2, w, h` ("xyxy_wh", 6-d); `None` appends nothing
            (the original's `img_feature_dim` then equals `visual_feat_dim`).
        use_img_layer_norm: LayerNorm after the region projection (VinVL: True; Oscar v1: False).
        img_layer_norm_eps: epsilon of that LayerNorm.
        num_contrast_classes: classes of the pretraining contrastive head on the pooled output. Oscar: 2 (0 = matched
            tags, 1 = "polluted" tags from another image). VinVL: 3 (0 = matched, 1 = polluted tags, 2 = caption
            from another image).
        mlm_weight, contrastive_weight: weights of the two pretraining losses in the summed `loss` (both 1 in
            the original).
        classifier_type: "linear" or "mlp" head for VQA / retrieval / NLVR2 (the original's `classifier`).
        classifier_hidden_scale: width of the MLP head in multiples of `hidden_size` (the original's
            `cls_hidden_scale`, 2 when absent).
        classifier_layer_norm: LayerNorm between the two layers of the NLVR2 MLP head. The original ties it to
            the image LayerNorm flag; `None` follows `use_img_layer_norm`.
        num_choices: images per NLVR2 example (the original's `num_choice`).
        vqa_loss: "bce" (VQA v2, soft scores; the original's `instance_bce_with_logits`) or "ce" (GQA, one answer).
        caption_label_smoothing: label smoothing of the captioning loss (0.1 in the VinVL commands).
        caption_drop_worst_ratio, caption_drop_worst_after: after `caption_drop_worst_after` training steps the
            captioning loss ignores this fraction of the masked tokens with the highest loss.
        caption_tag_position_offset: position id of the first object tag when captioning (the original's
            `od_labels_start_posid` = training `max_seq_a_length`, 40 for the released captioning models).
        caption_max_length: default `max_length` of `generate()` ([CLS] included; the original's `max_gen_length`).
        freeze_word_embeddings: keep the word embeddings (and the tied decoder) frozen, as the VinVL captioning
            fine-tuning did (`--freeze_embedding`).
        mask_token_id: the [MASK] id; captioning decodes the token predicted at a trailing [MASK].
    """

    model_type = "oscar"

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
    bos_token_id: int | None = 101
    eos_token_id: int | None = 102
    mask_token_id: int = 103
    visual_feat_dim: int = 2048
    box_feature_kind: str | None = "xyxy_wh"
    use_img_layer_norm: bool | int = False
    img_layer_norm_eps: float = 1e-12
    num_contrast_classes: int = 2
    mlm_weight: float | int = 1.0
    contrastive_weight: float | int = 1.0
    classifier_type: str = "linear"
    classifier_hidden_scale: int | float = 2
    classifier_layer_norm: bool | int | None = None
    num_choices: int = 2
    vqa_loss: str = "bce"
    caption_label_smoothing: float | int = 0.0
    caption_drop_worst_ratio: float | int = 0.0
    caption_drop_worst_after: int = 0
    caption_tag_position_offset: int = 40
    caption_max_length: int = 20
    freeze_word_embeddings: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.id2label is None and "num_labels" not in kwargs:
            kwargs["num_labels"] = DEFAULT_NUM_LABELS
        self.use_img_layer_norm = bool(self.use_img_layer_norm)  # original configs write 0 / 1
        self._check_options()  # a plain ValueError naming the field, as every hf_vlp input check
        super().__post_init__(**kwargs)

    def _check_options(self):
        if self.box_feature_kind is not None and self.box_feature_kind not in BOX_FEATURE_SIZES:
            raise ValueError(
                f"`box_feature_kind` must be None or one of {sorted(BOX_FEATURE_SIZES)}, got {self.box_feature_kind!r}"
            )
        if self.classifier_type not in CLASSIFIER_TYPES:
            raise ValueError(f"`classifier_type` must be one of {CLASSIFIER_TYPES}, got {self.classifier_type!r}")
        if self.vqa_loss not in VQA_LOSSES:
            raise ValueError(f"`vqa_loss` must be one of {VQA_LOSSES}, got {self.vqa_loss!r}")
        if self.num_contrast_classes < 2:
            raise ValueError(
                f"`num_contrast_classes` must be 2 (Oscar) or 3 (VinVL), got {self.num_contrast_classes!r}"
            )
        if not 0.0 <= self.caption_drop_worst_ratio < 1.0:
            raise ValueError(f"`caption_drop_worst_ratio` must be in [0, 1), got {self.caption_drop_worst_ratio!r}")

    def to_diff_dict(self):
        # transformers drops a 2-label `id2label` as its own default, but ours is 3129: keep it so it reloads
        diff = super().to_diff_dict()
        if "id2label" not in diff and self.num_labels != DEFAULT_NUM_LABELS:
            full = self.to_dict()
            diff["id2label"], diff["label2id"] = full["id2label"], full["label2id"]
        return diff

    @property
    def img_feature_dim(self) -> int:
        """Input width of the region projection: feature + location vector (2054 for Oscar / VinVL)."""
        box = BOX_FEATURE_SIZES[self.box_feature_kind] if self.box_feature_kind is not None else 0
        return self.visual_feat_dim + box

    @property
    def nlvr2_layer_norm(self) -> bool:
        """Whether the NLVR2 MLP head has its middle LayerNorm (`classifier_layer_norm`, else the image LN flag)."""
        return self.use_img_layer_norm if self.classifier_layer_norm is None else bool(self.classifier_layer_norm)

    @classmethod
    def vinvl(cls, **kwargs):
        """VinVL / Oscar+ base: image LayerNorm and the 3-way contrastive head (`run_oscarplus_pretrain.py`)."""
        return cls(**{"use_img_layer_norm": True, "num_contrast_classes": 3, **kwargs})

    @classmethod
    def large(cls, **kwargs):
        """Oscar-large / VinVL-large sizes (bert-large-uncased)."""
        sizes = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
        return cls(**{**sizes, **kwargs})
