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
  (`mlm_loss`, `itm_loss`) for `VLPTrainer`. `sentence_image_labels`: 1 = the text matches the
  image (the original's `is_random_next` field holds the `is_correct` flag; transformers' docstring states the
  opposite, but the released heads were trained with 1 = match).

Labels use transformers' ignore index -100 (the original used -1; converters map it).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.visual_bert import modeling_visual_bert as hf
from transformers.models.visual_bert.modeling_visual_bert import (  # named in `_no_split_modules`
    VisualBertEmbeddings as VisualBertEmbeddings,
)
from transformers.models.visual_bert.modeling_visual_bert import (
    VisualBertLayer as VisualBertLayer,
)
from transformers.utils import can_return_tuple

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.layers import check_region_values
from hf_vlp.pretraining.losses import masked_cross_entropy

# Default LoRA targets (PEFT `LoraConfig(target_modules=...)`): the attention projections every token and region
# goes through, plus the region-feature projection (the only vision-specific weight of this single-stream model).
LORA_TARGET_MODULES = ["query", "key", "value", "visual_projection"]


def _default_visual_token_type_ids(visual_embeds, visual_token_type_ids):
    """The original's default: every region gets token type 0."""
    if visual_embeds is not None and visual_token_type_ids is None:
        visual_token_type_ids = torch.zeros(visual_embeds.shape[:-1], dtype=torch.long, device=visual_embeds.device)
    return visual_token_type_ids


def _check_region_inputs(visual_embeds, visual_attention_mask, visual_token_type_ids, input_ids, feature_dim):
    if visual_embeds is None:
        return
    if visual_embeds.dim() != 3:
        raise ValueError(
            f"`visual_embeds` must be (batch, regions, visual_embedding_dim), got shape {tuple(visual_embeds.shape)}."
        )
    if visual_embeds.shape[-1] != feature_dim:
        raise ValueError(
            f"`visual_embeds` must have {feature_dim} features per region (the config's `visual_embedding_dim`), got "
            f"{visual_embeds.shape[-1]}."
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
    check_region_values(visual_embeds, visual_attention_mask=visual_attention_mask, feats_name="visual_embeds")


class VisualBertPreTrainedModel(HubPushMixin, hf.VisualBertPreTrainedModel):
    _no_split_modules = ["VisualBertLayer", "VisualBertEmbeddings"]
    accepts_loss_kwargs = False  # every head normalises its own loss (docs/design.md, "Trainer under DDP")

    def _encode(self, inputs):
        """transformers' `VisualBertModel.forward` on `inputs` (the keyword arguments of `VisualBertModel.forward`),
        with the input checks and the original's region token types."""
        _check_region_inputs(
            inputs["visual_embeds"],
            inputs["visual_attention_mask"],
            inputs["visual_token_type_ids"],
            inputs["input_ids"],
            self.config.visual_embedding_dim,
        )
        backbone = self if isinstance(self, hf.VisualBertModel) else self.visual_bert
        token_types = _default_visual_token_type_ids(inputs["visual_embeds"], inputs["visual_token_type_ids"])
        return hf.VisualBertModel.forward(
            backbone, **{**inputs, "visual_token_type_ids": token_types}, return_dict=True
        )


class VisualBertModel(VisualBertPreTrainedModel, hf.VisualBertModel):
    """transformers' `VisualBertModel` with the original's region token types (0) by default."""

    @can_return_tuple
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
    ) -> hf.BaseModelOutputWithPooling:
        return self._encode(
            dict(
                input_ids=input_ids,
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
            )
        )


@dataclass
class VisualBertForPreTrainingOutput(hf.VisualBertForPreTrainingOutput):
    """transformers' output plus each objective's loss (logged separately by `VLPTrainer`), named as in every hf_vlp
    pretraining head: `mlm_loss`, `itm_loss`."""

    mlm_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None

    @property
    def masked_lm_loss(self):
        """Former name of `mlm_loss` (read by `hf_vlp.conversion.visual_bert`'s fixture check)."""
        return self.mlm_loss

    @property
    def sentence_image_loss(self):
        """Former name of `itm_loss` (read by `hf_vlp.conversion.visual_bert`'s fixture check)."""
        return self.itm_loss


class VisualBertForPreTraining(VisualBertPreTrainedModel, hf.VisualBertForPreTraining):
    """Masked language modelling over `[text ; regions]` + sentence-image matching on the pooled output.

    labels: (B, T) or (B, T + R) token ids at masked text positions, -100 elsewhere (regions never carry labels).
    sentence_image_labels: (B,) 1 = the text matches the image, 0 = it does not.
    """

    @can_return_tuple
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
        labels=None,
        sentence_image_labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> VisualBertForPreTrainingOutput:
        outputs = self._encode(
            dict(
                input_ids=input_ids,
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
            )
        )
        prediction_logits, seq_relationship_logits = self.cls(outputs.last_hidden_state, outputs.pooler_output)

        mlm_loss = itm_loss = None
        if labels is not None:
            labels = self._joint_labels(labels, prediction_logits.shape[1])
            mlm_loss = masked_cross_entropy(prediction_logits.flatten(0, 1), labels.flatten())
        if sentence_image_labels is not None:
            itm_loss = masked_cross_entropy(seq_relationship_logits, sentence_image_labels.view(-1))
        losses = [part for part in (mlm_loss, itm_loss) if part is not None]
        return VisualBertForPreTrainingOutput(
            loss=sum(losses) if losses else None,
            prediction_logits=prediction_logits,
            seq_relationship_logits=seq_relationship_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            mlm_loss=mlm_loss,
            itm_loss=itm_loss,
        )

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


class VisualBertTaskHead(VisualBertPreTrainedModel):
    """One forward for the classification heads (VQA, NLVR2, VCR), over transformers' modules `visual_bert`,
    `dropout`, `cls`. A head states `prepare_inputs` (its input layout), `predict(outputs, inputs, layout)` and
    `compute_loss(logits, labels)`; `output_class` is its transformers output."""

    output_class = hf.SequenceClassifierOutput

    def prepare_inputs(self, inputs):
        return inputs, None

    def predict(self, outputs, inputs, layout):
        return self.cls(self.dropout(outputs.pooler_output))

    def compute_loss(self, logits, labels):
        return masked_cross_entropy(logits, labels.view(-1))

    @can_return_tuple
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
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        r"""Inputs as `VisualBertModel` (in the head's layout, see the class docstring); labels: the head's targets."""
        inputs, layout = self.prepare_inputs(
            dict(
                input_ids=input_ids,
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
            )
        )
        outputs = self._encode(inputs)
        logits = self.predict(outputs, inputs, layout)
        return self.output_class(
            loss=self.compute_loss(logits, labels) if labels is not None else None,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class VisualBertForVisualQuestionAnswering(VisualBertTaskHead, hf.VisualBertForQuestionAnswering):
    """VQA head of the original (`training_head_type="vqa"`): a linear classifier on the hidden state of the text
    token at `attention_mask.sum(1) - 2`, i.e. the `[MASK]` of `[CLS] question ? [MASK] [SEP]` (text right-padded).

    labels: (B, num_labels) soft answer scores (VQA: `min(0.3 * count, 1)`); loss = KL(labels || softmax(logits))
    averaged over the batch, as the original trains. `logits` are always the raw scores.
    """

    def prepare_inputs(self, inputs):
        if inputs["attention_mask"] is None:
            raise ValueError(
                "`attention_mask` (B, T) is required: the answer is read at text position attention_mask.sum(1) - 2."
            )
        return inputs, None

    def predict(self, outputs, inputs, layout):
        answer_position = (inputs["attention_mask"].sum(1) - 2).long()
        batch = torch.arange(answer_position.shape[0], device=answer_position.device)
        return self.cls(self.dropout(outputs.last_hidden_state[batch, answer_position]))

    def compute_loss(self, logits, labels):
        if labels.shape != logits.shape:
            raise ValueError(
                f"`labels` must be soft answer scores of shape {tuple(logits.shape)}, got {tuple(labels.shape)}."
            )
        return F.kl_div(F.log_softmax(logits.float(), dim=-1), labels.float(), reduction="batchmean")


class VisualBertForVisualReasoning(VisualBertTaskHead, hf.VisualBertForVisualReasoning):
    """NLVR2 head (linear on the pooled output, 2 classes). The original concatenates both images' regions with
    token types 0 (first image) and 1 (second): pass them so, or as every hf_vlp NLVR2 head takes them, stacked on
    dim 1 (`visual_embeds` (B, 2, R, D), `visual_attention_mask` (B, 2, R)), and the types are set for you.
    `labels` (B,): 1 = the statement is true; cross-entropy."""

    def prepare_inputs(self, inputs):
        visual_embeds = inputs["visual_embeds"]
        if visual_embeds is None or visual_embeds.dim() != 4:
            return inputs, None
        batch, images, regions = visual_embeds.shape[:3]
        inputs = {k: v.flatten(1, 2) if k.startswith("visual_") and v is not None else v for k, v in inputs.items()}
        if inputs["visual_token_type_ids"] is None:
            image_index = torch.arange(images, device=visual_embeds.device)
            inputs["visual_token_type_ids"] = image_index.repeat_interleave(regions).expand(batch, -1)
        return inputs, None


class VisualBertForMultipleChoice(VisualBertTaskHead, hf.VisualBertForMultipleChoice):
    """VCR head (linear on the pooled output, one score per choice) with region token types 0 by default.

    Text inputs (B, C, T); region inputs (B, C, R, ...) per choice or (B, R, ...) shared by the choices. `labels`
    (B,): index of the right choice; cross-entropy. `logits`: (B, C)."""

    output_class = hf.MultipleChoiceModelOutput

    def prepare_inputs(self, inputs):
        reference = inputs["input_ids"] if inputs["input_ids"] is not None else inputs["inputs_embeds"]
        if reference is None or reference.dim() != (3 if inputs["input_ids"] is not None else 4):
            shape = None if reference is None else tuple(reference.shape)
            raise ValueError(f"`input_ids` must be (batch, num_choices, seq_len) for multiple choice, got {shape}.")
        choices = reference.shape[1]
        flat = {}
        for name, value in inputs.items():
            if not torch.is_tensor(value):
                flat[name] = value
                continue
            if name.startswith("visual_") and value.dim() == (3 if name == "visual_embeds" else 2):
                value = value[:, None].expand(-1, choices, *value.shape[1:])  # shared by the choices
            flat[name] = value.flatten(0, 1)
        return flat, choices

    def predict(self, outputs, inputs, layout):
        return self.cls(self.dropout(outputs.pooler_output)).view(-1, layout)

    def compute_loss(self, logits, labels):
        return masked_cross_entropy(logits, labels)


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
