"""BLIP: Bootstrapping Language-Image Pre-training (Li et al., ICML 2022), on top of transformers' Blip classes.

transformers ships BLIP's modules; hf_vlp subclasses them (same weight names, so `Salesforce/blip-*` Hub checkpoints
load unchanged) and adds what transformers lacks:

* `BlipForPreTraining`: the three objectives of `models/blip_pretrain.py` as one trainable `forward` -
  ITC with momentum encoders, feature queues and momentum distillation (switchable to plain in-batch InfoNCE gathered
  over all ranks), ITM with hard negatives sampled from the ITC similarities, and the captioning LM loss of the
  decoder, which shares every weight with the text encoder except the self-attention (paper fig. 2).
* `BlipForImageTextRetrieval.forward(return_loss=True)`: the retrieval fine-tuning losses of
  `models/blip_retrieval.py` (ITC with positives by image id, ITM with hard negatives), and `retrieve()`: ITC
  retrieval followed by ITM re-ranking of the top k (`train_retrieval.py` `evaluation`).
* `BlipForQuestionAnswering`: the original answer-decoder training loss (several weighted answers per question) and
  `rank_answers` (`inference='rank'`).

Deviations of transformers 5.24 from the original, fixed here without forking (docs/blip.md):
* the text cross-attention ignores its padding mask (`BlipTextAttention` hands the mask over as `attention_mask`,
  `BlipTextSelfAttention` then replaces it with its own `encoder_attention_mask`, None): the VQA answer decoder
  attends to padded question tokens. `BlipTextCrossAttentionWithMask` passes the mask through.
* `BlipForQuestionAnswering` builds its answer decoder with cross-attention inputs of the VISION width; the
  original's decoder reads question states of the TEXT width (differs for ViT-L).
* first tokens: the original swaps `[CLS]` for `[ENC]` in the question encoder and `[DEC]` in decoders; the heads
  here do the same swap (a no-op on inputs that already carry them).
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.models.blip import modeling_blip as hf_blip
from transformers.models.blip.modeling_blip import BlipEncoderLayer as BlipEncoderLayer  # named in `_no_split_modules`
from transformers.models.blip.modeling_blip import BlipPreTrainedModel, BlipVisionEmbeddings, BlipVisionModel
from transformers.models.blip.modeling_blip_text import (
    BlipTextEmbeddings,
    BlipTextLayer,
    BlipTextLMHeadModel,
    BlipTextModel,
    BlipTextSelfAttention,
)
from transformers.utils import ModelOutput, can_return_tuple

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.layers import check_pixel_values
from hf_vlp.pretraining.contrastive import contrastive_loss, gather_without_grad
from hf_vlp.pretraining.losses import zero_loss

from .configuration_blip import pretraining_setting

# Default LoRA targets (PEFT `target_modules`, a regex matched against full module names): the attention
# projections of the vision tower (`qkv`, `projection`) and of the text encoder / decoder (`query`, `key`, `value`,
# self- and cross-attention). The momentum copies (`*_m`) never get adapters.
LORA_TARGET_MODULES = r"^(vision_model|text_encoder|text_decoder)\..*\.(qkv|projection|query|key|value)$"

MOMENTUM_PAIRS = (
    ("vision_model", "vision_model_m"),
    ("vision_proj", "vision_proj_m"),
    ("text_encoder", "text_encoder_m"),
    ("text_proj", "text_proj_m"),
)


# ----------------------------------------------------------------------------------------------------------------
# Fixes of transformers' modules
# ----------------------------------------------------------------------------------------------------------------


class BlipTextCrossAttentionWithMask(BlipTextSelfAttention):
    """`BlipTextSelfAttention` used as cross-attention, with the encoder padding mask applied (med.py masks the
    padded question tokens that the VQA answer decoder attends to)."""

    def forward(
        self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None, **kwargs
    ):
        if encoder_hidden_states is not None and encoder_attention_mask is None:
            encoder_attention_mask = attention_mask  # BlipTextAttention passes the cross mask under this name
        return super().forward(
            hidden_states,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            **kwargs,
        )


def mask_cross_attention_padding(model: nn.Module) -> nn.Module:
    """Make every text cross-attention of `model` honour its padding mask (in place; weights untouched)."""
    for module in model.modules():
        if isinstance(module, BlipTextLayer) and hasattr(module, "crossattention"):
            module.crossattention.self.__class__ = BlipTextCrossAttentionWithMask
    return model


class BlipInputGradientsMixin(HubPushMixin):
    """`enable_input_require_grads` that works for BLIP (adapters + gradient checkpointing).

    transformers hooks the word-embedding output, which `BlipTextEmbeddings` then updates in place (`+=` position
    embeddings): an error once that output requires grad. The hooks here sit on the complete embedding modules of
    both towers (text and vision), whose outputs are not modified in place."""

    def enable_input_require_grads(self):
        def make_output_require_grad(module, inputs, output):
            output.requires_grad_(True)

        self._require_grads_hooks = [
            module.register_forward_hook(make_output_require_grad)
            for module in self.modules()
            if isinstance(module, (BlipTextEmbeddings, BlipVisionEmbeddings))
        ]


def with_first_token(input_ids: torch.Tensor, token_id: int | None) -> torch.Tensor:
    """`input_ids` with position 0 replaced by `token_id` (BLIP marks each text's role by its first token)."""
    if token_id is None or input_ids is None or (input_ids[:, 0] == token_id).all():
        return input_ids
    input_ids = input_ids.clone()
    input_ids[:, 0] = token_id
    return input_ids


def _enc_token_id(config):
    """`[ENC]` when the vocabulary has it (every BLIP tokenizer: 30523), else None (keep the first token)."""
    token_id = pretraining_setting(config, "enc_token_id")
    # CODEPATH: every BLIP release (vocab 30524) has [ENC]; a text-only vocabulary without it keeps its first token
    return token_id if token_id < config.text_config.vocab_size else None


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class BlipForPreTrainingOutput(ModelOutput):
    """
    loss: weighted sum of the three objectives.
    itc_loss / itm_loss / lm_loss: image-text contrastive, image-text matching, captioning LM losses.
    sim_i2t / sim_t2i: (B, B [+ queue]) ITC logits (cosine / temperature) of this batch (+ the queue).
    itm_logits: (3B, 2) matching logits of [positives; (text, hard negative image); (hard negative text, image)].
    lm_logits: (B, T, V) decoder logits.
    image_embeds: (B, 1 + patches, Dv) ViT output; text_embeds: (B, T, Dt) unimodal text encoder output.
    image_feat / text_feat: (B, E) normalised ITC features.
    vision_* / text_*: on request, every layer's states and attentions of the ViT and the unimodal text encoder.
    """

    loss: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    sim_i2t: torch.FloatTensor | None = None
    sim_t2i: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    lm_logits: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_feat: torch.FloatTensor | None = None
    text_feat: torch.FloatTensor | None = None
    vision_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    vision_attentions: tuple[torch.FloatTensor, ...] | None = None
    text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BlipRetrievalTrainingOutput(ModelOutput):
    """Retrieval fine-tuning losses (`models/blip_retrieval.py`): `loss` = itc_weight * itc_loss + itm_weight *
    itm_loss, with the ITC logits, the ITM logits and the normalised features."""

    loss: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    sim_i2t: torch.FloatTensor | None = None
    sim_t2i: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    image_feat: torch.FloatTensor | None = None
    text_feat: torch.FloatTensor | None = None


@dataclass
class BlipRetrievalScores(ModelOutput):
    """itc_similarity: (I, T) cosine similarities. scores_i2t (I, T) / scores_t2i (T, I): ITM logit of "match" + ITC
    similarity for each query's top-k candidates, -100 elsewhere (as `train_retrieval.py` scores them)."""

    itc_similarity: torch.FloatTensor | None = None
    scores_i2t: torch.FloatTensor | None = None
    scores_t2i: torch.FloatTensor | None = None


@dataclass
class BlipQuestionAnsweringOutput(ModelOutput):
    """
    loss: sum over answers of weight x answer loss, divided by the number of questions (`BLIP_VQA.forward`).
    logits: (A, L, V) answer decoder logits. answer_losses: (A,) per-answer loss (label-smoothed token losses summed).
    image_embeds: (B, 1 + patches, Dv). question_embeds: (B, T, Dt) the question encoder's output.
    vision_* / text_*: on request, every layer's states and attentions of the ViT and the question encoder.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    answer_losses: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    question_embeds: torch.FloatTensor | None = None
    vision_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    vision_attentions: tuple[torch.FloatTensor, ...] | None = None
    text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BlipAnswerRanking(ModelOutput):
    """answer_index: (B,) index into the candidate list of the best answer. first_token_logits: (B, V) decoder logits
    after `[DEC]`. topk_ids: (B, k) candidates kept by their first-token probability; scores: (B, k) their
    (label-smoothed) log-likelihoods."""

    answer_index: torch.LongTensor | None = None
    first_token_logits: torch.FloatTensor | None = None
    topk_ids: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------------
# ITC and ITM (shared by pretraining and retrieval fine-tuning)
# ----------------------------------------------------------------------------------------------------------------


class BlipContrastiveMixin(HubPushMixin):
    """ITC (+ momentum distillation and queues) and ITM with hard negatives, for a model with `vision_model`,
    `text_encoder`, `vision_proj`, `text_proj` and `itm_head`."""

    def _init_contrastive(self, config, momentum: bool):
        embed_dim = config.image_text_hidden_size
        self.temp = nn.Parameter(torch.tensor(float(pretraining_setting(config, "itc_temperature"))))
        self.use_momentum_distillation = momentum
        if not momentum:
            return
        self.vision_model_m = BlipVisionModel(config.vision_config)
        self.vision_proj_m = nn.Linear(config.vision_config.hidden_size, embed_dim)
        self.text_encoder_m = BlipTextModel(config.text_config, add_pooling_layer=False)
        self.text_proj_m = nn.Linear(config.text_config.hidden_size, embed_dim)
        queue_size = int(pretraining_setting(config, "queue_size"))
        if queue_size < 0:
            raise ValueError(f"`queue_size` must be >= 0, got {queue_size}")
        self.image_queue = nn.Buffer(F.normalize(torch.randn(embed_dim, queue_size), dim=0))
        self.text_queue = nn.Buffer(F.normalize(torch.randn(embed_dim, queue_size), dim=0))
        # image ids of the queued features (blip_retrieval.py); -100 = no id (pretraining never matches them)
        self.idx_queue = nn.Buffer(torch.full((1, queue_size), -100, dtype=torch.long))
        self.queue_ptr = nn.Buffer(torch.zeros(1, dtype=torch.long))

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Loads as usual; momentum encoders absent from the checkpoint are copied from the online ones."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        if model.use_momentum_distillation and any(
            key.split(".")[0] in {m for _, m in MOMENTUM_PAIRS} for key in info["missing_keys"]
        ):
            model.copy_params_to_momentum()
        model.freeze_momentum()
        return (model, info) if want_info else model

    def _momentum_modules(self):
        return [getattr(self, momentum) for _, momentum in MOMENTUM_PAIRS] if self.use_momentum_distillation else []

    def freeze_momentum(self):
        for module in self._momentum_modules():
            module.requires_grad_(False)

    @torch.no_grad()
    def copy_params_to_momentum(self):
        """Initialise the momentum encoders from the online ones (`copy_params` of the original)."""
        for online, momentum in MOMENTUM_PAIRS:
            for param, param_m in zip(getattr(self, online).parameters(), getattr(self, momentum).parameters()):
                param_m.copy_(param)
        self.freeze_momentum()

    @torch.no_grad()
    def _momentum_update(self):
        """theta_m <- m * theta_m + (1 - m) * theta (`_momentum_update`)."""
        momentum = float(pretraining_setting(self.config, "momentum"))
        online, moving = [], []
        for name, name_m in MOMENTUM_PAIRS:
            online += list(getattr(self, name).parameters())
            moving += list(getattr(self, name_m).parameters())
        if len(online) != len(moving):
            raise RuntimeError("online and momentum encoders have different parameter lists")
        torch._foreach_mul_(moving, momentum)
        torch._foreach_add_(moving, online, alpha=1.0 - momentum)

    @torch.no_grad()
    def _enqueue(self, image_feat_m, text_feat_m, sample_ids):
        """Replace the oldest queue entries with the momentum features of every rank (`_dequeue_and_enqueue`)."""
        queue_size = self.image_queue.shape[1]
        if queue_size == 0:
            return
        image_feats = gather_without_grad(image_feat_m)
        text_feats = gather_without_grad(text_feat_m)
        ids = gather_without_grad(sample_ids)
        count = min(image_feats.shape[0], queue_size)
        slots = (self.queue_ptr + torch.arange(count, device=self.queue_ptr.device)) % queue_size
        self.image_queue[:, slots] = image_feats[-count:].T.to(self.image_queue.dtype)
        self.text_queue[:, slots] = text_feats[-count:].T.to(self.text_queue.dtype)
        self.idx_queue[:, slots] = ids[-count:].to(self.idx_queue.dtype)[None]
        self.queue_ptr[0] = (self.queue_ptr[0] + count) % queue_size

    def _itc_features(self, pixel_values, input_ids, attention_mask, interpolate_pos_encoding=False):
        """ViT output, unimodal text encoder output ([CLS] first) and their normalised projections."""
        return self._itc_encode(pixel_values, input_ids, attention_mask, interpolate_pos_encoding)[:4]

    def _itc_encode(self, pixel_values, input_ids, attention_mask, interpolate_pos_encoding=False, **layer_outputs):
        """`_itc_features` plus both encoders' full outputs (their layers' states / attentions on request)."""
        vision_outputs = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **layer_outputs
        )
        text_outputs = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, **layer_outputs)
        image_embeds, text_embeds = vision_outputs.last_hidden_state, text_outputs.last_hidden_state
        # the original projects the CLS token of the final LayerNorm's output (not transformers' pooler_output,
        # which applies post_layernorm a second time)
        image_feat = F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)
        text_feat = F.normalize(self.text_proj(text_embeds[:, 0]), dim=-1)
        return image_embeds, text_embeds, image_feat, text_feat, (vision_outputs, text_outputs)

    def _itc_loss(
        self,
        image_feat,
        text_feat,
        pixel_values,
        input_ids,
        attention_mask,
        alpha,
        sample_ids,
        update,
        interpolate_pos_encoding=False,
    ):
        """Returns (itc_loss, sim_i2t, sim_t2i, hard-negative logits i2t, t2i (B, B), positive mask (B, B))."""
        batch = image_feat.shape[0]
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        device_type = image_feat.device.type
        local_ids = sample_ids if sample_ids is not None else torch.arange(batch, device=image_feat.device)
        positives = local_ids[:, None] == local_ids[None, :]

        if not self.use_momentum_distillation:
            # in-batch InfoNCE over the global batch (all-gather with gradients): exact under DDP
            loss = contrastive_loss(
                image_feat, text_feat, 1.0 / self.temp, gather=True, normalize=False, sample_ids=sample_ids
            )
            with torch.autocast(device_type, enabled=False):
                sim_i2t = image_feat.float() @ text_feat.float().T / self.temp.float()
            return loss, sim_i2t, sim_i2t.T, sim_i2t, sim_i2t.T, positives

        with torch.no_grad():
            if update:
                self._momentum_update()
            image_embeds_m = self.vision_model_m(
                pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding
            ).last_hidden_state
            image_feat_m = F.normalize(self.vision_proj_m(image_embeds_m[:, 0]), dim=-1)
            text_embeds_m = self.text_encoder_m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            text_feat_m = F.normalize(self.text_proj_m(text_embeds_m[:, 0]), dim=-1)

        with torch.autocast(device_type, enabled=False):
            temp = self.temp.float()
            with torch.no_grad():
                image_feat_all = torch.cat([image_feat_m.float(), self.image_queue.T.float()])  # (B + Q, E)
                text_feat_all = torch.cat([text_feat_m.float(), self.text_queue.T.float()])
                if sample_ids is None:  # pretraining: the diagonal is the only positive
                    targets = torch.zeros(batch, image_feat_all.shape[0], device=image_feat.device)
                    targets[:, :batch] = torch.eye(batch, device=image_feat.device)
                else:  # retrieval: every entry (batch or queue) of the same image id is a positive
                    all_ids = torch.cat([sample_ids, self.idx_queue[0].to(sample_ids.dtype)])
                    targets = (sample_ids[:, None] == all_ids[None, :]).float()
                    targets = targets / targets.sum(1, keepdim=True)
                sim_i2t_m = image_feat_m.float() @ text_feat_all.T / temp
                sim_t2i_m = text_feat_m.float() @ image_feat_all.T / temp
                targets_i2t = alpha * sim_i2t_m.softmax(1) + (1 - alpha) * targets
                targets_t2i = alpha * sim_t2i_m.softmax(1) + (1 - alpha) * targets
            sim_i2t = image_feat.float() @ text_feat_all.T / temp
            sim_t2i = text_feat.float() @ image_feat_all.T / temp
            loss_i2t = -(F.log_softmax(sim_i2t, dim=1) * targets_i2t).sum(1).mean()
            loss_t2i = -(F.log_softmax(sim_t2i, dim=1) * targets_t2i).sum(1).mean()
        if update:
            self._enqueue(
                image_feat_m, text_feat_m, local_ids if sample_ids is not None else torch.full_like(local_ids, -100)
            )
        # blip_pretrain.py mines hard negatives from sim[:, :bs]: online features against the momentum features
        return (loss_i2t + loss_t2i) / 2, sim_i2t, sim_t2i, sim_i2t[:, :batch], sim_t2i[:, :batch], positives

    def _itm_loss(self, image_embeds, enc_input_ids, attention_mask, sim_i2t, sim_t2i, positives):
        """ITM over [positive pairs; (text, negative image); (negative text, image)] (`blip_pretrain.py`)."""
        batch = image_embeds.shape[0]
        if batch < 2:  # no negative exists in a batch of one
            return zero_loss(image_embeds), None
        with torch.no_grad():
            if pretraining_setting(self.config, "itm_hard_negatives"):
                weights_t2i = sim_t2i.float().softmax(1) + 1e-4
                weights_i2t = sim_i2t.float().softmax(1) + 1e-4
            else:
                weights_t2i = weights_i2t = torch.ones(batch, batch, device=image_embeds.device)
            weights_t2i = weights_t2i.masked_fill(positives, 0)
            weights_i2t = weights_i2t.masked_fill(positives, 0)
            # a row whose candidates are all positives (same image id everywhere): any other row
            eye = torch.eye(batch, dtype=torch.bool, device=image_embeds.device)
            fallback = (~eye).float()
            weights_t2i = torch.where(weights_t2i.sum(1, keepdim=True) > 0, weights_t2i, fallback)
            weights_i2t = torch.where(weights_i2t.sum(1, keepdim=True) > 0, weights_i2t, fallback)
            negative_image = torch.multinomial(weights_t2i, 1)[:, 0]  # one negative image per text
            negative_text = torch.multinomial(weights_i2t, 1)[:, 0]  # one negative text per image
        if attention_mask is None:
            attention_mask = torch.ones_like(enc_input_ids)
        text_ids = torch.cat([enc_input_ids, enc_input_ids, enc_input_ids[negative_text]])
        text_mask = torch.cat([attention_mask, attention_mask, attention_mask[negative_text]])
        images = torch.cat([image_embeds, image_embeds[negative_image], image_embeds])
        fused = self.text_encoder(input_ids=text_ids, attention_mask=text_mask, encoder_hidden_states=images)
        itm_logits = self.itm_head(fused.last_hidden_state[:, 0])
        itm_labels = torch.cat([torch.ones(batch, dtype=torch.long), torch.zeros(2 * batch, dtype=torch.long)]).to(
            itm_logits.device
        )
        return F.cross_entropy(itm_logits.float(), itm_labels), itm_logits


# ----------------------------------------------------------------------------------------------------------------
# Pretraining
# ----------------------------------------------------------------------------------------------------------------


class BlipForPreTraining(BlipInputGradientsMixin, BlipContrastiveMixin, BlipPreTrainedModel):
    """BLIP pretraining (`models/blip_pretrain.py` `BLIP_Pretrain`): ITC + ITM + LM on image-caption pairs.

    Weight names follow transformers' Blip heads (`vision_model`, `text_encoder`, `text_decoder`, `vision_proj`,
    `text_proj`, `itm_head`), so a pretraining checkpoint's parts load into BlipForImageTextRetrieval /
    BlipForConditionalGeneration / BlipForQuestionAnswering; momentum copies are `*_m`, queues `image_queue`,
    `text_queue`, `idx_queue`, `queue_ptr`, and the ITC temperature `temp`.

    As in the paper, the decoder shares its embeddings, cross-attention and feed-forward layers with the text
    encoder (`tie_encoder_decoder_weights(..., skip_key='/attention')`); only the causal self-attention differs.
    """

    main_input_name = "pixel_values"
    accepts_loss_kwargs = False
    _tied_weights_keys = {
        r"text_decoder\.bert\.embeddings\.(word_embeddings|position_embeddings|LayerNorm)\.": (
            r"text_encoder\.embeddings\.(word_embeddings|position_embeddings|LayerNorm)\."
        ),
        r"text_decoder\.bert\.encoder\.layer\.\d+\.(crossattention|intermediate|output)\.": (
            r"text_encoder\.encoder\.layer\.\d+\.(crossattention|intermediate|output)\."
        ),
    }

    def __init__(self, config):
        super().__init__(config)
        embed_dim = config.image_text_hidden_size
        self.vision_model = BlipVisionModel(config.vision_config)
        self.text_encoder = BlipTextModel(config.text_config, add_pooling_layer=False)
        self.text_decoder = BlipTextLMHeadModel(config.text_config)
        self.vision_proj = nn.Linear(config.vision_config.hidden_size, embed_dim)
        self.text_proj = nn.Linear(config.text_config.hidden_size, embed_dim)
        self.itm_head = nn.Linear(config.text_config.hidden_size, 2)
        self._init_contrastive(config, momentum=bool(pretraining_setting(config, "use_momentum_distillation")))
        mask_cross_attention_padding(self)
        self.post_init()
        if self.use_momentum_distillation:
            self.copy_params_to_momentum()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            init.constant_(self.temp, float(pretraining_setting(self.config, "itc_temperature")))
            if self.use_momentum_distillation:
                init.copy_(self.image_queue, F.normalize(torch.randn_like(self.image_queue), dim=0))
                init.copy_(self.text_queue, F.normalize(torch.randn_like(self.text_queue), dim=0))
                init.constant_(self.idx_queue, -100)
                init.zeros_(self.queue_ptr)

    def get_input_embeddings(self):
        return self.text_encoder.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.text_encoder.set_input_embeddings(value)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        alpha: float | None = None,
        update_momentum: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_loss: bool = True,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BlipForPreTrainingOutput:
        r"""
        pixel_values: (B, 3, H, W) images; input_ids / attention_mask: (B, T) captions as the tokenizer returns them
            (`[CLS] ... [SEP]`); position 0 is swapped for `[ENC]` (ITM) and `[DEC]` (LM) internally.
        alpha: weight of the momentum model's soft ITC targets (config `alpha`; pretrain.py ramps it up over the
            first epoch).
        update_momentum: run the EMA update and enqueue this batch's momentum features; default: `self.training`.
        """
        if pixel_values is None or input_ids is None:
            raise ValueError("BlipForPreTraining needs `pixel_values` (B, 3, H, W) and `input_ids` (B, T).")
        check_pixel_values(pixel_values, self.vision_model.embeddings.patch_embedding.in_channels)
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"`pixel_values` and `input_ids` must have the same batch size, got {pixel_values.shape[0]} and "
                f"{input_ids.shape[0]}."
            )
        config = self.config
        alpha = float(pretraining_setting(config, "alpha") if alpha is None else alpha)
        update = self.training if update_momentum is None else update_momentum
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)

        image_embeds, text_embeds, image_feat, text_feat, (vision_outputs, text_outputs) = self._itc_encode(
            pixel_values,
            input_ids,
            attention_mask,
            interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        itc_loss, sim_i2t, sim_t2i, hard_i2t, hard_t2i, positives = self._itc_loss(
            image_feat,
            text_feat,
            pixel_values,
            input_ids,
            attention_mask,
            alpha,
            None,
            update,
            interpolate_pos_encoding,
        )
        itm_loss, itm_logits = self._itm_loss(
            image_embeds,
            with_first_token(input_ids, _enc_token_id(config)),
            attention_mask,
            hard_i2t,
            hard_t2i,
            positives,
        )

        decoder_input_ids = with_first_token(input_ids, config.text_config.bos_token_id)
        decoder_labels = decoder_input_ids.masked_fill(decoder_input_ids == config.text_config.pad_token_id, -100)
        decoder_labels = decoder_labels.masked_fill(attention_mask == 0, -100)
        decoded = self.text_decoder(
            input_ids=decoder_input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            labels=decoder_labels,
            reduction="mean",
        )
        lm_loss = decoded.loss.float()
        loss = (
            pretraining_setting(config, "itc_weight") * itc_loss
            + pretraining_setting(config, "itm_weight") * itm_loss
            + pretraining_setting(config, "lm_weight") * lm_loss
        )
        return BlipForPreTrainingOutput(
            loss=loss,
            itc_loss=itc_loss.detach(),
            itm_loss=itm_loss.detach(),
            lm_loss=lm_loss.detach(),
            sim_i2t=sim_i2t,
            sim_t2i=sim_t2i,
            itm_logits=itm_logits,
            lm_logits=decoded.logits,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            image_feat=image_feat,
            text_feat=text_feat,
            vision_hidden_states=vision_outputs.hidden_states,
            vision_attentions=vision_outputs.attentions,
            text_hidden_states=text_outputs.hidden_states,
            text_attentions=text_outputs.attentions,
        )


# ----------------------------------------------------------------------------------------------------------------
# Task heads: transformers' classes with the fixes above
# ----------------------------------------------------------------------------------------------------------------


class BlipForConditionalGeneration(BlipInputGradientsMixin, hf_blip.BlipForConditionalGeneration):
    """Captioning (`models/blip.py` `BLIP_Decoder`): transformers' class with the cross-attention mask fix and the
    decoder's first token set to `[DEC]` (bos) in `forward` as `BLIP_Decoder.forward` does. Labels: ids with -100 on
    padding and on the prompt ("a picture of "), the decoder shifts them itself."""

    accepts_loss_kwargs = False

    def __init__(self, config):
        super().__init__(config)
        mask_cross_attention_padding(self)

    @can_return_tuple
    def forward(
        self,
        pixel_values,
        input_ids=None,
        attention_mask=None,
        labels=None,
        interpolate_pos_encoding=False,
        logits_to_keep=0,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> hf_blip.BlipForConditionalGenerationModelOutput:
        check_pixel_values(pixel_values, self.vision_model.embeddings.patch_embedding.in_channels)
        input_ids = with_first_token(input_ids, self.config.text_config.bos_token_id)
        return super().forward(
            pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            interpolate_pos_encoding=interpolate_pos_encoding,
            logits_to_keep=logits_to_keep,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )


class BlipForQuestionAnswering(BlipInputGradientsMixin, hf_blip.BlipForQuestionAnswering):
    """VQA (`models/blip_vqa.py` `BLIP_VQA`): question encoder grounded in the image + answer decoder reading the
    question states, with the original training loss and answer ranking.

    Differences from transformers' class: padded question tokens are masked in the decoder's cross-attention; the
    decoder's cross-attention reads TEXT-width states (ViT-L models); questions start with `[ENC]` and answers with
    `[DEC]`; `forward(labels=...)` takes several weighted answers per question (`answer_question_index`,
    `answer_weights`) and returns the answer logits.
    """

    main_input_name = "input_ids"  # the question; `forward` takes it first, as transformers' class does
    accepts_loss_kwargs = False

    def __init__(self, config):
        super().__init__(config)
        text_config = config.text_config
        if text_config.encoder_hidden_size != text_config.hidden_size:
            decoder_config = copy.deepcopy(text_config)
            decoder_config.encoder_hidden_size = text_config.hidden_size
            self.text_decoder = BlipTextLMHeadModel(decoder_config)
            self.post_init()
        mask_cross_attention_padding(self)

    def _question_states(self, input_ids, pixel_values, attention_mask, interpolate_pos_encoding, **layer_outputs):
        """Image states, question states grounded in them, and (on request) both encoders' full outputs."""
        vision_outputs = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **layer_outputs
        )
        question_outputs = self.text_encoder(
            input_ids=with_first_token(input_ids, _enc_token_id(self.config)),
            attention_mask=attention_mask,
            encoder_hidden_states=vision_outputs.last_hidden_state,
            **layer_outputs,
        )
        return vision_outputs.last_hidden_state, question_outputs.last_hidden_state, (vision_outputs, question_outputs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        answer_question_index: torch.LongTensor | None = None,
        answer_weights: torch.FloatTensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BlipQuestionAnsweringOutput:
        r"""
        input_ids / attention_mask: (B, T) questions. labels: (A, L) answer ids (`[DEC]` or `[CLS]` first, -100 or
        `[PAD]` on padding); used as decoder inputs when `decoder_input_ids` is not given.
        answer_question_index: (A,) the question each answer belongs to (default: answer i <-> question i).
        answer_weights: (A,) weight of each answer in the loss (default 1).
        """
        if labels is None and decoder_input_ids is None:
            raise ValueError(
                "pass `labels` (A, L) to train, or `decoder_input_ids`; use `generate` / `rank_answers` to answer."
            )
        check_pixel_values(pixel_values, self.vision_model.embeddings.patch_embedding.in_channels)
        text_config = self.config.text_config
        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        image_embeds, question_embeds, (vision_outputs, question_outputs) = self._question_states(
            input_ids,
            pixel_values,
            attention_mask,
            interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )

        if decoder_input_ids is None:
            decoder_input_ids = labels.masked_fill(labels == -100, text_config.pad_token_id)
            if decoder_attention_mask is None:
                decoder_attention_mask = (labels != -100) & (labels != text_config.pad_token_id)
                decoder_attention_mask[:, 0] = True
        decoder_input_ids = with_first_token(decoder_input_ids, text_config.bos_token_id)
        num_answers = decoder_input_ids.shape[0]
        if answer_question_index is None:
            if num_answers != batch:
                raise ValueError(
                    f"{num_answers} answers for {batch} questions: pass `answer_question_index` (A,) to say which "
                    "question each answer belongs to."
                )
            answer_question_index = torch.arange(batch, device=input_ids.device)
        if answer_question_index.shape != (num_answers,):
            raise ValueError(
                f"`answer_question_index` must have shape ({num_answers},), got {tuple(answer_question_index.shape)}"
            )
        if labels is not None:
            labels = labels.masked_fill(labels == text_config.pad_token_id, -100)

        answer_output = self.text_decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=question_embeds[answer_question_index],
            encoder_attention_mask=attention_mask[answer_question_index],
            labels=labels,
            reduction="none",
        )
        loss = answer_losses = None
        if labels is not None:
            answer_losses = answer_output.loss.float()
            weights = torch.ones_like(answer_losses) if answer_weights is None else answer_weights.float()
            if weights.shape != answer_losses.shape:
                raise ValueError(f"`answer_weights` must have shape ({num_answers},), got {tuple(weights.shape)}")
            loss = (weights * answer_losses).sum() / batch
        return BlipQuestionAnsweringOutput(
            loss=loss,
            logits=answer_output.logits,
            answer_losses=answer_losses,
            image_embeds=image_embeds,
            question_embeds=question_embeds,
            vision_hidden_states=vision_outputs.hidden_states,
            vision_attentions=vision_outputs.attentions,
            text_hidden_states=question_outputs.hidden_states,
            text_attentions=question_outputs.attentions,
        )

    @torch.no_grad()
    def rank_answers(
        self,
        input_ids,
        pixel_values,
        candidate_ids,
        candidate_mask=None,
        attention_mask=None,
        k: int = 128,
        interpolate_pos_encoding: bool = False,
    ) -> BlipAnswerRanking:
        """Pick each question's answer from a candidate list (`BLIP_VQA.rank_answer`): keep the k candidates whose
        first token is most probable after `[DEC]`, then take the one with the highest decoder log-likelihood.
        candidate_ids / candidate_mask: (C, L) tokenized answers (`[DEC]` first, padded)."""
        text_config = self.config.text_config
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if candidate_mask is None:
            candidate_mask = (candidate_ids != text_config.pad_token_id).long()
        k = min(int(k), candidate_ids.shape[0])
        candidate_ids = with_first_token(candidate_ids, text_config.bos_token_id)
        _, question_embeds, _ = self._question_states(input_ids, pixel_values, attention_mask, interpolate_pos_encoding)
        batch = question_embeds.shape[0]

        start_ids = candidate_ids[:1, :1].expand(batch, 1)
        first_token_logits = self.text_decoder(
            input_ids=start_ids, encoder_hidden_states=question_embeds, encoder_attention_mask=attention_mask
        ).logits[:, 0]
        first_token_probs = first_token_logits.float().softmax(1).index_select(1, candidate_ids[:, 1])
        _, topk_ids = first_token_probs.topk(k, dim=1)  # (B, k)

        answer_ids = candidate_ids[topk_ids.flatten()]  # question-major: question 0's k answers first
        answer_mask = candidate_mask[topk_ids.flatten()]
        targets = answer_ids.masked_fill(answer_ids == text_config.pad_token_id, -100)
        scores = -self.text_decoder(
            input_ids=answer_ids,
            attention_mask=answer_mask,
            encoder_hidden_states=question_embeds.repeat_interleave(k, 0),
            encoder_attention_mask=attention_mask.repeat_interleave(k, 0),
            labels=targets,
            reduction="none",
        ).loss.view(batch, k)
        best = scores.argmax(1)
        return BlipAnswerRanking(
            answer_index=topk_ids[torch.arange(batch, device=best.device), best],
            first_token_logits=first_token_logits,
            topk_ids=topk_ids,
            scores=scores,
        )

    @torch.no_grad()
    def generate(self, input_ids, pixel_values, attention_mask=None, **generate_kwargs):
        # the original decodes with an all-ones question mask (blip_vqa.py, inference='generate'), as transformers does
        input_ids = with_first_token(torch.as_tensor(input_ids), _enc_token_id(self.config))
        return super().generate(input_ids, pixel_values, attention_mask=attention_mask, **generate_kwargs)


class BlipForImageTextRetrieval(BlipInputGradientsMixin, BlipContrastiveMixin, hf_blip.BlipForImageTextRetrieval):
    """Image-text retrieval / matching (`models/blip_retrieval.py`, `models/blip_itm.py`).

    `forward(...)` is transformers' (ITM logits, or cosine ITC similarity with `use_itm_head=False`; the ids are used
    as given, as `BLIP_ITM` does). `forward(..., return_loss=True)` computes the retrieval fine-tuning losses; with
    `config.use_momentum_distillation=True` the model holds momentum encoders and queues as the original does.
    `retrieve(...)` ranks a gallery: ITC top-k, re-ranked by ITM.
    """

    main_input_name = "input_ids"  # `forward` takes the text first, as transformers' class does
    accepts_loss_kwargs = False

    def __init__(self, config):
        super().__init__(config)
        # momentum encoders only when asked for explicitly: Hub retrieval models ship without them
        self._init_contrastive(config, momentum=bool(getattr(config, "use_momentum_distillation", False)))
        mask_cross_attention_padding(self)
        if self.use_momentum_distillation:
            self.post_init()
            self.copy_params_to_momentum()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self and hasattr(self, "temp"):
            init.constant_(self.temp, float(pretraining_setting(self.config, "itc_temperature")))
            if self.use_momentum_distillation:
                init.copy_(self.image_queue, F.normalize(torch.randn_like(self.image_queue), dim=0))
                init.copy_(self.text_queue, F.normalize(torch.randn_like(self.text_queue), dim=0))
                init.constant_(self.idx_queue, -100)
                init.zeros_(self.queue_ptr)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor,
        use_itm_head: bool | None = True,
        attention_mask: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        return_loss: bool = False,
        image_ids: torch.LongTensor | None = None,
        alpha: float | None = None,
        update_momentum: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        r"""
        return_loss: compute ITC + ITM fine-tuning losses (input_ids as tokenized, `[CLS]` first; ITM swaps in `[ENC]`).
        image_ids: (B,) id of each pair's image; captions of the same image are all positives (ITC) and never
            negatives (ITM). Default: every pair is its own image.
        """
        check_pixel_values(pixel_values, self.vision_model.embeddings.patch_embedding.in_channels)
        if not return_loss:
            return super().forward(
                input_ids=input_ids,
                pixel_values=pixel_values,
                use_itm_head=use_itm_head,
                attention_mask=attention_mask,
                interpolate_pos_encoding=interpolate_pos_encoding,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        alpha = float(pretraining_setting(self.config, "alpha") if alpha is None else alpha)
        update = self.training if update_momentum is None else update_momentum
        image_embeds, _, image_feat, text_feat = self._itc_features(
            pixel_values, input_ids, attention_mask, interpolate_pos_encoding
        )
        itc_loss, sim_i2t, sim_t2i, hard_i2t, hard_t2i, positives = self._itc_loss(
            image_feat,
            text_feat,
            pixel_values,
            input_ids,
            attention_mask,
            alpha,
            image_ids,
            update,
            interpolate_pos_encoding,
        )
        itm_loss, itm_logits = self._itm_loss(
            image_embeds,
            with_first_token(input_ids, _enc_token_id(self.config)),
            attention_mask,
            hard_i2t,
            hard_t2i,
            positives,
        )
        loss = (
            pretraining_setting(self.config, "itc_weight") * itc_loss
            + pretraining_setting(self.config, "itm_weight") * itm_loss
        )
        return BlipRetrievalTrainingOutput(
            loss=loss,
            itc_loss=itc_loss.detach(),
            itm_loss=itm_loss.detach(),
            sim_i2t=sim_i2t,
            sim_t2i=sim_t2i,
            itm_logits=itm_logits,
            image_feat=image_feat,
            text_feat=text_feat,
        )

    @torch.no_grad()
    def retrieve(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        k: int = 256,
        batch_size: int = 128,
        interpolate_pos_encoding: bool = False,
    ) -> BlipRetrievalScores:
        """Score every image (I, 3, H, W) against every text (T, L) as `train_retrieval.py` `evaluation` does: cosine
        ITC similarities, then for each query its top-`k` candidates get ITM("match" logit) + similarity, the others
        -100. ITM pairs run `batch_size` at a time. Texts: `[CLS]` first (the ITM pass swaps in `[ENC]`)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        image_embeds, _, image_feat, text_feat = self._itc_features(
            pixel_values, input_ids, attention_mask, interpolate_pos_encoding
        )
        enc_ids = with_first_token(input_ids, _enc_token_id(self.config))
        similarity = image_feat @ text_feat.T  # (I, T)

        def itm_scores(image_index, text_index):
            scores = []
            for start in range(0, image_index.numel(), batch_size):
                images = image_embeds[image_index[start : start + batch_size]]
                texts = text_index[start : start + batch_size]
                fused = self.text_encoder(
                    input_ids=enc_ids[texts], attention_mask=attention_mask[texts], encoder_hidden_states=images
                ).last_hidden_state
                scores.append(self.itm_head(fused[:, 0])[:, 1].float())
            return torch.cat(scores)

        def rerank(sims, image_major: bool):
            topk = min(k, sims.shape[1])
            topk_sim, topk_idx = sims.topk(topk, dim=1)
            queries = torch.arange(sims.shape[0], device=sims.device).repeat_interleave(topk)
            candidates = topk_idx.flatten()
            image_index, text_index = (queries, candidates) if image_major else (candidates, queries)
            scores = torch.full(sims.shape, -100.0, device=sims.device)
            scores[queries, candidates] = itm_scores(image_index, text_index) + topk_sim.flatten().float()
            return scores

        return BlipRetrievalScores(
            itc_similarity=similarity,
            scores_i2t=rerank(similarity, image_major=True),
            scores_t2i=rerank(similarity.T, image_major=False),
        )


# ----------------------------------------------------------------------------------------------------------------
# NLVR2
# ----------------------------------------------------------------------------------------------------------------


class BlipTwinSelfOutput(nn.Module):
    """The output of NLVR2's twin cross-attention (`models/nlvr_encoder.py`): each image's context through its own
    projection (`dense0`, `dense1`), then averaged, or mixed by `merge_layer` (Linear(2H, H)) in the layers the original
    merges; dropout, residual, LayerNorm."""

    def __init__(self, config, merge: bool):
        super().__init__()
        self.dense0 = nn.Linear(config.hidden_size, config.hidden_size)
        self.dense1 = nn.Linear(config.hidden_size, config.hidden_size)
        self.merge_layer = nn.Linear(2 * config.hidden_size, config.hidden_size) if merge else None
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, context0, context1, input_tensor):
        context0, context1 = self.dense0(context0), self.dense1(context1)
        if self.merge_layer is not None:
            hidden_states = self.merge_layer(torch.cat([context0, context1], dim=-1))
        else:
            hidden_states = (context0 + context1) / 2
        return self.LayerNorm(self.dropout(hidden_states) + input_tensor)


class BlipTwinCrossAttention(nn.Module):
    """NLVR2's cross-attention: the text attends to each image with its own attention (`self0`, `self1`). It takes
    the place of `BlipTextLayer.crossattention`; the two images come concatenated on the sequence axis
    (batch, 2 * patches, width) and are split in halves here, so transformers' text layers run unchanged."""

    def __init__(self, config, merge: bool):
        super().__init__()
        self.self0 = BlipTextCrossAttentionWithMask(config, is_cross_attention=True)
        self.self1 = BlipTextCrossAttentionWithMask(config, is_cross_attention=True)
        self.output = BlipTwinSelfOutput(config, merge)

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, cache=None, **kwargs):
        image0, image1 = encoder_hidden_states.chunk(2, dim=1)
        mask0 = mask1 = None
        if attention_mask is not None:  # the extended (batch, 1, 1, 2 * patches) mask of both images
            mask0, mask1 = attention_mask.chunk(2, dim=-1)
        context0, probs0 = self.self0(hidden_states, encoder_hidden_states=image0, encoder_attention_mask=mask0)
        context1, _ = self.self1(hidden_states, encoder_hidden_states=image1, encoder_attention_mask=mask1)
        return self.output(context0, context1, hidden_states), probs0


@dataclass
class BlipForVisualReasoningOutput(ModelOutput):
    """`logits` (B, 2): 1 = the statement is true of the image pair. Hidden states / attentions: the text encoder's."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor] | None = None
    attentions: tuple[torch.FloatTensor] | None = None


class BlipForVisualReasoning(BlipInputGradientsMixin, BlipPreTrainedModel):
    """NLVR2 (`models/blip_nlvr.py` `BLIP_NLVR`; transformers has no class for it): both images through the vision
    transformer, the statement (first token `[ENC]`) through the text encoder whose every cross-attention attends to
    each image separately (`BlipTwinCrossAttention`: averaged in the first `config.nlvr2_merge_from_layer` layers, 6 in
    the original, merged by a linear layer after), and `cls_head` = Linear, ReLU, Linear(H, 2) on the `[ENC]` state.

    `pixel_values` (B, 2, 3, H, W): left and right image; `labels` (B,) 1 = true, cross-entropy."""

    main_input_name = "pixel_values"
    _no_split_modules = ["BlipEncoderLayer", "BlipTextLayer"]

    def __init__(self, config):
        super().__init__(config)
        text = config.text_config
        self.vision_model = BlipVisionModel(config.vision_config)
        self.text_encoder = BlipTextModel(text, add_pooling_layer=False)
        merge_from = getattr(config, "nlvr2_merge_from_layer", 6)
        for index, layer in enumerate(self.text_encoder.encoder.layer):
            layer.crossattention = BlipTwinCrossAttention(text, merge=index >= merge_from)
        self.cls_head = nn.Sequential(
            nn.Linear(text.hidden_size, text.hidden_size), nn.ReLU(), nn.Linear(text.hidden_size, 2)
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values=None,
        input_ids=None,
        attention_mask=None,
        labels=None,
        interpolate_pos_encoding=False,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> BlipForVisualReasoningOutput:
        check_pixel_values(pixel_values, self.vision_model.embeddings.patch_embedding.in_channels, images_per_example=2)
        if input_ids is None or input_ids.shape[0] != pixel_values.shape[0]:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(
                f"`input_ids` must hold one statement per image pair: ({pixel_values.shape[0]}, seq_len), got {shape}."
            )
        batch = pixel_values.shape[0]
        images = self.vision_model(
            pixel_values.flatten(0, 1), interpolate_pos_encoding=interpolate_pos_encoding
        ).last_hidden_state
        images = images.view(batch, 2 * images.shape[1], images.shape[2])  # [left patches ; right patches]
        text = self.text_encoder(
            input_ids=with_first_token(input_ids, _enc_token_id(self.config)),
            attention_mask=attention_mask,
            encoder_hidden_states=images,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.cls_head(text.last_hidden_state[:, 0])
        loss = F.cross_entropy(logits.float(), labels.view(-1), ignore_index=-100) if labels is not None else None
        return BlipForVisualReasoningOutput(
            loss=loss, logits=logits, hidden_states=text.hidden_states, attentions=text.attentions
        )
