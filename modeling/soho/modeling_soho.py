"""SOHO: "Seeing Out of tHe bOx" (Huang et al., CVPR 2021), end-to-end vision-language pretraining from pixels.

A ResNet turns the image into a grid of features; a visual dictionary (an embedding table updated by a moving average,
read by a straight-through nearest-entry lookup) quantizes them, a learned 2-way gate mixes the quantized and the raw
features, and a DETR-style 2-D sine position embedding is added. The resulting visual tokens are appended after the
BERT text embeddings and one BERT encoder runs over `[text | visual tokens]`. Reproduces github.com/researchmm/soho
(`SOHO/models/necks/necks.py` `SimpleVDforPreGate` / `SimpleVDforVQA`, `necks/utils.py` `SOHO_Pre_VD`,
`models/soho_singleStream_{Pre,VQA}.py`, `heads/soho_pre_head.py`, `heads/soho_downstream_vqa_head.py`).

Behaviour kept from the original because it changes outputs (docs/soho.md):

* the visual padding mask is painted on a square canvas whose side is the padded height (`config.square_mask_canvas`,
  True by default; False uses `pixel_mask` as it is);
* each image's feature map is repeated once per caption BEFORE the dictionary, so in training the moving averages
  count an image once per caption;
* the dictionary's moving averages are updated in every training-mode forward (never in eval mode), before the
  lookup reads the table; masked visual modelling scores the fused visual states against the dictionary by cosine
  similarity, and cross-entropy is taken over those raw cosines.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, can_return_tuple

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.layers import (
    TextEmbeddings,
    TransformerEncoder,
    additive_attention_mask,
    check_pixel_values,
)
from hf_vlp.layers import TransformerLayer as TransformerLayer  # named in `_no_split_modules`
from hf_vlp.layers.resnet import ResNet
from hf_vlp.layers.sine_position import SinePositionEmbedding
from hf_vlp.pretraining.losses import masked_cross_entropy, soft_score_loss

from .configuration_soho import SohoConfig

# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SohoModelOutput(ModelOutput):
    """
    last_hidden_state: (N, T + V, H) the fused sequence, text first; N = images x captions per image.
    text_hidden_state / visual_hidden_state: (N, T, H) / (N, V, H) views of it.
    visual_tokens: (N, V, H) the visual embeddings given to the encoder (V = h x w of the stride-64 grid, row-major).
    visual_attention_mask: (N, V) 1 where the (possibly square-canvas, see `SohoConfig.square_mask_canvas`) mask
        marks a real image position.
    visual_token_ids: (N, V) index of each position's nearest dictionary entry (None without a dictionary).
    visual_mask_labels: (N, V) dictionary index at positions replaced by the mask embedding, -100 elsewhere (None
        without a dictionary).
    feature_map: (B, C, H/32, W/32) the ResNet's last stage, one per image.
    """

    last_hidden_state: torch.FloatTensor | None = None
    text_hidden_state: torch.FloatTensor | None = None
    visual_hidden_state: torch.FloatTensor | None = None
    visual_tokens: torch.FloatTensor | None = None
    visual_attention_mask: torch.LongTensor | None = None
    visual_token_ids: torch.LongTensor | None = None
    visual_mask_labels: torch.LongTensor | None = None
    feature_map: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SohoForPreTrainingOutput(ModelOutput):
    """Summed weighted `loss`, each objective's loss, and each head's predictions at every position.

    mlm_logits: (N, T, vocab) tied decoder, no bias. mvm_scores: (N, V, num_visual_tokens) cosine similarity of each
    fused visual state with each dictionary entry. itm_logits: (N, 2) from the first token. mvm_labels: the
    dictionary indices masked visual modelling predicts (-100 where nothing was masked).
    """

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    mvm_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    mvm_scores: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    mvm_labels: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SohoVisualQuestionAnsweringOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------------
# Visual embeddings: projection, visual dictionary, gate, sine positions
# ----------------------------------------------------------------------------------------------------------------


class ConvNorm(nn.Module):
    """1x1 convolution without bias followed by batch norm, no activation (mmcv `ConvModule` with a norm)."""

    def __init__(self, in_channels, out_channels, eps=1e-5):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels, eps=eps)

    def forward(self, hidden_states):
        return self.norm(self.conv(hidden_states))


class SohoVisualDictionary(nn.Module):
    """The visual dictionary (`SOHO_Pre_VD`): `num_tokens` entries of width `dim`, kept as buffers and updated by an
    exponential moving average of the features assigned to each entry (the paper's eq. 2), never by gradients.

    `forward(features)` maps (M, dim) features to their nearest entry by L2 distance and returns the entries with the
    straight-through gradient (`entry - feature` detached, plus the feature) and the indices. In training mode it
    first updates the moving averages with this batch's assignments (summed over processes when torch.distributed is
    initialised, as the original's all-gather) and rewrites the table, and then reads the rewritten table.
    """

    laplace_eps = 1e-5

    def __init__(self, num_tokens, dim, decay):
        super().__init__()
        self.num_tokens = num_tokens
        self.decay = float(decay)
        self.embed = nn.Buffer(torch.randn(num_tokens, dim))
        self.cluster_size = nn.Buffer(torch.zeros(num_tokens))
        self.cluster_sum = nn.Buffer(torch.zeros(num_tokens))  # assignments counted since the start
        self.embed_avg = nn.Buffer(torch.zeros(num_tokens, dim))

    def forward(self, features):
        table = self.embed.to(features.dtype)
        distances = features.pow(2).sum(1, keepdim=True) + table.pow(2).sum(1) - 2 * torch.matmul(features, table.t())
        indices = distances.argmin(dim=1)
        encodings = F.one_hot(indices, self.num_tokens).to(features.dtype)
        if self.training:
            self.update(features.detach(), encodings)
        quantized = torch.matmul(encodings, self.embed.to(features.dtype))
        return (quantized - features).detach() + features, indices

    @torch.no_grad()
    def update(self, features, encodings):
        """One moving-average step from (M, dim) features and their (M, num_tokens) one-hot assignments."""
        counts = encodings.float().sum(0)
        sums = torch.matmul(encodings.float().t(), features.float())
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        self.cluster_sum.add_(counts)
        self.cluster_size.mul_(self.decay).add_(counts * (1.0 - self.decay))
        self.embed_avg.mul_(self.decay).add_(sums * (1.0 - self.decay))
        total = self.cluster_size.sum()
        # Laplace smoothing keeps entries that were never assigned from dividing by zero
        smoothed = (self.cluster_size + self.laplace_eps) / (total + self.num_tokens * self.laplace_eps) * total
        table = self.embed_avg / smoothed.unsqueeze(1)
        if distributed:
            torch.distributed.all_reduce(table.div_(torch.distributed.get_world_size()))
        self.embed.copy_(table)


class SohoVisualEmbeddings(nn.Module):
    """Feature map -> visual tokens (the original's neck): 2x2 max-pool (total stride 64), 1x1 conv + BN; with the
    dictionary, the quantized features through `dictionary_projection` (`pos_line`) mixed with the raw ones by a
    softmax gate over two channels (1x1 conv + BN of their concatenation) and optionally masked; then the 2-D sine
    position embedding of the padding mask is added and a LayerNorm applied."""

    def __init__(self, config: SohoConfig, use_visual_dictionary: bool):
        super().__init__()
        hidden = config.hidden_size
        self.projection = ConvNorm(config.backbone_out_channels, hidden, config.neck_batch_norm_eps)
        if use_visual_dictionary:
            self.dictionary = SohoVisualDictionary(config.num_visual_tokens, hidden, config.dictionary_decay)
            self.dictionary_projection = nn.Linear(hidden, hidden)
            self.gate = ConvNorm(2 * hidden, 2, config.neck_batch_norm_eps)
            self.mask_embedding = nn.Embedding(1, hidden)
        else:
            self.dictionary = None
        self.position_embedding = SinePositionEmbedding(hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.neck_layer_norm_eps)

    def forward(self, feature_map, grid_mask, mask_prob=0.0):
        """feature_map (N, C, h', w'), grid_mask (N, h, w) bool at the pooled size -> tokens (N, h*w, H), and (with
        the dictionary) token ids and masked-visual-modelling labels (N, h*w)."""
        projected = self.projection(F.max_pool2d(feature_map, 2, stride=2))
        batch, hidden, height, width = projected.shape
        flat_mask = grid_mask.reshape(batch, -1)
        token_ids = mask_labels = None
        if self.dictionary is None:
            embedded = projected
        else:
            flat = projected.permute(0, 2, 3, 1).reshape(-1, hidden)
            quantized, token_ids = self.dictionary(flat)
            quantized = self.dictionary_projection(quantized)
            quantized = quantized.view(batch, height, width, hidden).permute(0, 3, 1, 2)
            scores = self.gate(torch.cat([quantized, projected], dim=1)).softmax(dim=1)
            embedded = quantized * scores[:, :1] + projected * scores[:, 1:]
            token_ids = token_ids.view(batch, -1)
            masked = self.sample_visual_mask(token_ids, flat_mask, mask_prob)
            if masked is not None:
                mask_vector = self.mask_embedding.weight.to(embedded.dtype).view(1, hidden, 1, 1)
                embedded = torch.where(masked.view(batch, 1, height, width), mask_vector, embedded)
                mask_labels = token_ids.masked_fill(~masked, -100)
            else:
                mask_labels = torch.full_like(token_ids, -100)
        embedded = embedded + self.position_embedding(grid_mask, dtype=embedded.dtype)
        tokens = self.LayerNorm(embedded.flatten(2).transpose(1, 2))
        return tokens, token_ids, mask_labels

    @staticmethod
    def sample_visual_mask(token_ids, valid, mask_prob):
        """The original's masked visual modelling sample: one random grid position for the batch; in each row, with
        probability `mask_prob`, every real position whose dictionary index equals that position's index is masked.
        Returns (N, V) bool, or None when nothing is sampled (`mask_prob` 0)."""
        if mask_prob <= 0:
            return None
        labels = token_ids.masked_fill(~valid, -100)
        position = torch.randint(labels.shape[1], (1,), device=labels.device)
        picked = labels.index_select(1, position)
        rows = torch.bernoulli(torch.full((labels.shape[0], 1), float(mask_prob), device=labels.device)).bool()
        return (labels == picked) & valid & rows


# ----------------------------------------------------------------------------------------------------------------
# Base model
# ----------------------------------------------------------------------------------------------------------------


class SohoPreTrainedModel(HubPushMixin, PreTrainedModel):
    config_class = SohoConfig
    base_model_prefix = "soho"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["TransformerLayer", "TextEmbeddings", "SohoVisualEmbeddings"]
    accepts_loss_kwargs = False  # each head normalises its own loss (docs/design.md, "Trainer under DDP")

    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            # the ResNet and neck convolutions: kaiming (torchvision / mmcv), not BERT's normal(0.02)
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, SohoVisualDictionary):
            init.normal_(module.embed)
            for buffer in (module.cluster_size, module.cluster_sum, module.embed_avg):
                init.zeros_(buffer)
        else:
            super()._init_weights(module)


def _grid_mask(pixel_mask, pixel_values, grid_size, square_canvas):
    """(B, H, W) valid-pixel mask -> (B, h, w) bool at the grid size by nearest resizing. With `square_canvas` the
    mask is first put on the original's H x H canvas (cut or zero-padded on the right): the original paints
    `[:img_h, :img_w]` on a canvas whose width is also the padded height."""
    if pixel_mask is None:
        pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[-2:], device=pixel_values.device)
    mask = pixel_mask.float()
    if square_canvas:
        side = mask.shape[1]
        mask = F.pad(mask[:, :, :side], (0, max(side - mask.shape[2], 0)))
    return F.interpolate(mask[:, None], size=grid_size).squeeze(1).bool()


class SohoModel(SohoPreTrainedModel):
    """The SOHO encoder. `input_ids` (N, T) are N = B x S captions, S per image and image-major (rows i*S .. i*S+S-1
    read image i); `pixel_values` (B, 3, H, W) normalized images zero-padded at the bottom / right, `pixel_mask`
    (B, H, W) 1 on each image's real pixels. Visual tokens get no BERT position or token-type embedding."""

    def __init__(self, config: SohoConfig, use_visual_dictionary: bool | None = None):
        super().__init__(config)
        if use_visual_dictionary is None:
            use_visual_dictionary = config.use_visual_dictionary
        self.backbone = ResNet(
            block=config.backbone_block,
            layers=config.backbone_layers,
            in_channels=config.num_channels,
            stem_channels=config.backbone_stem_channels,
            base_channels=config.backbone_base_channels,
            frozen_stages=config.backbone_frozen_stages,
            stride_in_1x1=config.backbone_stride_in_1x1,
            out_stages=("layer4",),
        )
        self.visual_embeddings = SohoVisualEmbeddings(config, use_visual_dictionary)
        self.embeddings = TextEmbeddings(config)
        self.encoder = TransformerEncoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def _check_inputs(self, input_ids, pixel_values, attention_mask, pixel_mask):
        check_pixel_values(pixel_values, self.config.num_channels)
        if input_ids is None or input_ids.dim() != 2:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"`input_ids` must be (captions, length), got {shape}.")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, got "
                f"{tuple(attention_mask.shape)}."
            )
        images, height, width = pixel_values.shape[0], *pixel_values.shape[-2:]
        if pixel_mask is not None and tuple(pixel_mask.shape) != (images, height, width):
            raise ValueError(
                f"`pixel_mask` must be (batch, height, width) = {(images, height, width)} like `pixel_values`, got "
                f"{tuple(pixel_mask.shape)}."
            )
        if input_ids.shape[0] % images:
            raise ValueError(
                f"`input_ids` has {input_ids.shape[0]} rows, not a multiple of the {images} images of `pixel_values` "
                "(captions are image-major, the same number per image)."
            )
        if height < 64 or width < 64:
            raise ValueError(f"`pixel_values` must be at least 64 x 64 (SOHO's total stride), got {height} x {width}.")
        return input_ids.shape[0] // images

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        pixel_mask=None,
        token_type_ids=None,
        position_ids=None,
        visual_mask_prob=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> SohoModelOutput:
        r"""
        visual_mask_prob: probability of masked visual modelling per row (see `SohoConfig.visual_mask_prob`);
            None or 0 masks nothing. `SohoForPreTraining` passes the config's value in training mode.
        """
        captions_per_image = self._check_inputs(input_ids, pixel_values, attention_mask, pixel_mask)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions

        feature_map = self.backbone(pixel_values)["layer4"]
        # the original repeats each image's features once per caption before the neck (so, in training, the
        # dictionary's moving averages count an image once per caption)
        repeated = feature_map.repeat_interleave(captions_per_image, dim=0)
        grid_size = (feature_map.shape[-2] // 2, feature_map.shape[-1] // 2)
        grid_mask = _grid_mask(pixel_mask, pixel_values, grid_size, self.config.square_mask_canvas)
        grid_mask = grid_mask.repeat_interleave(captions_per_image, dim=0)
        visual_tokens, token_ids, mask_labels = self.visual_embeddings(repeated, grid_mask, visual_mask_prob or 0.0)

        text_embeddings = self.embeddings(input_ids, token_type_ids, position_ids)
        hidden_states = torch.cat([text_embeddings, visual_tokens.to(text_embeddings.dtype)], dim=1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        visual_attention_mask = grid_mask.flatten(1).long()
        joint_mask = torch.cat([attention_mask.long(), visual_attention_mask], dim=1)
        sequence, all_hidden, all_attentions = self.encoder(
            hidden_states,
            additive_attention_mask(joint_mask, hidden_states.dtype),
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        text_length = input_ids.shape[1]
        return SohoModelOutput(
            last_hidden_state=sequence,
            text_hidden_state=sequence[:, :text_length],
            visual_hidden_state=sequence[:, text_length:],
            visual_tokens=visual_tokens,
            visual_attention_mask=visual_attention_mask,
            visual_token_ids=token_ids,
            visual_mask_labels=mask_labels,
            feature_map=feature_map,
            hidden_states=all_hidden,
            attentions=all_attentions,
        )


# ----------------------------------------------------------------------------------------------------------------
# Pretraining
# ----------------------------------------------------------------------------------------------------------------


class SohoForPreTraining(SohoPreTrainedModel):
    """SOHO with its pretraining objectives (always with the visual dictionary). Each loss is computed when labels
    are given:

    - MLM: `labels` (N, T) token ids at masked positions, -100 elsewhere; mean cross-entropy over them.
    - MVM: in training mode (or `mask_visual_tokens=True`) the model masks visual tokens itself, as the original
      (`SohoConfig.visual_mask_prob`); cross-entropy of the cosine scores against the masked tokens' dictionary
      indices (0 when nothing was masked). Computed whenever `labels` or `itm_labels` are given.
    - ITM: `itm_labels` (N,) 1 = the caption describes the image, 0 = not; mean cross-entropy of the first token.
    `mlm_logits`, `mvm_scores` and `itm_logits` are returned at every position with or without labels.
    """

    _tied_weights_keys = {"mlm_head.weight": "soho.embeddings.word_embeddings.weight"}

    def __init__(self, config: SohoConfig):
        super().__init__(config)
        self.soho = SohoModel(config, use_visual_dictionary=True)
        self.mlm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # tied, no bias or transform
        self.itm_head = nn.Linear(config.hidden_size, 2, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.mlm_head

    def set_output_embeddings(self, new_embeddings):
        self.mlm_head = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        pixel_mask=None,
        token_type_ids=None,
        position_ids=None,
        labels=None,
        itm_labels=None,
        mask_visual_tokens=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> SohoForPreTrainingOutput:
        r"""
        mask_visual_tokens: sample masked visual modelling positions (default: in training mode only).
        """
        if input_ids is not None and labels is not None and labels.shape != input_ids.shape:
            raise ValueError(
                f"`labels` must have the shape of `input_ids` {tuple(input_ids.shape)}, got {tuple(labels.shape)}."
            )
        if input_ids is not None and itm_labels is not None and itm_labels.shape != input_ids.shape[:1]:
            raise ValueError(f"`itm_labels` must be ({input_ids.shape[0]},), got {tuple(itm_labels.shape)}.")
        if mask_visual_tokens is None:
            mask_visual_tokens = self.training
        outputs = self.soho(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            pixel_mask=pixel_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            visual_mask_prob=self.config.visual_mask_prob if mask_visual_tokens else 0.0,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        dictionary = self.soho.visual_embeddings.dictionary.embed
        visual_states = F.normalize(outputs.visual_hidden_state, dim=-1)
        result = SohoForPreTrainingOutput(
            mlm_logits=self.mlm_head(outputs.text_hidden_state),
            mvm_scores=torch.matmul(visual_states, F.normalize(dictionary, dim=-1).t().to(visual_states.dtype)),
            itm_logits=self.itm_head(outputs.last_hidden_state[:, 0]),
            mvm_labels=outputs.visual_mask_labels,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        config = self.config
        weighted = []
        if labels is not None:
            result.mlm_loss = masked_cross_entropy(result.mlm_logits.flatten(0, 1), labels.flatten())
            weighted.append(config.mlm_weight * result.mlm_loss)
        if labels is not None or itm_labels is not None:
            result.mvm_loss = masked_cross_entropy(result.mvm_scores.flatten(0, 1), result.mvm_labels.flatten())
            weighted.append(config.mvm_weight * result.mvm_loss)
        if itm_labels is not None:
            result.itm_loss = masked_cross_entropy(result.itm_logits, itm_labels)
            weighted.append(config.itm_weight * result.itm_loss)
        if weighted:
            result.loss = torch.stack(weighted).sum()
        return result


# ----------------------------------------------------------------------------------------------------------------
# Visual question answering
# ----------------------------------------------------------------------------------------------------------------


class SohoForVisualQuestionAnswering(SohoPreTrainedModel):
    """VQA as multi-label answer classification from the first token (`SOHO_DownStream_VQA_head`): Linear(H, 4H),
    ReLU, Dropout(0.5), Linear(4H, answers); the encoder has no visual dictionary (the original's VQA neck).
    `labels`: (N, num_labels) soft scores or (N,) answer ids; loss = mean BCE-with-logits x num_labels."""

    def __init__(self, config: SohoConfig):
        super().__init__(config)
        self.soho = SohoModel(config, use_visual_dictionary=False)
        inner = config.hidden_size * config.vqa_hidden_multiplier
        self.vqa_head = nn.Sequential(
            nn.Linear(config.hidden_size, inner),
            nn.ReLU(),
            nn.Dropout(config.vqa_dropout),
            nn.Linear(inner, config.num_labels),
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        pixel_mask=None,
        token_type_ids=None,
        position_ids=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> SohoVisualQuestionAnsweringOutput:
        outputs = self.soho(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            pixel_mask=pixel_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.vqa_head(outputs.last_hidden_state[:, 0])
        loss = soft_score_loss(logits, labels) if labels is not None else None
        return SohoVisualQuestionAnsweringOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "SohoForPreTraining",
    "SohoForPreTrainingOutput",
    "SohoForVisualQuestionAnswering",
    "SohoModel",
    "SohoModelOutput",
    "SohoPreTrainedModel",
    "SohoVisualDictionary",
    "SohoVisualEmbeddings",
    "SohoVisualQuestionAnsweringOutput",
]
