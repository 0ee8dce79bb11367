"""UniT: Unified Transformer for multimodal multitask learning (Hu & Singh, ICCV 2021).

One model, many datasets: an image encoder (ResNet -> 1x1 projection -> DETR transformer encoder), a BERT text
encoder, and DETR-style decoder(s) whose learned queries read the concatenation [image memory; text]. Each dataset
has its own queries (and optionally a task embedding prepended to each encoder's input) and its own head: box and
class predictions with DETR's set loss (detection, with Visual Genome attributes), or a classifier on the first
query's last-layer state (VQA, visual entailment, GLUE). `UnitForMultiTaskLearning.forward(task=<dataset>, ...,
labels=...)` runs one dataset's batch; `UnitMultiTaskSampler` mixes datasets by ratio.

The shared pieces (ResNet, sine positions, DETR layers, matcher, set loss) live in `hf_vlp.layers`; this file is the
composition and what is UniT's own (task embeddings, the text path, the heads).
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertModel, PreTrainedModel
from transformers.models.bert.modeling_bert import BertLayer as BertLayer  # named in `_no_split_modules`
from transformers.utils import ModelOutput, can_return_tuple

from hf_vlp.hub_mixin import HubPushMixin
from hf_vlp.layers.detr import (
    MLP,
    AttributeHead,
    DetrAttention,
    DetrDecoder,
    DetrEncoder,
    HungarianMatcher,
    SetPredictionLoss,
    check_detection_labels,
)
from hf_vlp.layers.detr import DetrDecoderLayer as DetrDecoderLayer  # named in `_no_split_modules`
from hf_vlp.layers.detr import DetrEncoderLayer as DetrEncoderLayer
from hf_vlp.layers.heads import PredictionHeadTransform
from hf_vlp.layers.pixels import check_pixel_values
from hf_vlp.layers.resnet import FrozenBatchNorm2d, ResNet
from hf_vlp.layers.sine_position import SinePositionEmbedding

from .configuration_unit import UnitConfig


@dataclass
class UnitModelOutput(ModelOutput):
    """
    decoder_intermediate_hidden_states: (num_decoder_layers, B, Q, decoder_hidden_size), every decoder layer's
        output after the decoder's final LayerNorm (the heads read these).
    memory: (B, S, decoder_hidden_size) what the decoder attended to ([image memory; text]), `memory_mask` (B, S).
    encoder_hidden_states / encoder_attentions: the image encoder's, `text_hidden_states` / `text_attentions`:
        BERT's, `decoder_hidden_states` / `decoder_attentions` / `cross_attentions`: the decoder's (when asked).
    """

    decoder_intermediate_hidden_states: torch.Tensor | None = None
    memory: torch.Tensor | None = None
    memory_mask: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    text_hidden_states: tuple[torch.Tensor, ...] | None = None
    text_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class UnitMultiTaskOutput(ModelOutput):
    """
    loss: the sum of `loss_dict` (when labels are given).
    loss_dict: the weighted loss terms (detection: `loss_ce`, `loss_bbox`, `loss_giou`, `loss_attr`, with `_k` for
        auxiliary decoder layer k; classification: `loss_<i>` per decoder layer used).
    logits: classification tasks (B, num_labels); detection (B, Q, num_classes + 1), the last decoder layer's.
    pred_boxes: detection (B, Q, 4) sigmoid (cx, cy, w, h) normalized to the unpadded image.
    attribute_logits: attribute datasets with `predict_attributes` (B, Q, num_attributes).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    attribute_logits: torch.Tensor | None = None
    loss_dict: dict[str, torch.Tensor] | None = None
    decoder_intermediate_hidden_states: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    text_hidden_states: tuple[torch.Tensor, ...] | None = None
    text_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


class UnitPreTrainedModel(HubPushMixin, PreTrainedModel):
    config_class = UnitConfig
    base_model_prefix = "unit"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False  # the decoder's memory mask is additive
    _supports_flex_attn = False
    _supports_attention_backend = True
    _no_split_modules = ["DetrEncoderLayer", "DetrDecoderLayer", "BertLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, DetrAttention):
            # DETR resets every transformer matrix with Xavier-uniform
            nn.init.xavier_uniform_(module.in_proj_weight)
            nn.init.zeros_(module.in_proj_bias)
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, FrozenBatchNorm2d):
            module.weight.fill_(1.0)
            module.bias.zero_()
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # object queries start spread out (nn.Embedding's N(0, 1), as DETR); task / text tables at `std`
            nn.init.normal_(module.weight, std=1.0 if getattr(module, "is_query_embedding", False) else std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, AttributeHead):
            for layer in (module.cls_embed, module.attr_linear1, module.attr_linear2):
                nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(module.attr_linear1.bias)
            nn.init.zeros_(module.attr_linear2.bias)
        elif isinstance(module, SetPredictionLoss):
            module.empty_weight.fill_(1.0)
            module.empty_weight[-1] = self.config.eos_coef


def _additive_mask(valid, dtype):
    """(B, S) 1 = attend -> (B, 1, 1, S) additive mask."""
    mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    return mask.masked_fill(~valid.bool(), torch.finfo(dtype).min)[:, None, None, :]


class UnitModel(UnitPreTrainedModel):
    """The UniT encoders and decoder(s); returns the decoder's per-layer outputs for a dataset's queries.

    Parameters follow MMF's module tree where it has one: `backbone` (torchvision ResNet names), `input_proj`,
    `encoder.layers.N`, `enc2dec_proj` / `pos_embed_proj` (only when the encoder and decoder widths differ),
    `task_embeddings_enc`, `decoder` (shared) or `decoders.<dataset>`, `query_embeds.<dataset>`, `text_encoder`
    (transformers' `BertModel` without pooler), `task_embeddings_lang`, `text_projection`, `text_position_projection`.
    """

    def __init__(self, config: UnitConfig):
        super().__init__(config)
        self.backbone = ResNet(
            config.backbone_block,
            config.backbone_layers,
            stem_channels=config.backbone_stem_channels,
            base_channels=config.backbone_base_channels,
            norm="frozen",
            frozen_stages=config.backbone_frozen_stages,
            replace_stride_with_dilation=(False, False, config.backbone_dilation),
            out_stages=("layer4",),
        )
        self.input_proj = nn.Conv2d(self.backbone.out_channels["layer4"], config.encoder_hidden_size, kernel_size=1)
        self.position_embedding = SinePositionEmbedding(config.encoder_hidden_size)
        layer_args = (config.num_heads, config.ffn_size, config.dropout, config.activation, config.pre_norm, config)
        self.encoder = DetrEncoder(config.num_encoder_layers, config.encoder_hidden_size, *layer_args)
        if config.encoder_hidden_size != config.decoder_hidden_size:
            self.enc2dec_proj = nn.Linear(config.encoder_hidden_size, config.decoder_hidden_size)
            self.pos_embed_proj = nn.Linear(config.encoder_hidden_size, config.decoder_hidden_size)
        else:
            self.enc2dec_proj = self.pos_embed_proj = None
        self.task_embeddings_enc = (
            nn.Embedding(config.max_image_task_num, config.encoder_hidden_size)
            if config.use_task_embedding_in_img_encoder
            else None
        )

        def make_decoder():
            return DetrDecoder(config.num_decoder_layers, config.decoder_hidden_size, *layer_args)

        if config.share_decoders:
            self.decoder, self.decoders = make_decoder(), None
        else:
            self.decoder, self.decoders = None, nn.ModuleDict({name: make_decoder() for name in config.tasks})
        self.query_embeds = nn.ModuleDict(
            {name: nn.Embedding(spec["num_queries"], config.decoder_hidden_size) for name, spec in config.tasks.items()}
        )
        for embedding in self.query_embeds.values():
            embedding.is_query_embedding = True

        text_config = config.text_config
        self.text_encoder = BertModel(text_config, add_pooling_layer=False)
        self.task_embeddings_lang = (
            nn.Embedding(config.max_task_num, text_config.hidden_size)
            if config.use_task_embedding_in_lang_encoder
            else None
        )
        self.text_projection = nn.Linear(text_config.hidden_size, config.decoder_hidden_size)
        self.text_position_projection = nn.Linear(text_config.hidden_size, config.decoder_hidden_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.text_encoder.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.text_encoder.embeddings.word_embeddings = value

    def check_task(self, task):
        """The task spec of dataset `task`; `ValueError` naming `task` when the config has no such dataset."""
        if task is None and len(self.config.tasks) == 1:
            task = next(iter(self.config.tasks))
        if task not in self.config.tasks:
            raise ValueError(f"`task` must be one of the config's datasets {sorted(self.config.tasks)}, got {task!r}.")
        return task, self.config.tasks[task]

    def encode_image(self, pixel_values, pixel_mask, task_index, output_hidden_states=False, output_attentions=False):
        """ResNet -> 1x1 projection -> (task token) -> encoder; returns (memory, positions, mask, encoder output)."""
        check_pixel_values(pixel_values, 3)
        batch, _, height, width = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = torch.ones(batch, height, width, dtype=torch.long, device=pixel_values.device)
        elif tuple(pixel_mask.shape) != (batch, height, width):
            raise ValueError(
                f"`pixel_mask` must be (batch, height, width) = {(batch, height, width)} like `pixel_values`, got "
                f"{tuple(pixel_mask.shape)}."
            )
        features = self.backbone(pixel_values)["layer4"]
        # DETR: the padding mask resized to the feature map (nearest)
        mask = F.interpolate(pixel_mask[None].float(), size=features.shape[-2:])[0] > 0.5
        positions = self.position_embedding(mask, dtype=features.dtype).flatten(2).transpose(1, 2)
        source = self.input_proj(features).flatten(2).transpose(1, 2)
        mask = mask.flatten(1)
        if self.task_embeddings_enc is not None:  # a task token: mask 1, position 0, stripped after the encoder
            token = self.task_embeddings_enc.weight[task_index].to(source.dtype).expand(batch, 1, -1)
            source = torch.cat([token, source], dim=1)
            positions = torch.cat([torch.zeros_like(positions[:, :1]), positions], dim=1)
            mask = torch.cat([mask.new_ones(batch, 1), mask], dim=1)
        encoded = self.encoder(
            source, mask, positions, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        memory = encoded.last_hidden_state
        if self.task_embeddings_enc is not None:
            source, positions, mask, memory = source[:, 1:], positions[:, 1:], mask[:, 1:], memory[:, 1:]
        if self.config.residual_in_encoder:
            memory = source + memory
        if self.enc2dec_proj is not None:
            memory, positions = self.enc2dec_proj(memory), self.pos_embed_proj(positions)
        return memory, positions, mask, encoded

    def encode_text(
        self, input_ids, attention_mask, token_type_ids, task_index, output_hidden_states=False, output_attentions=False
    ):
        """BERT with the task token prepended after the embeddings; returns (text, positions, mask, hidden states,
        attentions). Positions are the projected BERT position table rows 0..L-1 (shared over the batch)."""
        if input_ids is None or input_ids.dim() != 2:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"`input_ids` must be (batch, length) for this task, got {shape}.")
        batch, length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, got "
                f"{tuple(attention_mask.shape)}."
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        bert = self.text_encoder
        position_ids = torch.arange(length, device=input_ids.device)
        hidden = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids[None])
        mask = attention_mask
        if self.task_embeddings_lang is not None:
            token = self.task_embeddings_lang.weight[task_index].to(hidden.dtype).expand(batch, 1, -1)
            hidden = torch.cat([token, hidden], dim=1)
            mask = torch.cat([mask.new_ones(batch, 1), mask], dim=1)
        additive = _additive_mask(mask, hidden.dtype)
        all_hidden, attentions, hooks = [], [], []
        if output_attentions:
            for layer in bert.encoder.layer:
                hooks.append(layer.attention.self.register_forward_hook(lambda _m, _i, out: attentions.append(out[1])))
        try:
            for layer in bert.encoder.layer:
                if output_hidden_states:
                    all_hidden.append(hidden)
                hidden = layer(hidden, additive)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        finally:
            for hook in hooks:
                hook.remove()
        if output_hidden_states:
            all_hidden.append(hidden)
        start = 0 if self.task_embeddings_lang is None else 1
        text = self.text_projection(hidden[:, start:])
        positions = self.text_position_projection(bert.embeddings.position_embeddings(position_ids))
        positions = positions[None].expand(batch, -1, -1)
        return (
            text,
            positions,
            attention_mask,
            tuple(all_hidden) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
        )

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        task: str | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> UnitModelOutput:
        r"""
        pixel_values: (B, 3, H, W) images (ImageNet-normalized, zero-padded), with `pixel_mask` (B, H, W) 1 on real
            pixels; required by detection and vl tasks, ignored by glue tasks.
        input_ids / attention_mask / token_type_ids: (B, L) text; required by vl and glue tasks.
        task: the dataset name (a key of `config.tasks`); it selects the queries, decoder and task embeddings.
        """
        output_attentions = bool(output_attentions)
        output_hidden_states = bool(output_hidden_states)
        task, spec = self.check_task(task)
        task_index = spec["task_index"]
        memories, positions, masks = [], [], []
        outputs = {}
        if spec["type"] in ("detection", "vl"):
            memory, image_positions, image_mask, encoded = self.encode_image(
                pixel_values, pixel_mask, task_index, output_hidden_states, output_attentions
            )
            memories.append(memory)
            positions.append(image_positions)
            masks.append(image_mask)
            outputs.update(encoder_hidden_states=encoded.hidden_states, encoder_attentions=encoded.attentions)
        if spec["type"] in ("vl", "glue"):
            text, text_positions, text_mask, text_hidden, text_attentions = self.encode_text(
                input_ids, attention_mask, token_type_ids, task_index, output_hidden_states, output_attentions
            )
            if pixel_values is not None and spec["type"] == "vl" and text.shape[0] != memories[0].shape[0]:
                raise ValueError(
                    f"`input_ids` batch {text.shape[0]} and `pixel_values` batch {memories[0].shape[0]} differ."
                )
            if spec["keep_only_cls"]:
                text, text_positions, text_mask = text[:, :1], text_positions[:, :1], text_mask[:, :1]
            memories.append(text)
            positions.append(text_positions)
            masks.append(text_mask.bool())
            outputs.update(text_hidden_states=text_hidden, text_attentions=text_attentions)
        memory = torch.cat(memories, dim=1)
        memory_mask = torch.cat(masks, dim=1)
        # repeat, not expand: an expanded view of a parameter is a grad-requiring leaf even under no_grad, which
        # torch's module tracker (FlopCounterMode) refuses as a module input
        query_positions = self.query_embeds[task].weight.to(memory.dtype)[None].repeat(memory.shape[0], 1, 1)
        decoder = self.decoder if self.decoder is not None else self.decoders[task]
        decoded = decoder(
            torch.zeros_like(query_positions),
            memory,
            memory_mask,
            torch.cat(positions, dim=1),
            query_positions,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        return UnitModelOutput(
            decoder_intermediate_hidden_states=decoded.intermediate_hidden_states,
            memory=memory,
            memory_mask=memory_mask,
            decoder_hidden_states=decoded.hidden_states,
            decoder_attentions=decoded.attentions,
            cross_attentions=decoded.cross_attentions,
            **outputs,
        )


class UnitForMultiTaskLearning(UnitPreTrainedModel):
    """UniT with every dataset's head: `class_embeds.<ds>` / `bbox_embeds.<ds>` (3-layer MLP) and the set loss
    `det_losses.<ds>` (holding the attribute head for attribute datasets) for detection; `classifiers.<ds>`
    (BERT prediction-head transform at the decoder width, then a linear layer) for vl / glue datasets.

    `labels`: detection, a list of B dicts (`class_labels` (n,), `boxes` (n, 4) normalized cxcywh, optionally
    `attributes` (n, max_attributes) with -1 for none; `hf_vlp.processing.cnn_images` makes them); classification,
    (B,) class ids (`loss="cross_entropy"`) or (B, num_labels) soft scores (`loss="binary_cross_entropy_with_logits"`).
    """

    def __init__(self, config: UnitConfig):
        super().__init__(config)
        self.unit = UnitModel(config)
        hidden = config.decoder_hidden_size
        text_config = config.text_config
        self.class_embeds = nn.ModuleDict()
        self.bbox_embeds = nn.ModuleDict()
        self.det_losses = nn.ModuleDict()
        self.classifiers = nn.ModuleDict()
        for name, spec in config.tasks.items():
            if spec["type"] == "detection":
                self.class_embeds[name] = nn.Linear(hidden, spec["num_classes"] + 1)
                self.bbox_embeds[name] = MLP(hidden, hidden, 4, 3)
                attribute_head = (
                    AttributeHead(spec["num_classes"], config.num_attributes, hidden)
                    if spec["use_attributes"]
                    else None
                )
                matcher = HungarianMatcher(
                    config.set_cost_class, config.set_cost_bbox, config.set_cost_giou, config.class_cost_log_softmax
                )
                self.det_losses[name] = SetPredictionLoss(
                    spec["num_classes"],
                    matcher,
                    eos_coef=config.eos_coef,
                    bbox_loss_coef=config.bbox_loss_coef,
                    giou_loss_coef=config.giou_loss_coef,
                    attribute_loss_coef=config.attribute_loss_coef,
                    attribute_head=attribute_head,
                    max_attributes=config.max_attributes,
                    aux_loss=config.aux_loss,
                )
            else:
                self.classifiers[name] = nn.Sequential(
                    PredictionHeadTransform(hidden, text_config.hidden_act, text_config.layer_norm_eps),
                    nn.Linear(hidden, spec["num_labels"]),
                )
        self.dropout = nn.Dropout(text_config.hidden_dropout_prob)
        self.post_init()

    def get_input_embeddings(self):
        return self.unit.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.unit.set_input_embeddings(value)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        task: str | None = None,
        labels: torch.Tensor | list[dict] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> UnitMultiTaskOutput:
        r"""
        Inputs as `UnitModel` (`task` = the dataset name); `labels` as the class docstring. The loss is the sum of
        the dataset's weighted loss terms (`loss_dict`).
        """
        task, spec = self.unit.check_task(task)
        outputs = self.unit(
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            task=task,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        layers = outputs.decoder_intermediate_hidden_states
        if spec["type"] == "detection":
            head = self._detect(task, spec, layers, labels)
        else:
            head = self._classify(task, spec, layers, labels)
        loss_dict = head.pop("loss_dict", None)
        loss = None if loss_dict is None else sum(loss_dict.values())
        return UnitMultiTaskOutput(
            loss=loss,
            loss_dict=loss_dict,
            **head,
            decoder_intermediate_hidden_states=layers,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
            text_hidden_states=outputs.text_hidden_states,
            text_attentions=outputs.text_attentions,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
        )

    def _detect(self, task, spec, layers, labels):
        layer_logits = self.class_embeds[task](layers)
        layer_boxes = self.bbox_embeds[task](layers).sigmoid()
        criterion = self.det_losses[task]
        result = {"logits": layer_logits[-1], "pred_boxes": layer_boxes[-1]}
        if labels is not None:
            check_detection_labels(
                labels,
                layers.shape[1],
                spec["num_classes"],
                self.config.max_attributes if spec["use_attributes"] else None,
            )
            losses = criterion(layer_logits.float(), layer_boxes.float(), labels, layers)
            result["loss_dict"] = {name: value * self.config.detection_loss_weight for name, value in losses.items()}
        if spec["use_attributes"] and self.config.predict_attributes:
            predicted = layer_logits[-1][..., :-1].argmax(-1)
            result["attribute_logits"] = criterion.attribute_head(layers[-1], predicted)
        return result

    def _classify(self, task, spec, layers, labels):
        used = layers if self.config.loss_on_all_hs else layers[-1:]
        classifier = self.classifiers[task]
        losses, logits = {}, None
        for index, hidden in enumerate(used):
            # MMF reads `hs[:, -num_queries]`: the FIRST query, since the decoder outputs exactly num_queries
            logits = classifier(self.dropout(hidden[:, 0]))
            if labels is not None:
                losses[f"loss_{index}"] = self._classification_loss(spec, logits.float(), labels)
        result = {"logits": logits}
        if labels is not None:
            result["loss_dict"] = losses
        return result

    @staticmethod
    def _classification_loss(spec, logits, labels):
        num_labels = spec["num_labels"]
        if spec["loss"] == "binary_cross_entropy_with_logits":
            if labels.shape != logits.shape:
                raise ValueError(
                    f"`labels` must be (batch, {num_labels}) soft scores for this task, got {tuple(labels.shape)}."
                )
            loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            return loss * num_labels if spec["scale_loss_by_num_labels"] else loss
        if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"`labels` must be ({logits.shape[0]},) class ids for this task, got {tuple(labels.shape)}."
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
            raise ValueError(f"`labels` must be class ids in [0, {num_labels}), got {labels.tolist()}.")
        return F.cross_entropy(logits, labels)


__all__ = ["UnitForMultiTaskLearning", "UnitModel", "UnitModelOutput", "UnitMultiTaskOutput", "UnitPreTrainedModel"]
