"""Image-text contrastive loss (CLIP's InfoNCE) that is exact under data parallelism.

Shared by CLIP, BLIP, FILIP and METER. The idea is open_clip's `ClipLoss(local_loss=True, gather_with_grad=True)`
(open_clip/loss.py): every rank all-gathers the embeddings of every rank WITH gradients, scores its own rows against
all columns, and the backward pass sends each rank the gradient that the other ranks' losses put on its embeddings.

Why the result equals the single-process loss on the global batch of N pairs:
  global loss  L = (sum_i CE(i2t row i) + sum_i CE(t2i row i)) / (2 N)
  rank r loss  L_r = (sum_{i in r} CE(i2t row i) + sum_{i in r} CE(t2i row i)) / (2 N) * W
so mean_r L_r = L (for any per-rank batch sizes), and DDP's gradient averaging over W ranks gives
(1/W) sum_r dL_r/dtheta = dL/dtheta, because `gather_with_grad`'s backward sums every rank's gradient on the
gathered copy of a rank's rows back into that rank. The loss each rank returns is L_r; `Trainer` logs the mean over
ranks, which is L.

API (stable; other architectures import it):
    contrastive_loss(image_embeds, text_embeds, logit_scale, gather=True, normalize=True, sample_ids=None)
    contrastive_logits(image_embeds, text_embeds, logit_scale, gather=True, normalize=True)
    gather_with_grad(tensor)      # concat over ranks, differentiable, uneven batch sizes allowed
    gather_without_grad(tensor)   # concat over ranks, no graph (e.g. BLIP's momentum queues)
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = [
    "contrastive_loss",
    "contrastive_logits",
    "gather_with_grad",
    "gather_without_grad",
    "distributed_world",
]


def distributed_world(group=None) -> tuple[int, int]:
    """(rank, world_size) of `group`, (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def _all_gather_padded(tensor: torch.Tensor, group=None) -> tuple[list[torch.Tensor], list[int]]:
    """all_gather of tensors whose first dimension may differ between ranks (the last batch of an epoch):
    pad to the largest size, gather, return the unpadded pieces and the sizes."""
    _, world_size = distributed_world(group)
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s.item()) for s in sizes]
    largest = max(sizes)
    padded = tensor
    if tensor.shape[0] < largest:
        padding = tensor.new_zeros((largest - tensor.shape[0],) + tuple(tensor.shape[1:]))
        padded = torch.cat([tensor, padding], dim=0)
    pieces = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(pieces, padded.contiguous(), group=group)
    return [piece[:n] for piece, n in zip(pieces, sizes)], sizes


class _GatherWithGrad(torch.autograd.Function):
    """Forward: concatenation of every rank's tensor. Backward: every rank computed a gradient for the whole
    concatenation; the sum over ranks of the slice that belongs to this rank is this rank's gradient."""

    @staticmethod
    def forward(ctx, tensor, group):
        pieces, sizes = _all_gather_padded(tensor, group)
        rank, _ = distributed_world(group)
        ctx.group = group
        ctx.start = sum(sizes[:rank])
        ctx.size = sizes[rank]
        return torch.cat(pieces, dim=0)

    @staticmethod
    def backward(ctx, grad_output):
        # all_reduce instead of reduce_scatter: gloo (CPU) has no reduce_scatter, and the gathered batch is small
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start : ctx.start + ctx.size], None


def gather_with_grad(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate `tensor` (first dim = local batch, may differ per rank) over all ranks, keeping gradients.
    Identity when torch.distributed is not initialised or has one process."""
    _, world_size = distributed_world(group)
    if world_size == 1:
        return tensor
    return _GatherWithGrad.apply(tensor, group)


@torch.no_grad()
def gather_without_grad(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate `tensor` over all ranks without a graph (targets, momentum features, queues)."""
    _, world_size = distributed_world(group)
    if world_size == 1:
        return tensor.detach()
    pieces, _ = _all_gather_padded(tensor.detach(), group)
    return torch.cat(pieces, dim=0)


def _check_embeds(image_embeds: torch.Tensor, text_embeds: torch.Tensor):
    if image_embeds.dim() != 2 or text_embeds.dim() != 2:
        raise ValueError(
            "image_embeds and text_embeds must be 2-d (batch, dim); got shapes "
            f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}"
        )
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            "image_embeds and text_embeds must pair up row by row with the same dim; got shapes "
            f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}"
        )


def _scale(logit_scale, reference: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(logit_scale):
        logit_scale = torch.tensor(float(logit_scale), device=reference.device)
    if logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
    return logit_scale.float().reshape(())


def contrastive_logits(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale,
    gather: bool = True,
    normalize: bool = True,
    group=None,
):
    """Local rows against global columns, in fp32.

    `logit_scale` is the MULTIPLIER (CLIP: `model.logit_scale.exp()`; BLIP: `1 / temp`), a scalar tensor or float.
    Returns `(logits_per_image, logits_per_text, offset)`: (n_local, N_global) each, and the global index of this
    rank's first row (the positives of local row i are column offset + i).
    """
    _check_embeds(image_embeds, text_embeds)
    scale = _scale(logit_scale, image_embeds)
    image, text = image_embeds.float(), text_embeds.float()
    if normalize:
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    offset = 0
    if gather:
        all_image, all_text = gather_with_grad(image, group), gather_with_grad(text, group)
        rank, world_size = distributed_world(group)
        if world_size > 1:
            sizes = gather_without_grad(torch.tensor([image.shape[0]], device=image.device), group)
            offset = int(sizes[:rank].sum())
    else:
        all_image, all_text = image, text
    logits_per_image = scale * image @ all_text.t()
    logits_per_text = scale * text @ all_image.t()
    return logits_per_image, logits_per_text, offset


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale,
    gather: bool = True,
    normalize: bool = True,
    sample_ids: torch.Tensor | None = None,
    group=None,
) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP (paper fig. 3): (CE(image->text) + CE(text->image)) / 2, in fp32.

    image_embeds, text_embeds: (n_local, D), row i of one is paired with row i of the other.
    logit_scale: the multiplier applied to cosine similarities (CLIP's `logit_scale.exp()`, BLIP's `1/temp`).
    gather: all-gather with gradients across ranks (no-op without torch.distributed); under DDP the mean of the
        per-rank losses and the averaged gradients equal the 1-process run on the global batch.
    normalize: L2-normalise the embeddings first (CLIP, BLIP); pass False for pre-normalised inputs.
    sample_ids: optional (n_local,) ids; pairs with the same id are all positives, weighted uniformly (BLIP's
        retrieval fine-tuning, several captions per image). Without ids the positive is the diagonal.
    """
    logits_per_image, logits_per_text, offset = contrastive_logits(
        image_embeds, text_embeds, logit_scale, gather=gather, normalize=normalize, group=group
    )
    local, total = logits_per_image.shape
    _, world_size = distributed_world(group) if gather else (0, 1)
    if sample_ids is None:
        targets = torch.arange(local, device=logits_per_image.device) + offset
        loss_sum = F.cross_entropy(logits_per_image, targets, reduction="sum") + F.cross_entropy(
            logits_per_text, targets, reduction="sum"
        )
    else:
        if sample_ids.shape != (local,):
            raise ValueError(f"sample_ids must have shape ({local},), got {tuple(sample_ids.shape)}")
        all_ids = gather_without_grad(sample_ids, group) if gather else sample_ids
        positives = (sample_ids[:, None] == all_ids[None, :]).float()
        soft_targets = positives / positives.sum(dim=1, keepdim=True)
        loss_sum = (
            -(soft_targets * F.log_softmax(logits_per_image, dim=1)).sum()
            - (soft_targets * F.log_softmax(logits_per_text, dim=1)).sum()
        )
    # scale so that the mean over ranks is the global mean (see module docstring)
    return loss_sum / 2 * world_size / total
