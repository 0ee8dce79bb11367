"""Attention masks, built once per forward at model level."""

import torch


def additive_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 1/0 padding mask -> (B, 1, 1, L) additive mask: 0 where attended, the dtype's lowest value elsewhere.

    `finfo(dtype).min` instead of the originals' -10000 keeps bf16/fp16 finite and masks exactly; the two agree to
    fp32 precision because exp(-10000) already underflows to 0.
    """
    mask = mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def joint_padding_mask(attention_mask, visual_attention_mask, text_shape, num_regions, device) -> torch.Tensor:
    """(B, T + R) 1/0 mask of a single-stream `[text | regions]` sequence; a missing part counts as all real."""
    if attention_mask is None:
        attention_mask = torch.ones(text_shape, dtype=torch.long, device=device)
    if visual_attention_mask is None:
        visual_attention_mask = torch.ones(text_shape[0], num_regions, dtype=torch.long, device=device)
    return torch.cat([attention_mask.long(), visual_attention_mask.long()], dim=1)
