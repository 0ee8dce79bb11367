"""Losses shared by the pretraining heads of every architecture."""

import torch
import torch.nn.functional as F


def zero_loss(reference: torch.Tensor) -> torch.Tensor:
    """A zero that stays connected to the graph, for objectives with nothing to predict in a batch (keeps DDP's
    gradient buckets identical across ranks)."""
    return reference.sum() * 0.0


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy over the non-ignored rows, 0 (graph-connected) when every row is ignored."""
    if (labels != ignore_index).any():
        return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)
    return zero_loss(logits)


def cosine_cost(text: torch.Tensor, image: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, M, D), (B, N, D) -> (B, M, N) cosine distances 1 - cos(t_i, v_j)."""
    text = F.normalize(text, p=2, dim=-1, eps=eps)
    image = F.normalize(image, p=2, dim=-1, eps=eps)
    return 1 - text @ image.transpose(1, 2)


@torch.no_grad()
def ipot_plan(cost, text_pad, image_pad, beta=0.5, iterations=50, inner_steps=1):
    """Inexact proximal-point optimal transport (Xie et al. 2019), batched; the plan T has shape (B, N, M).

    Each outer step re-weights the kernel exp(-C / beta) by the previous plan (the proximal term) and runs
    `inner_steps` Sinkhorn scalings towards uniform marginals over the non-padded tokens and regions. Padded rows
    and columns carry no mass.
    """
    batch, m, n = cost.shape
    joint_pad = (text_pad[:, :, None] | image_pad[:, None, :]).transpose(1, 2)  # (B, N, M)
    text_len = (~text_pad).sum(-1).to(cost.dtype)[:, None, None]
    image_len = (~image_pad).sum(-1).to(cost.dtype)[:, None, None]
    # a large addend in the denominators sends the scaling of padded positions to ~0
    text_block = text_pad.to(cost.dtype)[:, None, :] * 1e4
    image_block = image_pad.to(cost.dtype)[:, None, :] * 1e4

    kernel = torch.exp(-cost.transpose(1, 2) / beta).masked_fill(joint_pad, 0)
    plan = torch.ones(batch, n, m, dtype=cost.dtype, device=cost.device).masked_fill(joint_pad, 0)
    text_scale = (1 / text_len.view(batch, 1, 1)).expand(batch, 1, m).masked_fill(text_pad[:, None, :], 0)
    for _ in range(iterations):
        weighted = kernel * plan
        for _ in range(inner_steps):
            image_scale = 1 / (image_len * (weighted @ text_scale.transpose(1, 2)).transpose(1, 2) + image_block)
            text_scale = 1 / (text_len * (image_scale @ weighted) + text_block)
        plan = image_scale.transpose(1, 2) * weighted * text_scale
    return plan.masked_fill(joint_pad, 0)


def optimal_transport_distance(text, image, text_pad, image_pad, beta=0.5, iterations=50, inner_steps=1):
    """Word-region alignment distance of UNITER (paper eq. 4): <C, T*> with T* from IPOT over cosine costs.

    text: (B, M, D), image: (B, N, D); text_pad / image_pad: (B, M) / (B, N) True on padding. Runs in fp32 and
    returns (B,) distances; gradients flow through the cost only (the plan is a constant), as in the original.
    """
    cost = cosine_cost(text.float(), image.float())
    joint_pad = text_pad[:, :, None] | image_pad[:, None, :]
    cost = cost.masked_fill(joint_pad, 0)
    plan = ipot_plan(cost.detach(), text_pad, image_pad, beta, iterations, inner_steps)
    # trace(C T) = sum_ij C_ij T_ji
    return (cost * plan.transpose(1, 2)).sum(dim=(1, 2))
