"""METER (Dou et al., "An Empirical Study of Training End-to-End Vision-and-Language Transformers", CVPR 2022).

The released METER-CLIP16-RoBERTa: a text encoder and an image encoder run to the end, then a co-attention fusion of
two streams (METER `meter_module.METERTransformerSS`, "encode fully, then fuse"):

    text  = RoBERTa(input_ids)                                   (transformers' RobertaModel / BertModel)
    image = ln_post(CLIP-ViT(pixel_values))  on every token       (transformers' CLIPVisionModel, see below)
    x = text_transform(text) + type[0];  y = image_transform(image) + type[image_token_type_idx]
    for each fusion layer:  x, y = text_layer(x, context=y), image_layer(y, context=x)   (both from the previous x, y)
    pooled = [tanh(W_t x[:, 0]); tanh(W_v y[:, 0])]               (text half first)

What is reused and what is METER's own:
* text encoder: transformers' `RobertaModel` (or `BertModel`) without its pooler, exactly as METER calls it (RoBERTa
  position ids from the padding, eps 1e-5).
* image encoder: transformers' `CLIPVisionModel` holds exactly METER's CLIP ViT (conv without bias, class token,
  positions, `pre_layrnorm` = `ln_pre`, pre-LN blocks with QuickGELU, `post_layernorm` = `ln_post`); the one
  difference is that METER applies `ln_post` to every token and transformers only to the pooled CLS, so this model
  applies `vision_model.post_layernorm` to `last_hidden_state` itself. METER's dropped last CLIP block is just
  `vision_config.num_hidden_layers` (11 for ViT-B/16). transformers' `interpolate_pos_encoding` is METER's
  `adapt_position_encoding` (bicubic, align_corners=False, CLS row kept).
* fusion: `hf_vlp.layers.cross_modal.CrossModalLayer` (METER's `BertCrossLayer`: self-attention, cross-attention,
  feed-forward, post-LN, eps 1e-12), one stack per stream, updated in parallel. transformers' BridgeTower classes
  cannot express METER (entrance LayerNorms, link towers), and hf_vlp's ViLBERT co-attention layer exchanges before
  self-attending (docs/meter.md).
* heads (METER `heads.py`, `objectives.py`): MLM (Linear-GELU-LN(1e-12), its own decoder of the fusion width + bias),
  ITM Linear(2H, 2), classifiers Linear-LN(1e-5)-GELU-Linear (VQA, SNLI-VE; NLVR2 from 4H), IRTR Linear(2H, 1).
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, can_return_tuple

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.layers import MaskedLMHead, Pooler, StreamSpec, additive_attention_mask, check_pixel_values
from hf_vlp.layers.cross_modal import CrossModalLayer
from hf_vlp.pretraining.losses import masked_cross_entropy, pair_loss, soft_score_loss

from .configuration_meter import MeterConfig

# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MeterModelOutput(ModelOutput):
    """
    text_hidden_state: (B, T, H) the text stream after the last fusion layer (METER `text_feats`).
    visual_hidden_state: (B, 1 + N, H) the image stream after the last fusion layer, CLS first (`image_feats`).
    text_pooler_output / visual_pooler_output: (B, H) tanh(Linear(token 0)) of each stream.
    pooler_output: (B, 2H) [text; image] pooled (`cls_feats`).
    text_hidden_states: the text encoder's hidden states (embeddings, every layer), then the fusion's text stream
        (its input, every fusion layer). visual_hidden_states: the same for the image (CLIP's blocks, then fusion).
    text_attentions / visual_attentions: each encoder's self-attentions then each fusion layer's self-attentions
        (eager attention only); cross_attentions: (text->image, image->text) per fusion layer.
    """

    text_hidden_state: torch.FloatTensor | None = None
    visual_hidden_state: torch.FloatTensor | None = None
    text_pooler_output: torch.FloatTensor | None = None
    visual_pooler_output: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    visual_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_attentions: tuple[torch.FloatTensor, ...] | None = None
    visual_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[tuple[torch.FloatTensor, torch.FloatTensor], ...] | None = None


@dataclass
class MeterForPreTrainingOutput(ModelOutput):
    """`loss` = mlm_weight * mlm_loss + itm_weight * itm_loss over the objectives whose labels were given.
    `mlm_logits`: (N, V) at the N labelled positions (row-major) when `labels` are given, else (B, T, V).
    `itm_logits`: (B, 2), index 1 = the text matches the image."""

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    text_hidden_state: torch.FloatTensor | None = None
    visual_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    visual_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_attentions: tuple[torch.FloatTensor, ...] | None = None
    visual_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[tuple[torch.FloatTensor, torch.FloatTensor], ...] | None = None


@dataclass
class MeterTaskOutput(ModelOutput):
    """`loss` when labels are given, the head's `logits` (VQA (B, A), SNLI-VE (B, 3), NLVR2 (B, 2), retrieval (B,)),
    the retrieval head's `itm_logits` (B, 2), and each stream's per-layer states on request (`MeterModelOutput`
    names; NLVR2: those of the first image's pass, then the second's)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    visual_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_attentions: tuple[torch.FloatTensor, ...] | None = None
    visual_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[tuple[torch.FloatTensor, torch.FloatTensor], ...] | None = None


_STREAM_FIELDS = (
    "text_hidden_states",
    "visual_hidden_states",
    "text_attentions",
    "visual_attentions",
    "cross_attentions",
)


def _stream_outputs(*outputs):
    """The per-layer fields of one or more `MeterModelOutput`s, concatenated (NLVR2 runs the model twice)."""
    fields = {}
    for name in _STREAM_FIELDS:
        values = [getattr(out, name) for out in outputs]
        fields[name] = None if any(v is None for v in values) else sum(values, ())
    return fields


# ----------------------------------------------------------------------------------------------------------------
# Base model
# ----------------------------------------------------------------------------------------------------------------


class MeterPreTrainedModel(HubPushMixin, PreTrainedModel):
    config_class = MeterConfig
    base_model_prefix = "meter"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # the fusion uses additive (B, 1, 1, T) key masks, which the flash / flex interfaces do not take; untested there
    _supports_flash_attn = False
    _supports_flex_attn = False
    _no_split_modules = ["CrossModalLayer"]  # post_init adds those of the text and vision models
    accepts_loss_kwargs = False  # each head normalises its own loss (docs/design.md, "Trainer under DDP")

    def _init_weights(self, module):
        """METER's `objectives.init_weights` for the fusion, the transforms and the heads: Linear / Embedding
        N(0, `initializer_range` = 0.02), LayerNorm 1 / 0, biases 0 (transformers' defaults with the config's range);
        the text and image encoders keep their own init (METER starts them from RoBERTa and CLIP)."""
        super()._init_weights(module)
        if isinstance(module, MaskedLMHead):
            init.zeros_(module.bias)


class MeterModel(MeterPreTrainedModel):
    """The METER encoder: text and image encoders, the fusion entrance (linear transforms + token-type table, no
    LayerNorm), two parallel stacks of cross-modal layers and the two poolers.

    Keys: `text_model.*` (transformers' RoBERTa / BERT without pooler), `vision_model.*` (transformers'
    CLIPVisionModel), `cross_modal_{text,image}_transform`, `token_type_embeddings`,
    `cross_modal_{text,image}_layers.N.*` (METER's names), `cross_modal_{text,image}_pooler.dense`.
    """

    def __init__(self, config: MeterConfig):
        super().__init__(config)
        fusion = config.cross_modal_config
        width = fusion.hidden_size
        self.text_model = AutoModel.from_config(config.text_config, add_pooling_layer=False)
        self.vision_model = CLIPVisionModel(config.vision_config)
        self.cross_modal_text_transform = nn.Linear(config.text_config.hidden_size, width)
        self.cross_modal_image_transform = nn.Linear(config.vision_config.hidden_size, width)
        self.token_type_embeddings = nn.Embedding(config.modality_type_vocab_size, width)
        stream = StreamSpec(
            width,
            fusion.num_attention_heads,
            fusion.intermediate_size,
            fusion.hidden_act,
            fusion.hidden_dropout_prob,
            fusion.attention_probs_dropout_prob,
        )
        # the layers read their sizes from `stream` and the attention implementation from the top-level config
        self.cross_modal_text_layers = nn.ModuleList(
            CrossModalLayer(config, stream, fusion.layer_norm_eps) for _ in range(fusion.num_hidden_layers)
        )
        self.cross_modal_image_layers = nn.ModuleList(
            CrossModalLayer(config, stream, fusion.layer_norm_eps) for _ in range(fusion.num_hidden_layers)
        )
        self.cross_modal_text_pooler = Pooler(width)
        self.cross_modal_image_pooler = Pooler(width)
        self.post_init()

    def get_input_embeddings(self):
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.text_model.set_input_embeddings(value)

    def check_inputs(self, input_ids, inputs_embeds, pixel_values, attention_mask, image_token_type_idx):
        """ValueErrors naming the argument for the inputs METER cannot read."""
        check_pixel_values(pixel_values, self.config.vision_config.num_channels)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of `input_ids` (batch, length) and `inputs_embeds`")
        text = input_ids if input_ids is not None else inputs_embeds
        if pixel_values.shape[0] != text.shape[0]:
            name = "input_ids" if input_ids is not None else "inputs_embeds"
            raise ValueError(
                f"`pixel_values` holds {pixel_values.shape[0]} images but `{name}` {text.shape[0]} texts: METER "
                "pairs one image with each text (batch sizes must match)"
            )
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(text.shape[:2]):
            raise ValueError(
                f"`attention_mask` must have shape {tuple(text.shape[:2])}, got {tuple(attention_mask.shape)}"
            )
        rows = self.config.modality_type_vocab_size
        if not 1 <= image_token_type_idx < rows:
            raise ValueError(
                f"`image_token_type_idx` must be in [1, {rows}) (the token-type table has {rows} rows: 0 is text), "
                f"got {image_token_type_idx}"
            )

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        image_token_type_idx=1,
        interpolate_pos_encoding=False,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> MeterModelOutput:
        r"""
        input_ids: (B, T) token ids (RoBERTa: `<s>` ... `</s>` then `<pad>`), or `inputs_embeds` (B, T, text width).
        pixel_values: (B, 3, H, W) images preprocessed as `MeterImageProcessor` does (one per text).
        attention_mask: (B, T) 1 = real token; the image stream has no padding.
        token_type_ids, position_ids: passed to the text encoder (RoBERTa's default position ids count real tokens
            from `pad_token_id + 1`, as METER's).
        image_token_type_idx: row of the fusion's token-type table added to the image stream (1; NLVR2's second
            image 2).
        interpolate_pos_encoding: run at another resolution than `vision_config.image_size` (bicubic, as METER's
            `adapt_position_encoding`).
        """
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        self.check_inputs(input_ids, inputs_embeds, pixel_values, attention_mask, image_token_type_idx)
        text_shape = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(text_shape, dtype=torch.long, device=pixel_values.device)
        requests = dict(output_attentions=output_attentions, output_hidden_states=output_hidden_states)

        text_out = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **requests,
        )
        vision_out = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **requests
        )
        # METER applies CLIP's ln_post to every token (transformers' CLIPVisionModel only to the pooled CLS)
        image_states = self.vision_model.post_layernorm(vision_out.last_hidden_state)

        text = self.cross_modal_text_transform(text_out.last_hidden_state)
        image = self.cross_modal_image_transform(image_states)
        text_types = torch.zeros(text_shape, dtype=torch.long, device=text.device)
        text = text + self.token_type_embeddings(text_types)
        image = image + self.token_type_embeddings(torch.full_like(text_types[:, :1], image_token_type_idx))

        text_mask = additive_attention_mask(attention_mask, text.dtype)
        text_states = (*text_out.hidden_states, text) if output_hidden_states else None
        visual_states = (*vision_out.hidden_states, image) if output_hidden_states else None
        text_attentions = tuple(text_out.attentions) if output_attentions else None
        visual_attentions = tuple(vision_out.attentions) if output_attentions else None
        cross_attentions = () if output_attentions else None
        for text_layer, image_layer in zip(self.cross_modal_text_layers, self.cross_modal_image_layers):
            # both streams read the other's state from the previous layer (METER updates them in parallel)
            new_text, text_self, text_cross = text_layer(text, image, attention_mask=text_mask)
            new_image, image_self, image_cross = image_layer(image, text, context_mask=text_mask)
            text, image = new_text, new_image
            if output_hidden_states:
                text_states += (text,)
                visual_states += (image,)
            if output_attentions:
                text_attentions += (text_self,)
                visual_attentions += (image_self,)
                cross_attentions += ((text_cross, image_cross),)

        text_pooled = self.cross_modal_text_pooler(text)
        image_pooled = self.cross_modal_image_pooler(image)
        return MeterModelOutput(
            text_hidden_state=text,
            visual_hidden_state=image,
            text_pooler_output=text_pooled,
            visual_pooler_output=image_pooled,
            pooler_output=torch.cat([text_pooled, image_pooled], dim=-1),
            text_hidden_states=text_states,
            visual_hidden_states=visual_states,
            text_attentions=text_attentions,
            visual_attentions=visual_attentions,
            cross_attentions=cross_attentions,
        )


# ----------------------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------------------


def meter_classifier(input_size, hidden_size, num_labels, layer_norm_eps):
    """METER's task classifier (`vqa_classifier`, `snli_classifier`, `nlvr2_classifier`): Linear -> LayerNorm ->
    GELU -> Linear, keys `0.*`, `1.*`, `3.*` (the LayerNorm comes before the activation, unlike
    `hf_vlp.layers.mlp_classifier`)."""
    return nn.Sequential(
        nn.Linear(input_size, hidden_size),
        nn.LayerNorm(hidden_size, eps=layer_norm_eps),
        nn.GELU(),
        nn.Linear(hidden_size, num_labels),
    )


class MeterForPreTraining(MeterPreTrainedModel):
    """METER's pretraining heads: masked language modelling on the fused text stream (`mlm_score`, its own decoder
    of the fusion width plus `decoder.bias`; not tied to the word embeddings) and image-text matching on the pooled
    pair (`itm_score`, Linear(2H, 2)).

    One forward computes each objective whose targets are given: `labels` (B, T) with -100 where nothing is predicted
    (MLM on `input_ids` with masked tokens), `itm_labels` (B,) 1 = matching pair, 0 = a swapped-in image. METER runs
    them as separate passes (MLM on matched pairs with masked text; ITM on the unmasked text with half the images
    swapped); a collator that mixes them in one batch sets `labels` to -100 on mismatched rows.
    """

    def __init__(self, config: MeterConfig):
        super().__init__(config)
        width = config.cross_modal_config.hidden_size
        self.meter = MeterModel(config)
        self.mlm_score = MaskedLMHead(
            width,
            config.text_config.vocab_size,
            config.cross_modal_config.hidden_act,
            config.cross_modal_config.layer_norm_eps,
        )
        self.itm_score = nn.Linear(2 * width, 2)
        self.post_init()

    def get_output_embeddings(self):
        return self.mlm_score.decoder

    def set_output_embeddings(self, new_embeddings):
        self.mlm_score.decoder = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        interpolate_pos_encoding=False,
        labels=None,
        itm_labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> MeterForPreTrainingOutput:
        r"""
        interpolate_pos_encoding: images at another resolution than `vision_config.image_size` (see `MeterModel`).
        labels: (B, T) masked-LM targets, -100 = not predicted.
        itm_labels: (B,) 1 = the text matches the image, 0 = not.
        """
        text = input_ids if input_ids is not None else inputs_embeds
        if labels is not None and text is not None and tuple(labels.shape) != tuple(text.shape[:2]):
            raise ValueError(f"`labels` must have shape {tuple(text.shape[:2])}, got {tuple(labels.shape)}")
        if itm_labels is not None and text is not None and tuple(itm_labels.shape) != (text.shape[0],):
            raise ValueError(f"`itm_labels` must have shape ({text.shape[0]},), got {tuple(itm_labels.shape)}")
        outputs = self.meter(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        itm_logits = self.itm_score(outputs.pooler_output)
        text_states = outputs.text_hidden_state
        losses = {}
        if labels is not None:
            selected = labels != -100
            mlm_logits = self.mlm_score(text_states[selected])
            losses["mlm_loss"] = masked_cross_entropy(mlm_logits, labels[selected])
        else:
            mlm_logits = self.mlm_score(text_states)
        if itm_labels is not None:
            losses["itm_loss"] = masked_cross_entropy(itm_logits, itm_labels.long())
        weights = {"mlm_loss": self.config.mlm_weight, "itm_loss": self.config.itm_weight}
        loss = sum(weights[name] * value for name, value in losses.items()) if losses else None
        return MeterForPreTrainingOutput(
            loss=loss,
            mlm_loss=losses.get("mlm_loss"),
            itm_loss=losses.get("itm_loss"),
            mlm_logits=mlm_logits,
            itm_logits=itm_logits,
            text_hidden_state=outputs.text_hidden_state,
            visual_hidden_state=outputs.visual_hidden_state,
            pooler_output=outputs.pooler_output,
            **_stream_outputs(outputs),
        )


class MeterTaskModel(MeterPreTrainedModel):
    """Shared plumbing of the task heads: the backbone (`meter`), one forward. A head states what is its own:
    `build_head(config)`, `predict(pooled)` and `compute_loss(logits, labels)`; NLVR2 overrides `encode`."""

    def __init__(self, config: MeterConfig):
        super().__init__(config)
        self.meter = MeterModel(config)
        self.build_head(config)
        self.post_init()

    def build_head(self, config):
        raise NotImplementedError(f"{type(self).__name__} must define `build_head(config)`")

    def encode(self, inputs):
        """(pooled features the head reads, the backbone outputs)."""
        check_pixel_values(inputs["pixel_values"], self.config.vision_config.num_channels)
        outputs = self.meter(**inputs)
        return outputs.pooler_output, (outputs,)

    def predict(self, pooled):
        return self.classifier(pooled)

    def compute_loss(self, logits, labels):
        return masked_cross_entropy(logits, labels.long())

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        interpolate_pos_encoding=False,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> MeterTaskOutput:
        r"""
        Inputs as `MeterModel` (NLVR2: `pixel_values` (B, 2, 3, H, W); `interpolate_pos_encoding` for images at
        another resolution than `vision_config.image_size`).
        labels: the head's targets (see the class docstring); the loss is computed when they are given.
        """
        inputs = dict(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        pooled, outputs = self.encode(inputs)
        logits = self.predict(pooled)
        loss = self.compute_loss(logits, labels) if labels is not None else None
        return MeterTaskOutput(loss=loss, logits=logits, pooler_output=pooled, **_stream_outputs(*outputs))


class MeterForVisualQuestionAnswering(MeterTaskModel):
    """VQA (METER `vqa_classifier`, `compute_vqa`): classifier on the pooled pair to `config.num_labels` answers
    (3129 for VQA v2). `labels`: (B, num_labels) soft VQA scores or (B,) answer ids; binary cross-entropy summed over
    answers and averaged over examples, as METER (`mean() * num_labels`)."""

    def build_head(self, config):
        width = 2 * config.cross_modal_config.hidden_size
        self.classifier = meter_classifier(width, width, config.num_labels, config.classifier_layer_norm_eps)

    def compute_loss(self, logits, labels):
        return soft_score_loss(logits, labels, scaling="num_answers")


class MeterForVisualEntailment(MeterTaskModel):
    """SNLI-VE (METER `snli_classifier`, `compute_snli`): classifier on the pooled pair to `config.num_labels` (3)
    classes; `labels` (B,) class ids, cross-entropy."""

    def build_head(self, config):
        width = 2 * config.cross_modal_config.hidden_size
        self.classifier = meter_classifier(width, width, config.num_labels, config.classifier_layer_norm_eps)


class MeterForVisualReasoning(MeterTaskModel):
    """NLVR2 (METER `nlvr2_classifier`, `compute_nlvr2`): the statement is fused with each image of the pair, the
    first with token type 1 and the second with token type 2 (`modality_type_vocab_size` 3), and the classifier reads
    the two pooled pairs side by side (4H). `pixel_values`: (B, 2, 3, H, W); `labels` (B,) 0/1, cross-entropy."""

    def build_head(self, config):
        if config.modality_type_vocab_size < 3:
            raise ValueError(
                "MeterForVisualReasoning needs `modality_type_vocab_size` >= 3 (token types: text 0, first image 1, "
                f"second image 2), got {config.modality_type_vocab_size}"
            )
        width = 2 * config.cross_modal_config.hidden_size
        self.classifier = meter_classifier(2 * width, width, config.num_labels, config.classifier_layer_norm_eps)

    def encode(self, inputs):
        check_pixel_values(inputs["pixel_values"], self.config.vision_config.num_channels, images_per_example=2)
        pixel_values = inputs.pop("pixel_values")
        first = self.meter(pixel_values=pixel_values[:, 0], image_token_type_idx=1, **inputs)
        second = self.meter(pixel_values=pixel_values[:, 1], image_token_type_idx=2, **inputs)
        return torch.cat([first.pooler_output, second.pooler_output], dim=-1), (first, second)


class MeterForImageTextRetrieval(MeterTaskModel):
    """Image-text retrieval (METER `rank_output`, `compute_irtr`): a score per (text, image) row, `logits` (B,).
    `labels` (B,) 1/0 -> binary cross-entropy, or `group_size=K` (rows in groups of K, the positive first, as METER's
    one true text and `draw_false_text` false ones per image) -> cross-entropy over each group. The released retrieval
    files also train the ITM head (weight 0.5): `itm_score`, returned as `itm_logits`, with `itm_labels` its loss
    (`loss` = rank loss + itm_weight * itm_loss). METER starts `rank_output` from the ITM "match" row."""

    def build_head(self, config):
        width = 2 * config.cross_modal_config.hidden_size
        self.rank_output = nn.Linear(width, 1)
        self.itm_score = nn.Linear(width, 2)

    def predict(self, pooled):
        return self.rank_output(pooled).squeeze(-1)

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        interpolate_pos_encoding=False,
        labels=None,
        group_size=None,
        itm_labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> MeterTaskOutput:
        r"""
        labels: (B,) 1/0, or None with `group_size` (positive first in each group).
        group_size: rows per group of one positive and K-1 negatives (softmax over the group).
        itm_labels: (B,) 1/0 for the ITM head.
        """
        inputs = dict(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        pooled, outputs = self.encode(inputs)
        logits = self.predict(pooled)
        itm_logits = self.itm_score(pooled)
        loss = itm_loss = None
        if labels is not None or group_size is not None:
            loss = pair_loss(logits, labels, group_size, objective="softmax")
        if itm_labels is not None:
            itm_loss = masked_cross_entropy(itm_logits, itm_labels.long())
            weighted = self.config.itm_weight * itm_loss
            loss = weighted if loss is None else loss + weighted
        return MeterTaskOutput(
            loss=loss,
            logits=logits,
            itm_loss=itm_loss,
            itm_logits=itm_logits,
            pooler_output=pooled,
            **_stream_outputs(*outputs),
        )


__all__ = [
    "MeterForImageTextRetrieval",
    "MeterForPreTraining",
    "MeterForVisualEntailment",
    "MeterForVisualQuestionAnswering",
    "MeterForVisualReasoning",
    "MeterModel",
    "MeterModelOutput",
    "MeterPreTrainedModel",
    "meter_classifier",
]
