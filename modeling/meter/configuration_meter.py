"""METER configuration. Defaults are the released METER-CLIP16-RoBERTa at 288 px (Dou et al., CVPR 2022;
`meter_clip16_288_roberta_pretrain.ckpt`): CLIP ViT-B/16 without its last block, roberta-base, six fusion layers per
stream of width 768."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, CLIPVisionConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# roberta-base's config.json (transformers' RobertaConfig defaults are BERT's: 30522 words, 512 positions, eps 1e-12)
ROBERTA_BASE = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)


@strict
class MeterVisionConfig(CLIPVisionConfig):
    r"""
    The CLIP ViT image encoder as METER runs it (`meter/modules/clip_model.py`). It is transformers' `CLIPVisionConfig`
    with METER's values:

    * `num_hidden_layers` counts the blocks METER keeps: METER builds `layers - 1` blocks of the CLIP model it loads
      (ViT-B/16 has 12, the checkpoints hold 11);
    * `num_attention_heads` = width // 64 (the rule `clip_model.py` hard-codes);
    * QuickGELU, LayerNorm eps 1e-5; `post_layernorm` (CLIP's `ln_post`) is applied to every token and there is no
      projection (see `MeterVisionEncoder`).
    """

    model_type = "meter_vision_model"
    base_config_key = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 11
    num_attention_heads: int = 12
    image_size: int | list[int] | tuple[int, int] = 288
    patch_size: int | list[int] | tuple[int, int] = 16
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


@strict
class MeterCrossModalConfig(PreTrainedConfig):
    r"""
    The co-attention fusion: `num_hidden_layers` cross-modal layers per stream (`num_top_layer`), `hidden_size`
    wide (both unimodal outputs are projected to it), `num_attention_heads` (`num_heads`), feed-forward
    `intermediate_size` (`hidden_size * mlp_ratio`). METER builds these layers from a `RobertaConfig` whose
    `layer_norm_eps` keeps BERT's default 1e-12 (not roberta-base's 1e-5); the MLM head's transform uses it too.
    """

    model_type = "meter_cross_modal"
    base_config_key = "cross_modal_config"

    hidden_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    layer_norm_eps: float = 1e-12

    def __post_init__(self, **kwargs):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"fusion `hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})"
            )
        super().__post_init__(**kwargs)


@strict
class MeterConfig(PreTrainedConfig):
    r"""
    METER: a text encoder (`text_config`: RoBERTa or BERT, transformers' own classes), the CLIP-ViT image encoder
    (`vision_config`, `MeterVisionConfig`) and a two-stream co-attention fusion (`cross_modal_config`,
    `MeterCrossModalConfig`).

    Args:
        text_config: a `RobertaConfig` (default: roberta-base) or `BertConfig` (`model_type` picks the class).
        vision_config: `MeterVisionConfig` fields.
        cross_modal_config: `MeterCrossModalConfig` fields (not `fusion_config`: transformers 5.25 reads that name
            on every config as its kernel-fusion settings).
        modality_type_vocab_size: rows of the fusion's token-type table: 0 text, 1 image (2 = NLVR2's second
            image, whose checkpoints have 3 rows).
        num_labels: VQA answers (3129 for VQA v2), 3 for SNLI-VE, 2 for NLVR2.
        classifier_layer_norm_eps: the task classifiers' LayerNorm (a plain `nn.LayerNorm`, eps 1e-5).
        mlm_weight, itm_weight: weights of each pretraining loss in the summed `loss` (METER's `loss_names`).
        initializer_range: std of the fusion, transforms and heads (METER's `init_weights`: 0.02).
    """

    model_type = "meter"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(AutoConfig, model_type="roberta", init_kwargs=ROBERTA_BASE),
        "vision_config": MeterVisionConfig,
        "cross_modal_config": MeterCrossModalConfig,
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    cross_modal_config: dict | PreTrainedConfig | None = None
    modality_type_vocab_size: int = 2
    classifier_layer_norm_eps: float = 1e-5
    mlm_weight: float | int = 1.0
    itm_weight: float | int = 1.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False  # METER's MLM decoder is its own matrix, of the fusion's width

    def __post_init__(self, **kwargs):
        if self.id2label is None and "num_labels" not in kwargs:
            kwargs["num_labels"] = 3129  # the VQA v2 answer vocabulary
        if self.modality_type_vocab_size < 2:
            raise ValueError(
                f"`modality_type_vocab_size` must be >= 2 (text and image rows), got {self.modality_type_vocab_size}"
            )
        super().__post_init__(**kwargs)
        if self.text_config.model_type not in ("roberta", "bert"):
            raise ValueError(
                f"`text_config` must be a RoBERTa or BERT config (METER's text encoders), got model_type "
                f"{self.text_config.model_type!r}"
            )

    def to_diff_dict(self):
        # transformers leaves out the label maps of a 2-label config (its default); here the default is 3129, so an
        # NLVR2 / ITM-sized head must keep them to reload with 2 labels
        output = super().to_diff_dict()
        if "id2label" not in output and self.id2label is not None:
            output["id2label"] = {str(k): v for k, v in self.id2label.items()}
            output["label2id"] = dict(self.label2id)
        return output


__all__ = ["MeterConfig", "MeterCrossModalConfig", "MeterVisionConfig"]
