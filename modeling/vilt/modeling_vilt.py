"""ViLT (Kim et al., ICML 2021) in hf_vlp: the pretraining objectives and the trainable retrieval head that
transformers' ViLT classes lack. The backbone is transformers' `ViltModel` unchanged (`vilt.*` keys), so Hub
checkpoints of transformers load as they are.

* `ViltForPreTraining`: MLM + ITM + word-patch alignment (WPA), the objectives of the released
  `vilt_200k_mlm_itm.ckpt` (original `vilt/modules/objectives.py`: `compute_mlm`, `compute_itm_wpa`). Its MLM decoder
  is a separate matrix, as in the original; transformers 5.24's `ViltForMaskedLM` ties it to the word embeddings
  (forced by `ViltConfig`), so loading an original checkpoint overwrites the embeddings (MLM logits off by ~4.8 on
  shared/fixtures/vilt). This class declares no tied weights, so both matrices load and save separately.
* `ViltForImageTextRetrieval`: transformers' `ViltForImageAndTextRetrieval` (same `rank_output` head) with a loss
  (transformers raises on `labels`): the original `compute_irtr` softmax over groups of one positive and K negative
  texts per image, or pointwise binary cross-entropy without groups.

VQA (`ViltForQuestionAnswering`) and NLVR2 (`ViltForImagesAndTextClassification`) are transformers' classes; they
match the original within 4e-6 and train as they are.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import ViltConfig, ViltForImageAndTextRetrieval, ViltModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.vilt.modeling_vilt import ViltMLMHead, ViltPreTrainedModel
from transformers.utils import ModelOutput, can_return_tuple

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.layers import check_pixel_values
from hf_vlp.pretraining.losses import (
    masked_cross_entropy,
    optimal_transport_distance,
    pair_loss,
    signed_alignment_loss,
)

# Default LoRA targets (PEFT `LoraConfig(target_modules=...)`): query/key/value of every layer of the single-stream
# encoder, which serves text and image patches alike, and the patch projection (the vision "tower" of ViLT is just
# that linear patch embedding). Works with gradient checkpointing after `model.enable_input_require_grads()`: the hook
# on the word embeddings makes the joint sequence require grad. Train new heads with
# `modules_to_save=["classifier"]` (VQA / NLVR2) or `["rank_output"]` (retrieval).
LORA_TARGET_MODULES = ["query", "key", "value", "patch_embeddings.projection"]

# objective defaults (set in the config to change them): original compute_itm_wpa
DEFAULT_WPA_WEIGHT = 0.1
DEFAULT_OT_BETA = 0.5
DEFAULT_OT_ITERATIONS = 50


@dataclass
class ViltForPreTrainingOutput(ModelOutput):
    r"""
    loss: sum of the objectives computed for this batch.
    mlm_loss, itm_loss, wpa_loss: each objective's loss (None when its labels were not given).
    mlm_logits: (n_masked, vocab_size) scores at the positions where `labels != -100`.
    itm_logits: (B, 2) image-text matching scores (index 1 = match).
    ot_distances: (B,) word-patch optimal-transport distances (when `itm_labels` are given; UNITER's name).
    """

    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    itm_loss: torch.Tensor | None = None
    wpa_loss: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    ot_distances: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor] | None = None
    attentions: tuple[torch.Tensor] | None = None

    @property
    def wpa_distances(self):
        """Former name of `ot_distances`."""
        return self.ot_distances


class ViltITMHead(nn.Module):
    """Original `heads.ITMHead`: a 2-way linear layer on the pooled [CLS] (key `itm_score.fc`)."""

    def __init__(self, hidden_size):
        super().__init__()
        self.fc = nn.Linear(hidden_size, 2)

    def forward(self, pooled_output):
        return self.fc(pooled_output)


def _capture_joint_mask(vilt: ViltModel):
    """ViltModel does not return which image tokens are padding (patch sampling happens inside its embeddings);
    capture the joint [text | image] mask the embeddings return, without re-implementing the forward."""
    captured = {}

    def hook(module, inputs, output):
        captured["mask"] = output[1]

    return captured, vilt.embeddings.register_forward_hook(hook)


def word_patch_alignment(sequence_output, joint_mask, text_length, beta, iterations):
    """(B,) OT distances between words and patches (original `compute_itm_wpa`): cosine cost, IPOT plan, the text
    [CLS] and last valid token ([SEP]) and the image [CLS] excluded, padding excluded."""
    text_mask = joint_mask[:, :text_length].bool().clone()
    image_mask = joint_mask[:, text_length:].bool().clone()
    last_valid = text_mask.sum(dim=1) - 1
    text_mask[torch.arange(text_mask.shape[0], device=text_mask.device), last_valid] = False
    text_mask[:, 0] = False
    image_mask[:, 0] = False
    return optimal_transport_distance(
        sequence_output[:, :text_length], sequence_output[:, text_length:], ~text_mask, ~image_mask, beta, iterations
    )


class ViltForPreTraining(HubPushMixin, ViltPreTrainedModel):
    """ViLT with its pretraining heads: `mlm_score` (untied decoder, keys `mlm_score.transform.*`,
    `mlm_score.decoder.{weight,bias}`) and `itm_score.fc`.

    One forward pass computes every objective whose labels are given:
    - MLM: `input_ids` with [MASK]ed tokens + `labels` (B, T), -100 where nothing is predicted. In the original the
      MLM pass uses the matching image.
    - ITM + WPA: `itm_labels` (B,) 1 = matching pair, 0 = mismatched (negative image swapped in); the WPA loss is
      `wpa_weight * (sum of distances of matches - sum of distances of mismatches) / B` (weight 0.1).
    The original runs MLM and ITM as separate passes over different inputs each step; give the two batches to two
    forward calls (or sample one objective per batch) to reproduce it exactly.
    """

    accepts_loss_kwargs = False  # each objective normalises its own loss
    _tied_weights_keys = None  # the original's MLM decoder is NOT tied to the word embeddings

    def __init__(self, config: ViltConfig):
        super().__init__(config)
        self.vilt = ViltModel(config)
        self.mlm_score = ViltMLMHead(config)
        self.itm_score = ViltITMHead(config.hidden_size)
        self.post_init()

    def get_output_embeddings(self):
        return self.mlm_score.decoder

    def set_output_embeddings(self, new_embeddings):
        self.mlm_score.decoder = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        pixel_values=None,
        pixel_mask=None,
        inputs_embeds=None,
        image_embeds=None,
        image_token_type_idx=None,
        labels=None,
        itm_labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> ViltForPreTrainingOutput:
        if image_embeds is None:
            check_pixel_values(pixel_values, self.config.num_channels)
        if labels is not None and input_ids is not None and labels.shape != input_ids.shape:
            raise ValueError(
                f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}"
            )
        captured, handle = _capture_joint_mask(self.vilt)
        try:
            outputs = self.vilt(
                input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                pixel_values=pixel_values,
                pixel_mask=pixel_mask,
                inputs_embeds=inputs_embeds,
                image_embeds=image_embeds,
                image_token_type_idx=image_token_type_idx,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        finally:
            handle.remove()
        sequence_output, pooled_output = outputs.last_hidden_state, outputs.pooler_output
        text_length = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]
        itm_logits = self.itm_score(pooled_output)

        losses = {}
        mlm_logits = ot_distances = None
        if labels is not None:
            masked = labels != -100
            mlm_logits = self.mlm_score(sequence_output[:, :text_length][masked])
            losses["mlm_loss"] = masked_cross_entropy(mlm_logits, labels[masked])
        if itm_labels is not None:
            if itm_labels.shape != (itm_logits.shape[0],):
                raise ValueError(f"itm_labels must have shape ({itm_logits.shape[0]},), got {tuple(itm_labels.shape)}")
            itm_labels = itm_labels.long()
            losses["itm_loss"] = masked_cross_entropy(itm_logits, itm_labels)
            wpa_weight = getattr(self.config, "wpa_weight", DEFAULT_WPA_WEIGHT)
            if wpa_weight:
                ot_distances = word_patch_alignment(
                    sequence_output,
                    captured["mask"],
                    text_length,
                    getattr(self.config, "ot_beta", DEFAULT_OT_BETA),
                    getattr(self.config, "ot_iterations", DEFAULT_OT_ITERATIONS),
                )
                losses["wpa_loss"] = wpa_weight * signed_alignment_loss(ot_distances, itm_labels)
        return ViltForPreTrainingOutput(
            loss=sum(losses.values()) if losses else None,
            mlm_logits=mlm_logits,
            itm_logits=itm_logits,
            ot_distances=ot_distances,
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **losses,
        )


class ViltForImageTextRetrieval(HubPushMixin, ViltForImageAndTextRetrieval):
    """transformers' retrieval model (same `rank_output` (1-logit) head and keys) that also trains.

    `labels` (B,): 1 for a matching pair, 0 otherwise. With `group_size=G` (argument or `config.retrieval_group_size`)
    the batch is B/G consecutive groups, each one image (or text) with G candidates of which exactly one matches, and
    the loss is the original `compute_irtr` cross-entropy over each group's scores (original: 1 positive + 15 negative
    texts per image). Without groups the loss is binary cross-entropy on the scores.
    """

    accepts_loss_kwargs = False

    def init_rank_output_from_itm(self, itm_fc: nn.Linear):
        """The original starts `rank_output` as the "match" row of the pretrained ITM head."""
        with torch.no_grad():
            self.rank_output.weight.copy_(itm_fc.weight[1:2])
            self.rank_output.bias.copy_(itm_fc.bias[1:2])

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        pixel_values=None,
        pixel_mask=None,
        inputs_embeds=None,
        image_embeds=None,
        labels=None,
        group_size=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> SequenceClassifierOutput:
        r"""
        labels: (B,) 1 = the text matches the image; with groups, the one match of each group.
        group_size: rows come in groups of this size (default `config.retrieval_group_size`); softmax cross-entropy
            over each group's scores. Without groups: binary cross-entropy.
        """
        if image_embeds is None:
            check_pixel_values(pixel_values, self.config.num_channels)
        outputs = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            inputs_embeds=inputs_embeds,
            image_embeds=image_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = outputs.logits
        loss = None
        if labels is not None:
            if labels.shape != (logits.shape[0],):
                raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
            group_size = group_size or getattr(self.config, "retrieval_group_size", None)
            loss = pair_loss(logits[:, 0], labels, group_size or None, objective="softmax")
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "LORA_TARGET_MODULES",
    "ViltForImageTextRetrieval",
    "ViltForPreTraining",
    "ViltForPreTrainingOutput",
    "ViltITMHead",
    "word_patch_alignment",
]
