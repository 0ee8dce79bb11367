"""SOHO configuration. Defaults are the released model (Huang et al., CVPR 2021; github.com/researchmm/soho
`configs/Pretrain/soho_res18_pre.py`, checkpoint `soho_res18_fp16_40-9441cdd3.pth`): a ResNet-18 trunk, a visual
dictionary of 2048 entries at width 768, and a 3-layer BERT-base-uncased fusion encoder."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from hf_vlp.config_utils import SavesLabelMaps

BACKBONE_BLOCKS = {"basic": 1, "bottleneck": 4}  # block -> channel expansion


@strict
class SohoConfig(SavesLabelMaps, PreTrainedConfig):
    r"""
    Text and fusion encoder: BERT fields (the original `VLBertModel`); visual tokens are appended after the text
    embeddings and get no BERT position or token-type embedding.

    Args:
        backbone_block, backbone_layers: the ResNet's block type and block counts per stage (ResNet-18: "basic",
            (2, 2, 2, 2); ResNet-50: "bottleneck", (3, 4, 6, 3)).
        backbone_stem_channels, backbone_base_channels: channels of the stem and of `layer1` (doubled per stage).
        backbone_stride_in_1x1: bottlenecks stride in their first 1x1 conv (mmcls `style="caffe"`) instead of the 3x3
            (`style="pytorch"`, the released config).
        backbone_frozen_stages: -1 trains everything, 0 freezes the stem, i the stem and `layer1..layer<i>` (no
            gradients, batch norms in eval mode), as mmcls' `frozen_stages` (1 in the released config).
        num_visual_tokens: entries of the visual dictionary (`num_tokens`).
        dictionary_decay: the dictionary's moving-average decay (`decay`; the original never changes it in training).
        visual_mask_prob: masked visual modelling: per image-caption row, the probability that every visual token
            sharing the dictionary index of one random position is replaced by the mask embedding (`mask_prob`).
            Applied by `SohoForPreTraining` in training mode only.
        neck_layer_norm_eps, neck_batch_norm_eps: epsilons of the neck's LayerNorm and batch norms (torch defaults,
            as the original).
        use_visual_dictionary: whether `SohoModel` quantizes visual features with the dictionary and the gate (the
            pretraining neck `SimpleVDforPreGate`) or only projects them (the VQA neck `SimpleVDforVQA`).
            `SohoForPreTraining` always builds the dictionary and `SohoForVisualQuestionAnswering` never does, as the
            original models.
        square_mask_canvas: reproduce the original's visual padding mask (True, the default, for converted
            checkpoints): it paints each image's valid area on a SQUARE canvas whose side is the padded height and
            resizes that square to the feature map, which for non-square padded batches marks other positions (and
            gives other sine position embeddings) than the image's real extent. False resizes `pixel_mask` itself.
        vqa_hidden_multiplier, vqa_dropout: the VQA head's hidden width (x hidden_size) and its dropout.
        mlm_weight, mvm_weight, itm_weight: weights of each pretraining loss in the summed `loss` (1 in the original).
    """

    model_type = "soho"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 3
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
    num_channels: int = 3
    backbone_block: str = "basic"
    backbone_layers: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    backbone_stem_channels: int = 64
    backbone_base_channels: int = 64
    backbone_frozen_stages: int = 1
    backbone_stride_in_1x1: bool = False
    num_visual_tokens: int = 2048
    dictionary_decay: float | int = 0.4
    visual_mask_prob: float | int = 0.015
    neck_layer_norm_eps: float = 1e-5
    neck_batch_norm_eps: float = 1e-5
    use_visual_dictionary: bool = True
    square_mask_canvas: bool = True
    vqa_hidden_multiplier: int = 4
    vqa_dropout: float | int = 0.5
    mlm_weight: float | int = 1.0
    mvm_weight: float | int = 1.0
    itm_weight: float | int = 1.0
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.id2label is None and "num_labels" not in kwargs:
            kwargs["num_labels"] = 3129  # the VQA v2 answer vocabulary
        self.backbone_layers = [int(n) for n in self.backbone_layers]
        if self.backbone_block not in BACKBONE_BLOCKS:
            raise ValueError(f"`backbone_block` must be one of {sorted(BACKBONE_BLOCKS)}, got {self.backbone_block!r}")
        if len(self.backbone_layers) != 4 or min(self.backbone_layers) < 1:
            raise ValueError(f"`backbone_layers` must give 4 positive block counts, got {self.backbone_layers}")
        if not -1 <= self.backbone_frozen_stages <= 4:
            raise ValueError(f"`backbone_frozen_stages` must be in -1..4, got {self.backbone_frozen_stages}")
        if self.hidden_size % 4:
            # the sine position embedding gives hidden_size / 2 channels per axis, in sin / cos pairs
            raise ValueError(f"`hidden_size` must be a multiple of 4 (sine position embedding), got {self.hidden_size}")
        if self.num_visual_tokens < 1:
            raise ValueError(f"`num_visual_tokens` must be positive, got {self.num_visual_tokens}")
        if not 0.0 <= self.dictionary_decay < 1.0:
            raise ValueError(f"`dictionary_decay` must be in [0, 1), got {self.dictionary_decay}")
        if not 0.0 <= self.visual_mask_prob <= 1.0:
            raise ValueError(f"`visual_mask_prob` must be in [0, 1], got {self.visual_mask_prob}")
        super().__post_init__(**kwargs)

    @property
    def backbone_out_channels(self) -> int:
        """Channels of the ResNet's last stage (`layer4`), the neck's input."""
        return self.backbone_base_channels * 8 * BACKBONE_BLOCKS[self.backbone_block]


__all__ = ["SohoConfig"]
