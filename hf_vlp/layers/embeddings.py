"""Text and region embeddings shared by the region-feature VLP models."""

import torch
from torch import nn

from .boxes import BOX_FEATURE_SIZES, box_location_features


class TextEmbeddings(nn.Module):
    """BERT embeddings: word + position + token type, LayerNorm, dropout."""

    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None):
        return self.dropout(self.LayerNorm(self.summed(input_ids, token_type_ids, position_ids, inputs_embeds)))

    def summed(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None):
        """word + position + token type embeddings, before the LayerNorm (where ViLBERT inserts its task token)."""
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        length = inputs_embeds.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"`input_ids` has {length} tokens, more than max_position_embeddings="
                f"{self.position_embeddings.num_embeddings}."
            )
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device)[None]
        if token_type_ids is None:
            token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        return inputs_embeds + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)


class RegionEmbeddings(nn.Module):
    """Region features and their boxes projected to the hidden size.

    `LayerNorm(feat_norm(feat_linear(features)) + box_norm(box_linear(location)) + type_embedding)`, the UNITER /
    Oscar-style region embedding; `box_feature_kind` picks the location vector derived from normalized boxes, and
    `masked_region_embedding` adds a learned vector to the features of masked regions (masked region modelling).
    Parameter names are UNITER's, which converters of other models map onto.
    """

    def __init__(self, config, feature_size=None, box_feature_kind=None, layer_norm_eps=None):
        super().__init__()
        eps = config.layer_norm_eps if layer_norm_eps is None else layer_norm_eps
        feature_size = feature_size or config.visual_feat_dim
        self.box_feature_kind = box_feature_kind or config.box_feature_kind
        self.img_linear = nn.Linear(feature_size, config.hidden_size)
        self.img_layer_norm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.pos_linear = nn.Linear(BOX_FEATURE_SIZES[self.box_feature_kind], config.hidden_size)
        self.pos_layer_norm = nn.LayerNorm(config.hidden_size, eps=eps)
        # one learned vector added to the (zeroed) features of masked regions
        self.mask_embedding = nn.Parameter(torch.zeros(feature_size))
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, visual_feats, visual_pos, type_embeddings, region_mask=None, location_feats=None):
        """`location_feats` replaces the location vector derived from `visual_pos`, for inputs prepared by an
        original pipeline that stores it (UNITER's image DB keeps w and h rounded separately to fp16)."""
        if region_mask is not None:
            visual_feats = visual_feats + region_mask[..., None].to(visual_feats.dtype) * self.mask_embedding
        if location_feats is None:
            location_feats = box_location_features(visual_pos, self.box_feature_kind)
        location = location_feats.to(visual_feats.dtype)
        embeddings = (
            self.img_layer_norm(self.img_linear(visual_feats))
            + self.pos_layer_norm(self.pos_linear(location))
            + type_embeddings
        )
        return self.dropout(self.LayerNorm(embeddings))
