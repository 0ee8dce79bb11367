"""Switch Transformers (Fedus et al., JMLR 2022) on top of transformers' classes, with the router losses exposed.

transformers ships the model; hf_vlp subclasses `SwitchTransformersForConditionalGeneration` (same weight names, so
`google/switch-*` Hub checkpoints load unchanged) to make its auxiliary objectives trainable and visible:

* `router_z_loss` (ST-MoE eq. 5: mean over tokens of logsumexp(router logits)^2) and `router_aux_loss` (the
  load-balancing loss, Switch paper eq. 4-6: num_experts * sum_i f_i * P_i) are output fields, so `VLPTrainer`
  logs them next to `lm_loss`; `loss = lm_loss + router_z_loss_coef * router_z_loss + router_aux_loss_coef *
  router_aux_loss`.
* They are computed whenever labels are given (transformers only does so with `output_router_logits=True`, so a
  plain `Trainer` run trains without them).
* Deviations of transformers 5.24 fixed here (docs/switch_transformers.md): with every layer sparse
  (`num_sparse_*_layers == num_*layers`) transformers sets both router losses to 0; and configs without
  `decoder_start_token_id` cannot shift labels (T5X starts decoding with the pad id 0).

The loss formulas are transformers' (`router_z_loss_func`, `load_balancing_loss_func`), evaluated over the router
logits of all sparse layers of a stack concatenated along the sequence, per batch row; no original (T5X) fixture
exists to check them against.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import Seq2SeqMoEOutput
from transformers.models.switch_transformers import modeling_switch_transformers as hf_switch
from transformers.utils import can_return_tuple

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.pretraining.losses import zero_loss

# Default LoRA targets (PEFT `target_modules` regex): attention projections of encoder and decoder plus every
# expert's and dense feed-forward's input/output projections. Routers stay frozen (and fp32).
LORA_TARGET_MODULES = r".*\.(SelfAttention|EncDecAttention)\.(q|k|v|o)$|.*\.(wi|wo)$"


@dataclass
class SwitchTransformersSeq2SeqOutput(Seq2SeqMoEOutput):
    """`Seq2SeqMoEOutput` plus `lm_loss` (token cross-entropy), `router_z_loss` and `router_aux_loss` (encoder +
    decoder, unweighted; `loss` adds them times the config coefficients)."""

    lm_loss: torch.FloatTensor | None = None
    router_z_loss: torch.FloatTensor | None = None
    router_aux_loss: torch.FloatTensor | None = None


def router_losses(router_logits):
    """(z-loss, load-balancing loss) of one stack from its per-layer router logits (B, T, E) each; None when the
    stack has no sparse layer."""
    if not router_logits:
        return None, None
    logits = torch.cat([logit.float() for logit in router_logits], dim=1)
    z_loss = hf_switch.router_z_loss_func(logits)
    aux_loss = hf_switch.load_balancing_loss_func(logits.softmax(-1), logits.argmax(-1))
    return z_loss, aux_loss


class SwitchTransformersForConditionalGeneration(HubPushMixin, hf_switch.SwitchTransformersForConditionalGeneration):
    """Switch Transformer encoder-decoder with its router losses as trainable, separately logged objectives."""

    accepts_loss_kwargs = False

    def __init__(self, config):
        if getattr(config, "decoder_start_token_id", None) is None:
            config.decoder_start_token_id = config.pad_token_id  # T5X decodes from the pad id (0)
        super().__init__(config)

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        cache=None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        labels=None,
        output_router_logits=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ) -> SwitchTransformersSeq2SeqOutput:
        r"""
        labels: (B, L) target ids, -100 ignored; decoder inputs are the labels shifted right.
        output_router_logits: default True when `labels` are given (the router losses need the logits).
        """
        if output_router_logits is None:
            output_router_logits = labels is not None
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self._shift_right(labels)
        outputs = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            output_router_logits=output_router_logits,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        result = SwitchTransformersSeq2SeqOutput(**{k: v for k, v in outputs.items()})
        if output_router_logits:
            encoder_z, encoder_aux = router_losses(outputs.encoder_router_logits)
            decoder_z, decoder_aux = router_losses(outputs.decoder_router_logits)
            result.encoder_z_loss, result.encoder_aux_loss = encoder_z, encoder_aux
            result.decoder_z_loss, result.decoder_aux_loss = decoder_z, decoder_aux
            zero = zero_loss(outputs.logits)
            result.router_z_loss = sum((x for x in (encoder_z, decoder_z) if x is not None), zero)
            result.router_aux_loss = sum((x for x in (encoder_aux, decoder_aux) if x is not None), zero)
        if labels is not None:
            logits = outputs.logits
            result.lm_loss = F.cross_entropy(
                logits.float().view(-1, logits.shape[-1]), labels.to(logits.device).view(-1)
            )
            result.loss = result.lm_loss
            if output_router_logits:
                result.loss = (
                    result.lm_loss
                    + self.config.router_z_loss_coef * result.router_z_loss
                    + self.config.router_aux_loss_coef * result.router_aux_loss
                )
        return result
