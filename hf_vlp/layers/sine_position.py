"""DETR's 2-D sine position embedding of a CNN feature map (Carion et al. 2020, "Attention is all you need"
sines generalised to two axes), used by every CNN-backbone model (UniT, SOHO, E2E-VLP).

The input is a pixel mask of VALID positions (B, H, W) (1 / True = a real pixel, 0 = padding), the convention of
`pixel_mask` in transformers' image processors; DETR's own code takes the inverse (True = padded).
"""

import math

import torch
from torch import nn


def sine_position_embedding(
    pixel_mask, num_pos_feats, temperature=10000.0, normalize=True, scale=2 * math.pi, eps=1e-6
):
    """Return the (B, 2 * num_pos_feats, H, W) embedding: `num_pos_feats` channels for y, then as many for x.

    Each axis position is the running count of valid pixels along that axis (1-based); with `normalize` it is
    divided by the row's / column's last count (+ `eps`) and multiplied by `scale`, so valid positions span
    (0, scale]. Channel `i` of an axis is `pos / temperature ** (2 * (i // 2) / num_pos_feats)` through sin for
    even `i` and cos for odd `i` (interleaved). Padded positions get the count of the last valid one before them.
    """
    if pixel_mask is None or pixel_mask.dim() != 3:
        shape = None if pixel_mask is None else tuple(pixel_mask.shape)
        raise ValueError(f"`pixel_mask` must be (batch, height, width) with 1 on valid pixels, got {shape}.")
    if num_pos_feats % 2:
        raise ValueError(f"`num_pos_feats` must be even (sin / cos pairs), got {num_pos_feats}.")
    valid = pixel_mask.to(torch.float32)
    y_embed = valid.cumsum(1)
    x_embed = valid.cumsum(2)
    if normalize:
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=pixel_mask.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)

    def encode(positions):
        angles = positions[..., None] / dim_t
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=4).flatten(3)

    return torch.cat((encode(y_embed), encode(x_embed)), dim=3).permute(0, 3, 1, 2)


class SinePositionEmbedding(nn.Module):
    """Module form of `sine_position_embedding` (no weights); `hidden_size` is the embedding's channel count,
    so `num_pos_feats = hidden_size // 2` per axis."""

    def __init__(self, hidden_size, temperature=10000.0, normalize=True, scale=2 * math.pi, eps=1e-6):
        super().__init__()
        if hidden_size % 4:
            raise ValueError(f"`hidden_size` must be a multiple of 4 (sin / cos pairs per axis), got {hidden_size}.")
        self.num_pos_feats = hidden_size // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps

    def forward(self, pixel_mask, dtype=None):
        embedding = sine_position_embedding(
            pixel_mask, self.num_pos_feats, self.temperature, self.normalize, self.scale, self.eps
        )
        return embedding if dtype is None else embedding.to(dtype)
