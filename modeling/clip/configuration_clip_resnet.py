"""Configuration of CLIP with OpenAI's ModifiedResNet image tower (RN50, RN101, RN50x4/x16/x64).

transformers has no ResNet CLIP; the text tower is transformers' `CLIPTextConfig` unchanged. Defaults are RN50
(openai/CLIP `clip/model.py`; sizes as `build_model` infers them from the released `RN50.pt`).
"""

from huggingface_hub.dataclasses import strict
from transformers import CLIPTextConfig, PreTrainedConfig


@strict
class CLIPResNetVisionConfig(PreTrainedConfig):
    r"""
    layers: Bottleneck blocks per stage (RN50: 3, 4, 6, 3).
    width: channels of the stem output and of the first stage's bottleneck (64); stage i outputs width * 2**i * 4.
    image_size: input resolution; the attention pool's position table is (image_size // 32)**2 + 1 long.
    output_dim: output of the attention pool (`c_proj`), the joint embedding size.
    num_attention_heads: heads of the attention pool; the original fixes `width * 32 // 64` (left None = that).
    batch_norm_eps: 1e-5, torch's BatchNorm default that the original uses.
    freeze_batch_norm: keep every BatchNorm in eval mode (running statistics used and never updated) even when the
        model trains. Set it for LoRA / frozen-tower fine-tuning: adapters do not save the running statistics, so
        letting them drift would make a reloaded adapter differ from the trained one (open_clip's `lock_image` also
        freezes them).
    """

    model_type = "clip_resnet_vision_model"
    base_config_key = "vision_config"

    layers: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    image_size: int = 224
    output_dim: int = 1024
    num_attention_heads: int | None = None
    num_channels: int = 3
    batch_norm_eps: float = 1e-5
    freeze_batch_norm: bool = False
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        self.layers = [int(n) for n in self.layers]
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"`layers` must give 4 positive block counts, got {self.layers}")
        if self.image_size % 32:
            raise ValueError(f"`image_size` must be a multiple of 32 (the tower's stride), got {self.image_size}")
        if self.num_attention_heads is None:
            self.num_attention_heads = self.width * 32 // 64
        if (self.width * 32) % self.num_attention_heads:
            raise ValueError(
                f"the attention pool width {self.width * 32} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}"
            )
        super().__post_init__(**kwargs)

    @property
    def embed_dim(self) -> int:
        """Channels of the last stage = width of the attention pool."""
        return self.width * 32


@strict
class CLIPResNetConfig(PreTrainedConfig):
    r"""
    text_config: a `CLIPTextConfig` (dict or instance). For converted OpenAI weights `eos_token_id` is
        `vocab_size - 1` so that transformers' first-EOS pooling equals the original's argmax pooling.
    vision_config: a `CLIPResNetVisionConfig`; its `output_dim` is forced to `projection_dim`.
    projection_dim: joint embedding size (RN50: 1024).
    logit_scale_init_value: initial log of the logit scale (log(1/0.07), CLIP paper section 2.5).
    """

    model_type = "clip_resnet"
    sub_configs_defaults = {"text_config": CLIPTextConfig, "vision_config": CLIPResNetVisionConfig}

    text_config: dict | CLIPTextConfig | None = None
    vision_config: dict | CLIPResNetVisionConfig | None = None
    projection_dim: int = 1024
    logit_scale_init_value: float = 2.6592
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # the attention pool projects straight into the joint space: there is no separate visual projection
        self.vision_config.output_dim = self.projection_dim
        self.text_config.projection_dim = self.projection_dim
