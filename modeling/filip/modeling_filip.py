"""FILIP (Yao et al., ICLR 2022): a CLIP dual encoder trained with token-wise late interaction.

No official code or weights were released; this follows the paper (docs/filip.md lists every choice it leaves open).
FILIP is a variant of CLIP's architecture: both towers are transformers' `CLIPVisionModel` / `CLIPTextModel`
unchanged, and it reuses `check_text_length` from hf_vlp's CLIP. What is FILIP's own:

* every token (image patches after `post_layernorm`, every text position after the final LayerNorm) is projected
  into the joint space and L2-normalised (section 3.1.1);
* image->text similarity = mean over the patches of the max cosine similarity to any non-padding text token,
  text->image similarity = mean over the non-padding text tokens of the max over the patches (eq. 4-5);
* the contrastive loss uses the first for the image->text and the second for the text->image direction, on a
  fraction of each example's tokens chosen by their token-wise maximum similarity (`late_interaction.py`).

The global CLIP-style embeddings (CLS patch, EOT token, through the same projections) are returned as well, for a
cheap first retrieval stage; the paper's loss does not use them (`global_loss_weight` 0).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModel, CLIPVisionModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPPreTrainedModel
from transformers.utils import ModelOutput, can_return_tuple

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.layers import check_pixel_values
from hf_vlp.modeling.clip.modeling_clip import check_text_length
from hf_vlp.pretraining.contrastive import contrastive_loss

from .configuration_filip import FilipConfig
from .late_interaction import late_interaction_loss, late_interaction_similarity

# LoRA targets (PEFT regex, full module names): the attention projections of both towers
LORA_TARGET_MODULES = r"(vision_model|text_model)\..*\.(q_proj|k_proj|v_proj|out_proj)"


@dataclass
class FilipOutput(ModelOutput):
    r"""
    loss: FILIP's late-interaction contrastive loss (plus `global_loss_weight` x the CLIP loss), when asked.
    logits_per_image: (n_images, n_texts) logit scale x image->text late-interaction similarity s^I.
    logits_per_text: (n_texts, n_images) logit scale x text->image late-interaction similarity s^T (not the
        transpose of `logits_per_image`).
    global_logits_per_image, global_logits_per_text: CLIP-style scaled cosine similarities of the global embeddings.
    image_embeds, text_embeds: (batch, projection_dim) normalised global embeddings (CLS patch, EOT token).
    image_token_embeds: (batch, patches, projection_dim) normalised patch embeddings (the CLS token excluded).
    text_token_embeds: (batch, text length, projection_dim) normalised token embeddings (padding positions too;
        the attention mask says which are real).
    text_model_output, vision_model_output: the towers' outputs.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    global_logits_per_image: torch.FloatTensor | None = None
    global_logits_per_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_token_embeds: torch.FloatTensor | None = None
    text_token_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self):
        return tuple(
            self[k].to_tuple() if k in ("text_model_output", "vision_model_output") else self[k] for k in self.keys()
        )


class FilipPreTrainedModel(HubPushMixin, CLIPPreTrainedModel):
    """CLIP's init and attention support for the towers, plus FILIP's projections and logit scale."""

    config: FilipConfig
    config_class = FilipConfig
    base_model_prefix = "filip"
    main_input_name = "input_ids"

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, FilipModel):
            factor = self.config.initializer_factor
            init.normal_(module.text_projection.weight, std=module.text_projection.in_features**-0.5 * factor)
            init.normal_(module.visual_projection.weight, std=module.visual_projection.in_features**-0.5 * factor)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class FilipModel(FilipPreTrainedModel):
    """Both towers, the projections into the joint space, both kinds of logits and (by default) FILIP's
    contrastive loss on paired batches (image i with text i). Auto classes: `AutoModel`, `AutoModelForPreTraining`.
    """

    accepts_loss_kwargs = False  # the loss normalises itself (and is exact across ranks)

    def __init__(self, config: FilipConfig):
        super().__init__(config)
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.vision_model = CLIPVisionModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    def get_input_embeddings(self):
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.text_model.set_input_embeddings(value)

    # ---- the towers ------------------------------------------------------------------------------------------

    def encode_text(self, input_ids, attention_mask=None, position_ids=None, **layer_outputs):
        """(tower output, normalised global embedding (batch, D), normalised token embeddings (batch, T, D))."""
        if input_ids is None:
            raise ValueError("`input_ids` is required: token ids of shape (batch, text length)")
        check_text_length(input_ids, self.config.text_config.max_position_embeddings)
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` must have the shape of input_ids {tuple(input_ids.shape)}, got "
                f"{tuple(attention_mask.shape)}"
            )
        outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **layer_outputs
        )
        text_embeds = F.normalize(self.text_projection(outputs.pooler_output), dim=-1)
        token_embeds = F.normalize(self.text_projection(outputs.last_hidden_state), dim=-1)
        return outputs, text_embeds, token_embeds

    def encode_image(self, pixel_values, interpolate_pos_encoding=False, **layer_outputs):
        """(tower output, normalised global embedding (batch, D), normalised patch embeddings (batch, P, D))."""
        check_pixel_values(pixel_values, self.config.vision_config.num_channels)
        outputs = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **layer_outputs
        )
        image_embeds = F.normalize(self.visual_projection(outputs.pooler_output), dim=-1)
        patches = self.vision_model.post_layernorm(outputs.last_hidden_state[:, 1:])
        return outputs, image_embeds, F.normalize(self.visual_projection(patches), dim=-1)

    def get_text_token_embeds(self, input_ids, attention_mask=None):
        """(batch, T, projection_dim) normalised token embeddings: what a retrieval index caches for texts."""
        return self.encode_text(input_ids, attention_mask)[2]

    def get_image_token_embeds(self, pixel_values):
        """(batch, patches, projection_dim) normalised patch embeddings: what a retrieval index caches for images."""
        return self.encode_image(pixel_values)[2]

    def late_interaction_logits(self, image_token_embeds, text_token_embeds, text_attention_mask=None):
        """(logits_per_image (n_images, n_texts), logits_per_text (n_texts, n_images)) from normalised token
        embeddings (e.g. cached ones), `config.loss_chunk_size` key sequences at a time."""
        scale = self.logit_scale.exp()
        chunk = self.config.loss_chunk_size
        per_image = late_interaction_similarity(image_token_embeds, text_token_embeds, None, text_attention_mask, chunk)
        per_text = late_interaction_similarity(text_token_embeds, image_token_embeds, text_attention_mask, None, chunk)
        return scale * per_image, scale * per_text

    # ---- forward ---------------------------------------------------------------------------------------------

    def _forward(self, input_ids, pixel_values, attention_mask, position_ids, interpolate_pos_encoding, layer_outputs):
        text_outputs, text_embeds, text_tokens = self.encode_text(
            input_ids, attention_mask, position_ids, **layer_outputs
        )
        vision_outputs, image_embeds, image_tokens = self.encode_image(
            pixel_values, interpolate_pos_encoding, **layer_outputs
        )
        logits_per_image, logits_per_text = self.late_interaction_logits(image_tokens, text_tokens, attention_mask)
        global_logits_per_text = self.logit_scale.exp() * text_embeds @ image_embeds.t()
        return FilipOutput(
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            global_logits_per_image=global_logits_per_text.t(),
            global_logits_per_text=global_logits_per_text,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            image_token_embeds=image_tokens,
            text_token_embeds=text_tokens,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )

    def contrastive_loss(self, output: FilipOutput, attention_mask=None, gather=True, sample_ids=None):
        """FILIP's loss on a paired batch from the output's token embeddings (DDP-exact, chunked, with the
        config's token selection), plus `global_loss_weight` x CLIP's loss on the global embeddings."""
        n_images, n_texts = output.image_embeds.shape[0], output.text_embeds.shape[0]
        if n_images != n_texts:
            raise ValueError(
                f"pixel_values has {n_images} images but input_ids has {n_texts} texts: the contrastive loss pairs "
                "image i with text i (FilipModel: return_loss=False, FilipForImageTextRetrieval: no labels, to score "
                "every image against every text)"
            )
        scale = self.logit_scale.exp().clamp(max=self.config.max_logit_scale)
        loss = late_interaction_loss(
            output.image_token_embeds,
            output.text_token_embeds,
            scale,
            text_mask=attention_mask,
            token_selection_ratio=self.config.token_selection_ratio,
            chunk_size=self.config.loss_chunk_size,
            gather=gather,
            normalize=False,
            sample_ids=sample_ids,
        )
        if self.config.global_loss_weight:
            loss = loss + self.config.global_loss_weight * contrastive_loss(
                output.image_embeds, output.text_embeds, scale, gather=gather, normalize=False, sample_ids=sample_ids
            )
        return loss

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        position_ids=None,
        return_loss=True,
        gather=True,
        interpolate_pos_encoding=False,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> FilipOutput:
        r"""
        return_loss: compute FILIP's contrastive loss (default True, so `Trainer` trains it directly); needs as many
            images as texts (image i pairs with text i).
        gather: all-gather token embeddings across ranks with gradients (no-op in one process).
        """
        layer_outputs = dict(output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        output = self._forward(
            input_ids, pixel_values, attention_mask, position_ids, interpolate_pos_encoding, layer_outputs
        )
        if return_loss:
            output.loss = self.contrastive_loss(output, attention_mask, gather=gather)
        return output


class FilipForImageTextRetrieval(FilipModel):
    """Scores every image against every text (any counts: a gallery, caption sets, class prompts) with FILIP's
    late interaction, and fine-tunes retrieval with FILIP's contrastive loss when `labels` (sample ids) are given.
    Registered for `AutoModelForZeroShotImageClassification`: the pipeline reads `logits_per_image`."""

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        position_ids=None,
        labels=None,
        gather=True,
        interpolate_pos_encoding=False,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> FilipOutput:
        r"""
        labels: optional (batch,) sample ids of a paired batch (image i with text i): image i and text j are also a
            positive pair when labels[i] == labels[j] (several captions of one image). Given, the output carries
            FILIP's contrastive loss with those positives (DDP-exact, as `FilipModel`'s).
        gather: all-gather token embeddings across ranks with gradients (no-op in one process).
        """
        layer_outputs = dict(output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        output = self._forward(
            input_ids, pixel_values, attention_mask, position_ids, interpolate_pos_encoding, layer_outputs
        )
        if labels is not None:
            n_images = output.image_embeds.shape[0]
            if labels.shape != (n_images,) or labels.dtype.is_floating_point:
                raise ValueError(
                    f"`labels` must be ({n_images},) integer sample ids (one per image-text pair), got {labels.dtype} "
                    f"{tuple(labels.shape)}"
                )
            output.loss = self.contrastive_loss(output, attention_mask, gather=gather, sample_ids=labels)
        return output

    @torch.no_grad()
    def zero_shot_logits(self, pixel_values, input_ids, attention_mask=None, num_templates=1):
        """(n_images, n_classes) zero-shot class scores with a prompt ensemble: the texts are class-major (class c,
        template t at row c * num_templates + t; `FilipProcessor.prompt_texts`), and a class's score is the mean of
        the image->text late-interaction logits over its templates (token-level embeddings cannot be averaged
        across prompts the way CLIP averages global embeddings)."""
        if input_ids is None or input_ids.shape[0] % num_templates:
            raise ValueError(
                f"input_ids must hold n_classes x num_templates={num_templates} prompts, got "
                f"{None if input_ids is None else input_ids.shape[0]}"
            )
        output = self._forward(input_ids, pixel_values, attention_mask, None, False, {})
        logits = output.logits_per_image
        return logits.reshape(logits.shape[0], -1, num_templates).mean(dim=-1)


__all__ = [
    "LORA_TARGET_MODULES",
    "FilipForImageTextRetrieval",
    "FilipModel",
    "FilipOutput",
    "FilipPreTrainedModel",
]
