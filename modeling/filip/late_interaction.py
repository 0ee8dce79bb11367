"""FILIP's token-wise late interaction (Yao et al., ICLR 2022, section 3.1.1) and its contrastive loss, exact under
data parallelism and bounded in memory.

Similarity of a query sequence q (tokens q_1..q_n, all L2-normalised) to a key sequence k (k_1..k_m):

    s(q, k) = (1 / n) * sum_a max_b <q_a, k_b>        over the non-padding tokens a of q and b of k

FILIP's image->text similarity s^I(i, j) is s(image i's patches, text j's tokens); its text->image similarity
s^T(i, j) is s(text j's tokens, image i's patches). The two are not transposes of each other. The loss is InfoNCE
with s^I over the texts for each image and s^T over the images for each text (paper eq. 4-6).

Memory. Scoring n query sequences against N key sequences with chunk c materialises one (n, c, n_q_tokens,
n_k_tokens) block of similarities at a time (masked in place, reduced by `max`, whose backward keeps only the
argmax indices, O(n N n_q_tokens) integers). The backward pass rebuilds one block of that size per chunk. With
c = None the block is (n, N, ...): under DDP n is the local and N the global batch, so a rank never holds more than
one (B_local, B_global, N_img, N_txt) block, and with `chunk_size` much less.

DDP (`hf_vlp.pretraining.contrastive`'s scheme): each rank gathers every rank's (selected) tokens with gradients,
scores its own rows against all columns, and returns `sum of its rows' cross-entropies * world_size / global batch`;
the mean over ranks is the one-process loss on the global batch and DDP's gradient average its gradient.
"""

import torch
import torch.nn.functional as F

from hf_vlp.pretraining.contrastive import distributed_world, gather_with_grad, gather_without_grad

__all__ = [
    "late_interaction_similarity",
    "late_interaction_loss",
    "select_tokens",
]


def _check_tokens(name, tokens, mask):
    if tokens.dim() != 3:
        raise ValueError(f"`{name}` must be (batch, tokens, dim), got shape {tuple(tokens.shape)}")
    if mask is None:
        return tokens.new_ones(tokens.shape[:2], dtype=torch.bool)
    if mask.shape != tokens.shape[:2]:
        raise ValueError(f"the mask of `{name}` must have shape {tuple(tokens.shape[:2])}, got {tuple(mask.shape)}")
    mask = mask.bool()
    if tokens.shape[0] and not mask.any(dim=1).all():
        empty = int((~mask.any(dim=1)).nonzero()[0])
        raise ValueError(f"`{name}` example {empty} has no unmasked token: late interaction needs at least one")
    return mask


def late_interaction_similarity(query_tokens, key_tokens, query_mask=None, key_mask=None, chunk_size=None):
    """(n_queries, n_keys): mean over each query's unmasked tokens of the max inner product with any unmasked token
    of the key sequence. Tokens are used as given (normalise them first for cosine similarities). Key sequences are
    processed `chunk_size` at a time (None: all at once)."""
    query_mask = _check_tokens("query_tokens", query_tokens, query_mask)
    key_mask = _check_tokens("key_tokens", key_tokens, key_mask)
    if query_tokens.shape[-1] != key_tokens.shape[-1]:
        raise ValueError(
            f"query and key tokens must have the same dim, got {query_tokens.shape[-1]} and {key_tokens.shape[-1]}"
        )
    n_keys = key_tokens.shape[0]
    chunk_size = n_keys if chunk_size is None else int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int or None, got {chunk_size}")
    weights = query_mask.to(query_tokens.dtype)
    counts = weights.sum(dim=1, keepdim=True)  # (n_queries, 1)
    columns = []
    for start in range(0, max(n_keys, 1), chunk_size):
        keys, mask = key_tokens[start : start + chunk_size], key_mask[start : start + chunk_size]
        block = torch.einsum("qad,kbd->qkab", query_tokens, keys)  # the one (n, c, n_q_tokens, n_k_tokens) block
        block.masked_fill_(~mask[None, :, None, :], float("-inf"))
        best = block.max(dim=-1).values  # (n_queries, c, n_q_tokens); backward keeps only the argmax indices
        del block
        columns.append((best * weights[:, None, :]).sum(dim=-1) / counts)
    return torch.cat(columns, dim=1)[:, :n_keys]


@torch.no_grad()
def _token_scores(tokens, mask, other_tokens, other_mask, chunk_size=None):
    """(n, tokens): each token's maximum similarity to any unmasked token of any sequence of `other_tokens`."""
    n_other = other_tokens.shape[0]
    chunk_size = n_other if chunk_size is None else chunk_size
    scores = tokens.new_full(tokens.shape[:2], float("-inf"))
    for start in range(0, n_other, chunk_size):
        block = torch.einsum("nad,mbd->namb", tokens, other_tokens[start : start + chunk_size])
        block.masked_fill_(~other_mask[None, None, start : start + chunk_size, :], float("-inf"))
        scores = torch.maximum(scores, block.flatten(2).max(dim=-1).values)
    return scores.masked_fill(~mask, float("-inf"))


def select_tokens(tokens, mask, other_tokens, other_mask, ratio, chunk_size=None):
    """FILIP's token selection for training efficiency: per sequence, keep the ceil(ratio * unmasked tokens)
    (at least one) tokens with the highest maximum similarity to any token of any sequence of the other modality in
    the same (local) batch. Returns `(selected_tokens, selected_mask)`, (n, k_max, dim) and (n, k_max); gradients
    flow to the kept tokens, the choice itself is not differentiated. ratio 1 returns the inputs unchanged."""
    mask = _check_tokens("tokens", tokens, mask)
    other_mask = _check_tokens("other_tokens", other_tokens, other_mask)
    if ratio >= 1.0:
        return tokens, mask
    counts = torch.ceil(mask.sum(dim=1).float() * ratio).clamp(min=1).long()
    keep = int(counts.max())
    scores = _token_scores(tokens.detach(), mask, other_tokens.detach(), other_mask, chunk_size)
    order = scores.topk(keep, dim=1).indices  # highest first; masked tokens (-inf) come last
    selected = tokens.gather(1, order[..., None].expand(-1, -1, tokens.shape[-1]))
    selected_mask = torch.arange(keep, device=tokens.device)[None, :] < counts[:, None]
    return selected, selected_mask


def _pad_tokens(tokens, mask, length):
    extra = length - tokens.shape[1]
    if extra == 0:
        return tokens, mask
    return F.pad(tokens, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def _gather_tokens(tokens, mask, group):
    """Every rank's (tokens, mask), padded to the longest token count over the ranks, concatenated on dim 0."""
    length = int(gather_without_grad(torch.tensor([tokens.shape[1]], device=tokens.device), group).max())
    tokens, mask = _pad_tokens(tokens, mask, length)
    return gather_with_grad(tokens.contiguous(), group), gather_without_grad(mask, group).bool()


def late_interaction_loss(
    image_tokens,
    text_tokens,
    logit_scale,
    image_mask=None,
    text_mask=None,
    token_selection_ratio=1.0,
    chunk_size=None,
    gather=True,
    normalize=True,
    sample_ids=None,
    group=None,
):
    """FILIP's contrastive loss: (CE over texts of scale * s^I(image i, .) + CE over images of scale * s^T(., text i))
    / 2, image i paired with text i, in fp32 (autocast off).

    image_tokens (n_local, N_img, D), text_tokens (n_local, N_txt, D); masks 1 = real token (text padding 0).
    logit_scale: the multiplier (a scalar tensor or float). token_selection_ratio < 1 keeps that fraction of each
    example's tokens (`select_tokens`, chosen against this rank's batch) before the gather. chunk_size bounds the
    similarity block (see the module docstring). gather: all-gather with gradients across ranks (no-op in one
    process): the mean of the per-rank losses is the loss on the global batch. sample_ids: optional (n_local,) ids;
    every image-text pair with the same id is a positive, weighted uniformly (several captions of one image), as in
    `contrastive_loss`; without ids the positive of image i is text i.
    """
    if image_tokens.shape[0] != text_tokens.shape[0]:
        raise ValueError(
            f"image_tokens has {image_tokens.shape[0]} examples but text_tokens has {text_tokens.shape[0]}: the loss "
            "pairs image i with text i"
        )
    image_mask = _check_tokens("image_tokens", image_tokens, image_mask)
    text_mask = _check_tokens("text_tokens", text_tokens, text_mask)
    if not torch.is_tensor(logit_scale):
        logit_scale = torch.tensor(float(logit_scale), device=image_tokens.device)
    with torch.autocast(image_tokens.device.type, enabled=False):
        image, text, scale = image_tokens.float(), text_tokens.float(), logit_scale.float().reshape(())
        if normalize:
            image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        if token_selection_ratio < 1.0:
            # both choices are made against the other modality's full token sets
            (image, image_mask), (text, text_mask) = (
                select_tokens(image, image_mask, text, text_mask, token_selection_ratio, chunk_size),
                select_tokens(text, text_mask, image, image_mask, token_selection_ratio, chunk_size),
            )
        rank, world_size = distributed_world(group) if gather else (0, 1)
        offset = 0
        all_image, all_image_mask, all_text, all_text_mask = image, image_mask, text, text_mask
        if world_size > 1:
            all_image, all_image_mask = _gather_tokens(image, image_mask, group)
            all_text, all_text_mask = _gather_tokens(text, text_mask, group)
            sizes = gather_without_grad(torch.tensor([image.shape[0]], device=image.device), group)
            offset = int(sizes[:rank].sum())
        logits_per_image = scale * late_interaction_similarity(image, all_text, image_mask, all_text_mask, chunk_size)
        logits_per_text = scale * late_interaction_similarity(text, all_image, text_mask, all_image_mask, chunk_size)
        if sample_ids is None:
            targets = torch.arange(image.shape[0], device=image.device) + offset
            loss_sum = F.cross_entropy(logits_per_image, targets, reduction="sum") + F.cross_entropy(
                logits_per_text, targets, reduction="sum"
            )
        else:
            if sample_ids.shape != (image.shape[0],):
                raise ValueError(f"sample_ids must have shape ({image.shape[0]},), got {tuple(sample_ids.shape)}")
            all_ids = gather_without_grad(sample_ids, group) if world_size > 1 else sample_ids
            positives = (sample_ids[:, None] == all_ids[None, :]).float()
            soft_targets = positives / positives.sum(dim=1, keepdim=True)
            loss_sum = (
                -(soft_targets * F.log_softmax(logits_per_image, dim=1)).sum()
                - (soft_targets * F.log_softmax(logits_per_text, dim=1)).sum()
            )
        # scaled so that the mean over ranks is the global mean (hf_vlp.pretraining.contrastive, module docstring)
        return loss_sum / 2 * world_size / all_image.shape[0]
