"""VisualBERT (Li et al., 2019) in hf_vlp: transformers' classes, subclassed where they depart from the original.

transformers ships the model (`transformers.models.visual_bert`); hf_vlp does not fork it. These subclasses keep
every weight name, so Hub checkpoints of transformers load unchanged, and fix what the parity fixture
(`shared/fixtures/visual_bert`, made with github.com/uclanlp/visualbert) shows to differ from the original:

* Region token types default to 0, as in the original (`TrainVisualBERTObjective.forward` uses
  `zeros_like(image_mask)`); transformers defaults to 1, which moves the sequence output by ~2.4 on the fixture.
  Only NLVR2 inputs pass types (0 for the first image's regions, 1 for the second's).
* `VisualBertForVisualQuestionAnswering.logits` are always the raw answer logits (transformers returns their
  `log_softmax` when `labels` are given); the loss is the original's `KLDivLoss(batchmean)` on soft scores.
* `VisualBertForPreTraining` takes MLM `labels` over the text only (B, T) as the original does (it pads them over
  the regions itself) or over text + regions (B, T + R) as transformers does; it returns each objective's loss
  (`masked_lm_loss`, `sentence_image_loss`) for `VLPTrainer`. `sentence_image_labels`: 1 = the text matches the
  image (the original's `is_random_next` field holds the `is_correct` flag; transformers' docstring states the
  opposite, but the released heads were trained with 1 = match).

Labels use transformers' ignore index -100 (the original used -1; converters map it).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.visual_bert import modeling_visual_bert as hf

from hf_vlp.pretraining.losses import masked_cross_entropy

# Default LoRA targets (PEFT `LoraConfig(target_modules=...)`): the attention projections every token and region
# goes through, plus the region-feature projection (the only vision-specific weight of this single-stream model).
LORA_TARGET_MODULES = ["query", "key", "value", "visual_projection"]


def _default_visual_token_type_ids(visual_embeds, visual_token_type_ids):
    """The original's default: every region gets token type 0."""
    if visual_embeds is not None and visual_token_type_ids is None:
        visual_token_type_ids = torch.zeros(visual_embeds.shape[:-1], dtype=torch.long, device=visual_embeds.device)
    return visual_token_type_ids


def _check_region_inputs(visual_embeds, visual_attention_mask, visual_token_type_ids, input_ids):
    if visual_embeds is None:
        return
    if visual_embeds.dim() != 3:
        raise ValueError(
            f"`visual_embeds` must be (batch, regions, visual_embedding_dim), got shape {tuple(visual_embeds.shape)}."
        )
    for name, tensor in (
        ("visual_attention_mask", visual_attention_mask),
        ("visual_token_type_ids", visual_token_type_ids),
    ):
        if tensor is not None and tuple(tensor.shape) != tuple(visual_embeds.shape[:2]):
            raise ValueError(
                f"`{name}` must be (batch, regions) = {tuple(visual_embeds.shape[:2])}, got {tuple(tensor.shape)}."
            )
    if input_ids is not None and input_ids.shape[0] != visual_embeds.shape[0]:
        raise ValueError(
            f"`input_ids` batch {input_ids.shape[0]} and `visual_embeds` batch {visual_embeds.shape[0]} differ."
        )


class VisualBertPreTrainedModel(hf.VisualBertPreTrainedModel):
    _no_split_modules = ["VisualBertLayer", "VisualBertEmbeddings"]
    accepts_loss_kwargs = False  # every head normalises its own loss (docs/design.md, "Trainer under DDP")


class VisualBertModel(VisualBertPreTrainedModel, hf.VisualBertModel):
    """transformers' `VisualBertModel` with the original's region token types (0) by default."""

    def forward(self, input_ids=None, visual_embeds=None, visual_token_type_ids=None, **kwargs):
        _check_region_inputs(visual_embeds, kwargs.get("visual_attention_mask"), visual_token_type_ids, input_ids)
        visual_token_type_ids = _default_visual_token_type_ids(visual_embeds, visual_token_type_ids)
        return super().forward(
            input_ids=input_ids, visual_embeds=visual_embeds, visual_token_type_ids=visual_token_type_ids, **kwargs
        )


@dataclass
class VisualBertForPreTrainingOutput(hf.VisualBertForPreTrainingOutput):
    """transformers' output plus each objective's loss (logged separately by `VLPTrainer`)."""

    masked_lm_loss: torch.FloatTensor | None = None
    sentence_image_loss: torch.FloatTensor | None = None


class VisualBertForPreTraining(VisualBertPreTrainedModel, hf.VisualBertForPreTraining):
    """Masked language modelling over `[text ; regions]` + sentence-image matching on the pooled output.

    labels: (B, T) or (B, T + R) token ids at masked text positions, -100 elsewhere (regions never carry labels).
    sentence_image_labels: (B,) 1 = the text matches the image, 0 = it does not.
    """

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        visual_embeds=None,
        visual_attention_mask=None,
        visual_token_type_ids=None,
        image_text_alignment=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        labels=None,
        sentence_image_labels=None,
        **kwargs,
    ):
        _check_region_inputs(visual_embeds, visual_attention_mask, visual_token_type_ids, input_ids)
        visual_token_type_ids = _default_visual_token_type_ids(visual_embeds, visual_token_type_ids)
        outputs = self.visual_bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            visual_embeds=visual_embeds,
            visual_attention_mask=visual_attention_mask,
            visual_token_type_ids=visual_token_type_ids,
            image_text_alignment=image_text_alignment,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        prediction_logits, seq_relationship_logits = self.cls(outputs.last_hidden_state, outputs.pooler_output)

        masked_lm_loss = sentence_image_loss = None
        if labels is not None:
            labels = self._joint_labels(labels, prediction_logits.shape[1])
            masked_lm_loss = masked_cross_entropy(prediction_logits.flatten(0, 1), labels.flatten())
        if sentence_image_labels is not None:
            sentence_image_loss = masked_cross_entropy(seq_relationship_logits, sentence_image_labels.view(-1))
        losses = [part for part in (masked_lm_loss, sentence_image_loss) if part is not None]
        loss = sum(losses) if losses else None

        result = VisualBertForPreTrainingOutput(
            loss=loss,
            prediction_logits=prediction_logits,
            seq_relationship_logits=seq_relationship_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            masked_lm_loss=masked_lm_loss,
            sentence_image_loss=sentence_image_loss,
        )
        return result if return_dict is not False else result.to_tuple()

    @staticmethod
    def _joint_labels(labels, joint_length):
        """Text-only labels (B, T) -> (B, T + R) with -100 over the regions, as the original pads them."""
        if labels.shape[1] == joint_length:
            return labels
        if labels.shape[1] > joint_length:
            raise ValueError(
                f"`labels` has {labels.shape[1]} positions but the joint text + region sequence has {joint_length}."
            )
        return F.pad(labels, (0, joint_length - labels.shape[1]), value=-100)


class VisualBertForVisualQuestionAnswering(VisualBertPreTrainedModel, hf.VisualBertForQuestionAnswering):
    """VQA head of the original (`training_head_type="vqa"`): a linear classifier on the hidden state of the text
    token at `attention_mask.sum(1) - 2`, i.e. the `[MASK]` of `[CLS] question ? [MASK] [SEP]` (text right-padded).

    labels: (B, num_labels) soft answer scores (VQA: `min(0.3 * count, 1)`); loss = KL(labels || softmax(logits))
    averaged over the batch, as the original trains. `logits` are always the raw scores.
    """

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        visual_embeds=None,
        visual_attention_mask=None,
        visual_token_type_ids=None,
        image_text_alignment=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        labels=None,
        **kwargs,
    ):
        _check_region_inputs(visual_embeds, visual_attention_mask, visual_token_type_ids, input_ids)
        if attention_mask is None:
            raise ValueError(
                "`attention_mask` (B, T) is required: the answer is read at text position attention_mask.sum(1) - 2."
            )
        visual_token_type_ids = _default_visual_token_type_ids(visual_embeds, visual_token_type_ids)
        outputs = self.visual_bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            visual_embeds=visual_embeds,
            visual_attention_mask=visual_attention_mask,
            visual_token_type_ids=visual_token_type_ids,
            image_text_alignment=image_text_alignment,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        answer_position = (attention_mask.sum(1) - 2).long()
        batch = torch.arange(answer_position.shape[0], device=answer_position.device)
        hidden = outputs.last_hidden_state[batch, answer_position]
        logits = self.cls(self.dropout(hidden))

        loss = None
        if labels is not None:
            if labels.shape != logits.shape:
                raise ValueError(
                    f"`labels` must be soft answer scores of shape {tuple(logits.shape)}, got {tuple(labels.shape)}."
                )
            log_probs = F.log_softmax(logits.float(), dim=-1)
            loss = F.kl_div(log_probs, labels.float(), reduction="batchmean")

        result = hf.SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return result if return_dict is not False else result.to_tuple()


class VisualBertForVisualReasoning(VisualBertPreTrainedModel, hf.VisualBertForVisualReasoning):
    """NLVR2 head (linear on the pooled output, 2 classes) with the original's region token types: pass
    `visual_token_type_ids` 0 for the first image's regions and 1 for the second's (concatenated along regions)."""

    def forward(self, input_ids=None, visual_embeds=None, visual_token_type_ids=None, **kwargs):
        _check_region_inputs(visual_embeds, kwargs.get("visual_attention_mask"), visual_token_type_ids, input_ids)
        visual_token_type_ids = _default_visual_token_type_ids(visual_embeds, visual_token_type_ids)
        return super().forward(
            input_ids=input_ids, visual_embeds=visual_embeds, visual_token_type_ids=visual_token_type_ids, **kwargs
        )


class VisualBertForMultipleChoice(VisualBertPreTrainedModel, hf.VisualBertForMultipleChoice):
    """VCR head (linear on the pooled output, one score per choice) with region token types 0 by default."""

    def forward(self, input_ids=None, visual_embeds=None, visual_token_type_ids=None, **kwargs):
        if visual_embeds is not None and visual_token_type_ids is None:
            visual_token_type_ids = torch.zeros(visual_embeds.shape[:-1], dtype=torch.long, device=visual_embeds.device)
        return super().forward(
            input_ids=input_ids, visual_embeds=visual_embeds, visual_token_type_ids=visual_token_type_ids, **kwargs
        )


__all__ = [
    "LORA_TARGET_MODULES",
    "VisualBertForMultipleChoice",
    "VisualBertForPreTraining",
    "VisualBertForPreTrainingOutput",
    "VisualBertForVisualQuestionAnswering",
    "VisualBertForVisualReasoning",
    "VisualBertModel",
    "VisualBertPreTrainedModel",
]
