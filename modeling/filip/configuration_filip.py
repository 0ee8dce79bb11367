"""FILIP configuration. Defaults are FILIP-base (Yao et al., ICLR 2022, section 4 / appendix A.1): a ViT-B/32 image
tower at 224 px, CLIP's 12-layer 512-wide text transformer (77 tokens, 49408 BPE tokens), and a 256-d joint space.

The two towers are transformers' own CLIP configs (`CLIPVisionConfig`, `CLIPTextConfig`), whose defaults are
exactly those sizes. Everything FILIP adds is the late-interaction objective: `docs/filip.md` states each choice the
paper leaves open.
"""

from huggingface_hub.dataclasses import strict
from transformers import CLIPTextConfig, CLIPVisionConfig, PreTrainedConfig


@strict
class FilipConfig(PreTrainedConfig):
    r"""
    text_config: a `CLIPTextConfig` (dict or instance). The text tower pools at the first `eos_token_id` for the
        global embedding; late interaction reads every position whose `attention_mask` is 1.
    vision_config: a `CLIPVisionConfig` (dict or instance); late interaction reads the patch tokens.
    projection_dim: size of the joint space every token is projected into (the paper reduces it to 256 to make
        the token-wise similarity affordable).
    logit_scale_init_value: initial log of the multiplier of the cosine similarities (CLIP's log(1 / 0.07); the
        paper does not give FILIP's). The loss clamps the multiplier at `max_logit_scale`.
    max_logit_scale: upper bound of the multiplier in the loss (CLIP's 100).
    token_selection_ratio: fraction of each example's tokens the contrastive loss keeps before the cross-rank
        gather (paper, "training efficiency": the 25% with the highest token-wise maximum similarity to the other
        modality's tokens in the same local batch). 1.0 keeps every token (exactly the loss on all tokens).
    loss_chunk_size: global examples per similarity block in the loss: a rank never holds more than one
        (local batch, loss_chunk_size, image tokens, text tokens) block of similarities at a time. None: one block
        over the whole global batch.
    global_loss_weight: weight of an additional CLIP loss on the global (CLS / EOT) embeddings; the paper trains
        with the late-interaction loss alone (0.0).
    initializer_factor: CLIP's init scale (1.0); the small recipes use 2.0 at width 128.
    """

    model_type = "filip"
    sub_configs_defaults = {"text_config": CLIPTextConfig, "vision_config": CLIPVisionConfig}

    text_config: dict | CLIPTextConfig | None = None
    vision_config: dict | CLIPVisionConfig | None = None
    projection_dim: int = 256
    logit_scale_init_value: float | int = 2.6592
    max_logit_scale: float | int = 100.0
    token_selection_ratio: float | int = 0.25
    loss_chunk_size: int | None = None
    global_loss_weight: float | int = 0.0
    initializer_factor: float | int = 1.0

    def __post_init__(self, **kwargs):
        if not 0.0 < float(self.token_selection_ratio) <= 1.0:
            raise ValueError(f"`token_selection_ratio` must be in (0, 1], got {self.token_selection_ratio!r}")
        if self.loss_chunk_size is not None and self.loss_chunk_size < 1:
            raise ValueError(f"`loss_chunk_size` must be a positive int or None, got {self.loss_chunk_size!r}")
        if self.projection_dim < 1:
            raise ValueError(f"`projection_dim` must be positive, got {self.projection_dim!r}")
        if self.global_loss_weight < 0:
            raise ValueError(f"`global_loss_weight` must be >= 0, got {self.global_loss_weight!r}")
        super().__post_init__(**kwargs)
        self.text_config.projection_dim = self.projection_dim
        self.vision_config.projection_dim = self.projection_dim


__all__ = ["FilipConfig"]
