"""CLIP (Radford et al., ICML 2021) in hf_vlp: what transformers' `CLIPModel` lacks.

* `CLIPForPreTraining`: transformers' `CLIPModel` (same weights, same key names, so Hub checkpoints load unchanged)
  whose loss is hf_vlp's distributed-exact contrastive loss (`hf_vlp.pretraining.contrastive`): under DDP the loss and
  gradients equal the single-process run on the global batch (transformers' `return_loss` uses only the local
  batch). It also gives the token / patch level embeddings FILIP-style late interaction uses.
* `CLIPResNetModel`: CLIP with OpenAI's ModifiedResNet image tower (RN50 ... RN50x64), which transformers does not
  have: three-conv stem with average pooling, anti-aliased Bottlenecks (average pool before every strided path) and
  an attention pool whose query is the mean of the spatial tokens (`clip/model.py`: `ModifiedResNet`, `Bottleneck`,
  `AttentionPool2d`). The text tower is transformers' `CLIPTextModel` unchanged.

Faithfulness (shared/fixtures/clip): transformers pools the text at the FIRST position equal to `eos_token_id`, the
original at the position of the largest id; converted configs set `eos_token_id = vocab_size - 1` (EOT is the largest
id), which makes the two rules agree.
"""

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPTextModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import CLIPOutput, CLIPPreTrainedModel
from transformers.utils import can_return_tuple

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.layers import check_pixel_values, eager_attention_forward
from hf_vlp.pretraining.contrastive import contrastive_loss

from .configuration_clip_resnet import CLIPResNetConfig, CLIPResNetVisionConfig

# Default LoRA targets (PEFT `LoraConfig(target_modules=...)`): the attention projections of both towers (ViT CLIP:
# vision and text `self_attn.{q,k,v,out}_proj`; ResNet CLIP: text attention plus the image tower's attention pool
# `attnpool.{q,k,v,c}_proj`). Both work with gradient checkpointing after `model.enable_input_require_grads()`.
# ResNet CLIP: also set `config.vision_config.freeze_batch_norm = True` (adapters do not carry BatchNorm statistics).
LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]
RESNET_LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj", "c_proj"]

# CLIP paper section 2.5: "clipped to prevent scaling the logits by more than 100"
MAX_LOGIT_SCALE = 100.0


def check_text_length(input_ids: torch.Tensor, context_length: int):
    """The original `clip.tokenize` refuses texts longer than the context; so do we, with the sizes in the error."""
    if input_ids is not None and input_ids.shape[-1] > context_length:
        raise ValueError(
            f"input_ids has {input_ids.shape[-1]} tokens but the CLIP text encoder's context is {context_length} "
            "(text_config.max_position_embeddings); tokenize with truncation=True, max_length="
            f"{context_length} (the original overwrites the last kept token with <|endoftext|>)"
        )


class CLIPContrastiveMixin(HubPushMixin):
    """`forward(input_ids, pixel_values, return_loss=True)` returning `CLIPOutput`, with the loss of
    `hf_vlp.pretraining.contrastive.contrastive_loss` (all-gather with gradients under DDP). Needs
    `get_image_features`, `get_text_features`, `logit_scale` and `config.text_config.max_position_embeddings`."""

    accepts_loss_kwargs = False  # the loss normalises itself (and is exact across ranks)

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        position_ids=None,
        return_loss=True,
        gather=True,
        sample_ids=None,
        interpolate_pos_encoding=False,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> CLIPOutput:
        r"""
        return_loss: compute the symmetric InfoNCE loss (default True, so `Trainer` trains it directly).
        gather: all-gather embeddings across ranks with gradients (no-op in one process).
        sample_ids: optional (B,) ids; pairs sharing an id are all positives (several captions of one image).
        """
        check_pixel_values(pixel_values, self.config.vision_config.num_channels)
        check_text_length(input_ids, self.config.text_config.max_position_embeddings)
        layer_outputs = dict(output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        vision_outputs = self.get_image_features(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **layer_outputs
        )
        text_outputs = self.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **layer_outputs
        )
        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        logit_scale = self.logit_scale.exp()
        logits_per_text = logit_scale * text_embeds @ image_embeds.t()

        loss = None
        if return_loss:
            loss = contrastive_loss(
                image_embeds,
                text_embeds,
                logit_scale.clamp(max=MAX_LOGIT_SCALE),
                gather=gather,
                normalize=False,
                sample_ids=sample_ids,
            )
        return CLIPOutput(
            loss=loss,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )

    def get_text_token_embeds(self, input_ids, attention_mask=None):
        """(B, T, projection_dim): the text projection applied to every position after the final LayerNorm (the
        original projects only the EOT position; FILIP-style late interaction needs all)."""
        check_text_length(input_ids, self.config.text_config.max_position_embeddings)
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.text_projection(hidden)


class CLIPForPreTraining(CLIPContrastiveMixin, CLIPModel):
    """transformers' `CLIPModel` (identical parameters and key names) trained with hf_vlp's distributed-exact
    contrastive loss; also image-text retrieval fine-tuning (same objective)."""

    def get_text_features(
        self, input_ids, attention_mask=None, position_ids=None, output_attentions=None, output_hidden_states=None
    ):
        check_text_length(input_ids, self.config.text_config.max_position_embeddings)
        return super().get_text_features(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )

    def get_image_patch_embeds(self, pixel_values):
        """(B, 1 + patches, projection_dim): `post_layernorm` then the visual projection on every token (token 0 is
        `get_image_features`); FILIP-style patch embeddings."""
        hidden = self.vision_model(pixel_values=pixel_values).last_hidden_state
        return self.visual_projection(self.vision_model.post_layernorm(hidden))


# ------------------------------------------------------------------------------------------------------------------
# ModifiedResNet image tower
# ------------------------------------------------------------------------------------------------------------------


class CLIPResNetStem(nn.Module):
    """Three 3x3 convolutions (the first with stride 2) with BatchNorm + ReLU, then a 2x2 average pool (instead of
    torchvision's single 7x7 conv and max pool)."""

    def __init__(self, config: CLIPResNetVisionConfig):
        super().__init__()
        half, eps = config.width // 2, config.batch_norm_eps
        self.conv1 = nn.Conv2d(config.num_channels, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half, eps=eps)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half, eps=eps)
        self.conv3 = nn.Conv2d(half, config.width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(config.width, eps=eps)
        self.pool = nn.AvgPool2d(2)

    def forward(self, pixel_values):
        hidden = F.relu(self.bn1(self.conv1(pixel_values)))
        hidden = F.relu(self.bn2(self.conv2(hidden)))
        hidden = F.relu(self.bn3(self.conv3(hidden)))
        return self.pool(hidden)


class CLIPResNetBottleneck(GradientCheckpointingLayer):
    """1x1 -> 3x3 -> (avg pool if strided) -> 1x1 x4 expansion; every convolution has stride 1 and striding is an
    average pool ("anti-aliased"), also on the shortcut, whose 1x1 projection follows the pool."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, eps: float):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=eps)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=eps)
        self.downsample = None
        if stride > 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                OrderedDict(
                    pool=nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
                    conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
                    bn=nn.BatchNorm2d(out_channels, eps=eps),
                )
            )

    def forward(self, hidden_states):
        shortcut = hidden_states if self.downsample is None else self.downsample(hidden_states)
        out = F.relu(self.bn1(self.conv1(hidden_states)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.pool(out)))
        return F.relu(out + shortcut)


class CLIPResNetAttentionPool(nn.Module):
    """Multi-head attention over the spatial tokens of the last stage with one query: the mean token (prepended, with
    its own position embedding). Only the query's output is used, so only it is computed. Runs through transformers'
    attention interface (`config._attn_implementation`: eager, SDPA, ...)."""

    def __init__(self, config: CLIPResNetVisionConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        grid = config.image_size // 32
        self.num_heads = config.num_attention_heads
        self.is_causal = False
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, dim))
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, config.output_dim)

    def forward(self, feature_map):
        batch, channels, height, width = feature_map.shape
        if height * width + 1 != self.positional_embedding.shape[0]:
            raise ValueError(
                f"pixel_values give a {height}x{width} final grid but the attention pool was trained for "
                f"{self.positional_embedding.shape[0] - 1} positions (image_size="
                f"{32 * math.isqrt(self.positional_embedding.shape[0] - 1)})"
            )
        tokens = feature_map.flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + self.positional_embedding
        head_dim = channels // self.num_heads

        def heads(x):
            return x.view(batch, x.shape[1], self.num_heads, head_dim).transpose(1, 2)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attended, _ = attention_interface(
            self,
            heads(self.q_proj(tokens[:, :1])),
            heads(self.k_proj(tokens)),
            heads(self.v_proj(tokens)),
            None,
            dropout=0.0,
            scaling=head_dim**-0.5,
        )
        return self.c_proj(attended.reshape(batch, channels))


class CLIPResNetPreTrainedModel(HubPushMixin, CLIPPreTrainedModel):
    config: CLIPResNetConfig
    config_class = CLIPResNetConfig
    base_model_prefix = "clip_resnet"
    # the text tower's blocks come from CLIPTextModel's own `_no_split_modules` (post_init collects them)
    _no_split_modules = ["CLIPResNetBottleneck", "CLIPResNetAttentionPool"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CLIPResNetAttentionPool):
            # clip/model.py `initialize_parameters`
            std = module.c_proj.in_features**-0.5
            init.normal_(module.positional_embedding, std=module.positional_embedding.shape[1] ** -0.5)
            for linear in (module.q_proj, module.k_proj, module.v_proj, module.c_proj):
                init.normal_(linear.weight, std=std)
        elif isinstance(module, CLIPResNetBottleneck):
            init.zeros_(module.bn3.weight)  # each residual block starts as the identity
        elif isinstance(module, CLIPResNetModel):
            init.normal_(module.text_projection.weight, std=module.text_projection.in_features**-0.5)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class CLIPResNetVisionModel(CLIPResNetPreTrainedModel):
    """ModifiedResNet: `last_hidden_state` is the last stage's map (B, 32*width, H/32, W/32) (per-location features
    before pooling), `pooler_output` the attention pool's output (B, output_dim), `hidden_states` (with
    `output_hidden_states=True`) the stem and the four stage outputs."""

    config: CLIPResNetVisionConfig
    config_class = CLIPResNetVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: CLIPResNetVisionConfig):
        super().__init__(config)
        self.stem = CLIPResNetStem(config)
        in_channels = config.width
        for stage, blocks in enumerate(config.layers):
            planes = config.width * 2**stage
            stride = 1 if stage == 0 else 2
            layer = []
            for block in range(blocks):
                layer.append(
                    CLIPResNetBottleneck(in_channels, planes, stride if block == 0 else 1, config.batch_norm_eps)
                )
                in_channels = planes * CLIPResNetBottleneck.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.attnpool = CLIPResNetAttentionPool(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.stem

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.config.freeze_batch_norm:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    @can_return_tuple
    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None) -> BaseModelOutputWithPooling:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.num_channels}, height, width), got "
                f"{tuple(pixel_values.shape)}"
            )
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        hidden = self.stem(pixel_values.to(self.stem.conv1.weight.dtype))
        states = [hidden]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                hidden = block(hidden)
            states.append(hidden)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden,
            pooler_output=self.attnpool(hidden),
            hidden_states=tuple(states) if output_hidden_states else None,
        )


class CLIPResNetModel(CLIPContrastiveMixin, CLIPResNetPreTrainedModel):
    """CLIP with the ModifiedResNet image tower; the same interface as `CLIPModel` (`get_text_features`,
    `get_image_features`, `forward(...) -> CLIPOutput`) and the distributed-exact contrastive loss."""

    def __init__(self, config: CLIPResNetConfig):
        super().__init__(config)
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.vision_model = CLIPResNetVisionModel._from_config(config.vision_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    def get_input_embeddings(self):
        return self.text_model.get_input_embeddings()

    def get_text_features(
        self, input_ids, attention_mask=None, position_ids=None, output_attentions=None, output_hidden_states=None
    ):
        """`pooler_output` = text projection of the pooled (EOT) token."""
        check_text_length(input_ids, self.config.text_config.max_position_embeddings)
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    def get_image_features(
        self, pixel_values, interpolate_pos_encoding=False, output_attentions=None, output_hidden_states=None
    ):
        """`pooler_output` = the attention pool's output (already in the joint space). A ResNet has no attention
        maps and a fixed grid: `output_attentions` and `interpolate_pos_encoding` are accepted for the common
        interface and have no effect."""
        return self.vision_model(pixel_values=pixel_values, output_hidden_states=output_hidden_states)


__all__ = [
    "LORA_TARGET_MODULES",
    "RESNET_LORA_TARGET_MODULES",
    "CLIPForPreTraining",
    "CLIPResNetModel",
    "CLIPResNetPreTrainedModel",
    "CLIPResNetVisionModel",
    "check_text_length",
]
