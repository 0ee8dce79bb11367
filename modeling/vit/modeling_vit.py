"""ViT (Dosovitskiy et al., ICLR 2021) in hf_vlp: transformers' ViT classes, plus the one head they cannot hold.

transformers' `ViTModel` / `ViTForImageClassification` reproduce Google's Flax ViT (shared/fixtures/vit: <= 3e-6)
when the config says `hidden_act="gelu_pytorch_tanh"` (flax.linen.gelu is the tanh approximation) and
`layer_norm_eps=1e-6` (Flax's default); the converter writes both. What they lack is the representation layer
(`pre_logits`: Dense + tanh on the CLS token) of the 2020 ImageNet-21k releases: `ViTForImageClassification` puts the
classifier straight on the CLS token. `ViTForImageClassificationWithRepresentation` keeps it, reusing transformers'
`ViTModel` pooler (Dense + `pooler_act` on the CLS token of the final LayerNorm output, which is exactly `pre_logits`)
so its keys are `vit.pooler.dense.*` and `classifier.*`.
"""

from torch import nn
from transformers import ViTConfig, ViTModel
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.vit.modeling_vit import ViTPreTrainedModel
from transformers.utils import can_return_tuple

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.layers import check_pixel_values

# Default LoRA targets (PEFT `LoraConfig(target_modules=...)`) of transformers 5 ViT: the attention projections of
# every layer. Train the new classifier fully with `modules_to_save=LORA_MODULES_TO_SAVE`. Works with gradient
# checkpointing after `model.enable_input_require_grads()` (hooks the patch embedding).
LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA_MODULES_TO_SAVE = ["classifier"]


class ViTRepresentationConfig(ViTConfig):
    r"""`ViTConfig` of a ViT whose classifier sits on a representation layer: `pooler_output_size` is the
    representation size (`pre_logits` width) and `pooler_act` its activation ("tanh" in the original)."""

    model_type = "vit_representation"


class ViTForImageClassificationWithRepresentation(HubPushMixin, ViTPreTrainedModel):
    """`ViTModel` with its pooler as the representation layer, then a linear classifier (`vit_jax/models_vit.py`:
    `pre_logits` Dense + tanh on the CLS token, then `head`)."""

    config: ViTRepresentationConfig
    config_class = ViTRepresentationConfig

    def __init__(self, config: ViTRepresentationConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = ViTModel(config, add_pooling_layer=True)
        representation_size = config.pooler_output_size or config.hidden_size
        self.classifier = nn.Linear(representation_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values=None,
        labels=None,
        interpolate_pos_encoding=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> ImageClassifierOutput:
        r"""labels: (B,) class ids (or (B, num_labels) targets), with transformers' classification loss."""
        check_pixel_values(pixel_values, self.config.num_channels)
        outputs = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "LORA_MODULES_TO_SAVE",
    "LORA_TARGET_MODULES",
    "ViTForImageClassificationWithRepresentation",
    "ViTRepresentationConfig",
]
