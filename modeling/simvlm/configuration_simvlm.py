"""SimVLM configuration (Wang et al., ICLR 2022). No code or weights were released: the defaults are SimVLM-Base as
the paper describes it (a ViT-Base-sized transformer, 224 px images, patch tokens from the first three ResNet stages,
a 32k SentencePiece vocabulary); `simvlm_config("large" | "huge")` gives the other two sizes. Every value the paper
leaves open is listed, with the choice made, in docs/simvlm.md.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from hf_vlp.config_utils import SavesLabelMaps

# the paper's size table (ViT's Base / Large / Huge): width, MLP width, heads and layers of each transformer stack
SIZES = {
    "base": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_encoder_layers=12),
    "large": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_encoder_layers=24),
    "huge": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_encoder_layers=32),
}


@strict
class SimVlmConfig(SavesLabelMaps, PreTrainedConfig):
    r"""
    Transformer (encoder over [image tokens ; text prefix], decoder over the text suffix; pre-LayerNorm blocks):
        vocab_size: text vocabulary, shared by the encoder, the decoder and the (tied) LM head.
        hidden_size, intermediate_size, num_attention_heads: width, MLP width and heads of both stacks.
        num_encoder_layers, num_decoder_layers: depth of each stack (the paper's table gives one depth; the decoder
            gets the same, docs/simvlm.md).
        max_position_embeddings: learned 1-D positions of the text prefix (encoder) and of the suffix (decoder).
    Convolutional stem (the first three stages of a ResNet, GroupNorm instead of BatchNorm):
        image_size: side of the square input image; it must be a multiple of the stem's stride 4 * 2**(stages-1).
        num_channels: image channels.
        conv_stem_width: channels of the stem convolution and of the first stage's bottleneck (ResNet-50: 64).
        conv_stage_depths: bottleneck blocks per stage (ResNet-50's first three stages: 3, 4, 6).
        conv_num_groups: GroupNorm groups of every stem normalisation (must divide every stem width).
    Tokens: `pad_token_id` pads both sides; the decoder starts from `decoder_start_token_id` and ends with
    `eos_token_id`.
    num_labels: answers of the classifier VQA head (`SimVlmForVisualQuestionAnsweringClassifier`; 3129 = VQA v2).
    """

    model_type = "simvlm"
    # transformers' caches and generation size the decoder's key/value cache by `num_hidden_layers`
    attribute_map = {"num_hidden_layers": "num_decoder_layers"}

    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_attention_heads: int = 12
    num_encoder_layers: int = 12
    num_decoder_layers: int = 12
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.0
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    max_position_embeddings: int = 512
    image_size: int = 224
    num_channels: int = 3
    conv_stem_width: int = 64
    conv_stage_depths: list[int] | tuple[int, ...] = (3, 4, 6)
    conv_num_groups: int = 32
    pad_token_id: int | None = 0
    eos_token_id: int | None = 1
    bos_token_id: int | None = None
    decoder_start_token_id: int | None = 0
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = True
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        if self.id2label is None and "num_labels" not in kwargs:
            kwargs["num_labels"] = 3129  # the VQA v2 answer vocabulary
        self.conv_stage_depths = list(self.conv_stage_depths)
        if not self.conv_stage_depths or any(int(d) < 1 for d in self.conv_stage_depths):
            raise ValueError(f"`conv_stage_depths` must be positive block counts, got {self.conv_stage_depths!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})"
            )
        # every stem width is a multiple of conv_stem_width (w, 4w, 2w, 8w, 4w, 16w)
        if self.conv_num_groups < 1 or self.conv_stem_width % self.conv_num_groups:
            raise ValueError(
                f"`conv_num_groups` ({self.conv_num_groups}) must divide `conv_stem_width` ({self.conv_stem_width})"
            )
        if self.image_size % self.stem_stride:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of the convolutional stem's stride "
                f"{self.stem_stride}"
            )
        if self.num_encoder_layers < 1 or self.num_decoder_layers < 1:
            raise ValueError("`num_encoder_layers` and `num_decoder_layers` must be >= 1")
        super().__post_init__(**kwargs)

    @property
    def stem_stride(self) -> int:
        """Downsampling of the stem: 4 (7x7/2 convolution + 3x3/2 max pool), then 2 per stage after the first."""
        return 4 * 2 ** (len(self.conv_stage_depths) - 1)

    @property
    def grid_size(self) -> int:
        """Patch tokens per image side (224 px / 16 = 14: 196 image tokens)."""
        return self.image_size // self.stem_stride

    @property
    def stem_channels(self) -> int:
        """Channels of the stem's output feature map (bottleneck expansion 4 of the last stage's width)."""
        return self.conv_stem_width * 2 ** (len(self.conv_stage_depths) - 1) * 4


def simvlm_config(size: str = "base", **overrides) -> SimVlmConfig:
    """The paper's SimVLM-`size` ("base", "large", "huge"); `overrides` set any other field. The decoder gets the
    encoder's depth unless `num_decoder_layers` is given."""
    if size not in SIZES:
        raise ValueError(f"`size` must be one of {sorted(SIZES)}, got {size!r}")
    values = dict(SIZES[size], num_decoder_layers=SIZES[size]["num_encoder_layers"])
    values.update(overrides)
    return SimVlmConfig(**values)


__all__ = ["SIZES", "SimVlmConfig", "simvlm_config"]
