"""Task and objective losses, written once and used by every architecture's heads.

Each function computes in fp32 and returns a graph-connected zero (`zero_loss`) when a batch has nothing to predict,
so DDP's gradient buckets stay identical across ranks. Where originals differ in scaling, the scaling is a parameter
named after what it does; the docstrings say which original uses which.
"""

import torch
import torch.nn.functional as F


def zero_loss(reference: torch.Tensor) -> torch.Tensor:
    """A zero that stays connected to the graph, for objectives with nothing to predict in a batch (keeps DDP's
    gradient buckets identical across ranks). The one way hf_vlp writes an empty loss."""
    return reference.float().sum() * 0.0


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy over the non-ignored rows, 0 (graph-connected) when every row is ignored. MLM, MRC, ITM,
    classification with class ids."""
    if (labels != ignore_index).any():
        return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)
    return zero_loss(logits)


# ----------------------------------------------------------------------------------------------------------------
# Task losses
# ----------------------------------------------------------------------------------------------------------------

SOFT_SCORE_SCALINGS = ("num_answers", "mean")


def soft_score_loss(logits: torch.Tensor, labels: torch.Tensor, scaling: str = "num_answers") -> torch.Tensor:
    """VQA / GQA as multi-label answer classification: binary cross-entropy with logits against soft scores.

    labels: (B, A) soft answer scores, or (B,) answer ids (turned one-hot).
    scaling:
      * "num_answers": mean over B * A elements times A, i.e. summed over answers and averaged over examples — the
        original scaling of UNITER (`mean() * targets.size(1)`), ViLBERT 12-in-1, Oscar (`instance_bce_with_logits`),
        LXMERT (`bce_loss(...) * logit.size(1)`) and ERNIE-ViL (sigmoid cross-entropy summed over answers);
      * "mean": the plain element mean.
    """
    if scaling not in SOFT_SCORE_SCALINGS:
        raise ValueError(f"`scaling` must be one of {SOFT_SCORE_SCALINGS}, got {scaling!r}")
    if labels.dim() == 1 and not labels.is_floating_point():
        labels = F.one_hot(labels.long(), logits.shape[-1])
    if labels.shape != logits.shape:
        raise ValueError(
            f"`labels` must be soft answer scores of shape {tuple(logits.shape)} or answer ids (batch,), "
            f"got {tuple(labels.shape)}."
        )
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return loss * labels.shape[-1] if scaling == "num_answers" else loss


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Class ids (B,) -> cross-entropy (-100 ignored); soft / one-hot targets (B, C) -> BCE-with-logits mean (the
    NLVR2 and SNLI-VE loss of ViLBERT 12-in-1)."""
    if labels.dim() == 1:
        return masked_cross_entropy(logits, labels.long())
    if labels.shape != logits.shape:
        raise ValueError(
            f"`labels` must be class ids (batch,) or targets of shape {tuple(logits.shape)}, got {tuple(labels.shape)}."
        )
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def region_selection_loss(scores: torch.Tensor, labels: torch.Tensor, visual_attention_mask=None) -> torch.Tensor:
    """Referring expressions, scores (B, R) over regions: `labels` (B,) index of the referred region ->
    cross-entropy; or (B, R) soft targets (e.g. IoU >= 0.5 with the gold box) -> BCE summed over valid regions and
    averaged over examples (ViLBERT 12-in-1: `mean() * R`)."""
    if labels.dim() == 1:
        return masked_cross_entropy(scores, labels.long())
    if labels.shape != scores.shape:
        raise ValueError(
            f"`labels` must be region indices (batch,) or targets of shape {tuple(scores.shape)}, "
            f"got {tuple(labels.shape)}."
        )
    loss = F.binary_cross_entropy_with_logits(scores.float(), labels.float(), reduction="none")
    if visual_attention_mask is not None:
        loss = loss * visual_attention_mask.to(loss.dtype)
    return loss.sum() / labels.shape[0]


def grouped_scores(scores: torch.Tensor, group_size) -> torch.Tensor:
    """(B,) scores of rows that come in groups of `group_size` -> (B / group_size, group_size), in fp32."""
    group_size = int(group_size)
    if group_size < 2 or scores.shape[0] % group_size:
        raise ValueError(f"batch size {scores.shape[0]} is not a multiple of group_size={group_size} (>= 2).")
    return scores.float().view(-1, group_size)


def pair_loss(scores: torch.Tensor, labels=None, group_size=None, objective: str = "softmax", margin: float = 0.2):
    """Image-text matching / retrieval / multiple-choice scores, one per (text, image) row, shape (B,).

    * `labels` (B,) 1/0 and no `group_size`: pointwise binary cross-entropy with logits (ViLBERT, UNITER, ViLT).
    * `group_size=K`: rows come in groups of K with one positive. The positive is the group's first row, or the row
      where `labels` is 1 when labels are given (each group must then hold exactly one 1).
        - objective "softmax": cross-entropy over each group (ViLBERT 12-in-1 retrieval / VCR, ViLT `compute_irtr`);
        - objective "hinge": mean of max(0, margin + sigmoid(s_neg) - sigmoid(s_pos)) (UNITER `model/itm.py`).
    """
    if group_size is None:
        if labels is None:
            raise ValueError("pass `labels` (batch,) 1/0 or `group_size` (positive first in each group).")
        if labels.shape != scores.shape:
            raise ValueError(f"`labels` must have shape {tuple(scores.shape)}, got {tuple(labels.shape)}.")
        return F.binary_cross_entropy_with_logits(scores.float(), labels.float())
    grouped = grouped_scores(scores, group_size)
    if labels is None:
        positive = torch.zeros(grouped.shape[0], dtype=torch.long, device=grouped.device)
    else:
        grouped_labels = labels.view(-1, grouped.shape[1])
        if not (grouped_labels == 1).sum(dim=1).eq(1).all():
            raise ValueError("with `group_size`, every group of `labels` must contain exactly one 1 (the match).")
        positive = grouped_labels.eq(1).long().argmax(dim=1)
    if objective == "softmax":
        return F.cross_entropy(grouped, positive)
    if objective == "hinge":
        probs = grouped.sigmoid()
        positive_probs = probs.gather(1, positive[:, None])
        is_negative = torch.ones_like(probs, dtype=torch.bool).scatter(1, positive[:, None], False)
        hinge = (margin + probs - positive_probs).clamp(min=0)
        return hinge[is_negative].mean()
    raise ValueError(f"`objective` must be 'softmax' or 'hinge', got {objective!r}")


def circle_loss(positive_scores: torch.Tensor, negative_scores: torch.Tensor, margin: float, scale: float):
    """Circle loss (Sun et al., CVPR 2020) of similarity scores in [0, 1], as ERNIE-ViL's retrieval fine-tuning
    uses it: per example, log(1 + sum_n exp(scale * a_n * (s_n - margin)) * sum_p exp(-scale * a_p * (s_p - 1 + margin)))
    with the self-paced weights a_p = relu(1 + margin - s_p), a_n = relu(s_n + margin) held constant (no gradient),
    averaged over the batch. `positive_scores` (B, P), `negative_scores` (B, K). Computed in float64 as the original,
    through log-sum-exp (the same value without overflowing exp)."""
    if positive_scores.dim() != 2 or negative_scores.dim() != 2 or positive_scores.shape[0] != negative_scores.shape[0]:
        raise ValueError(
            f"circle_loss takes (batch, P) positive and (batch, K) negative scores, got "
            f"{tuple(positive_scores.shape)} and {tuple(negative_scores.shape)}"
        )
    positive, negative = positive_scores.double(), negative_scores.double()
    weight_p = (1 + margin - positive).clamp(min=0).detach()
    weight_n = (negative + margin).clamp(min=0).detach()
    logit_p = -scale * weight_p * (positive - (1 - margin))
    logit_n = scale * weight_n * (negative - margin)
    per_example = F.softplus(torch.logsumexp(logit_n, dim=1) + torch.logsumexp(logit_p, dim=1))
    return per_example.mean().to(positive_scores.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Masked region modelling
# ----------------------------------------------------------------------------------------------------------------


def region_kl_loss(logits: torch.Tensor, soft_labels: torch.Tensor) -> torch.Tensor:
    """MRC-KL: KL(detector class distribution || predicted distribution), summed over classes and averaged over the
    N masked regions; logits and soft_labels are (N, C) (UNITER, ViLBERT, ERNIE-ViL)."""
    if logits.shape[0] == 0:
        return zero_loss(logits)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return F.kl_div(log_probs, soft_labels.float(), reduction="none").sum(-1).mean()


def region_feature_regression_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MRFR: mean squared error between predicted and original features of the N masked regions, (N, D) each
    (UNITER; ViLBERT's "regression" target)."""
    if predictions.shape[0] == 0:
        return zero_loss(predictions)
    return F.mse_loss(predictions.float(), targets.float())


def region_nce_loss(predictions: torch.Tensor, features: torch.Tensor, masked: torch.Tensor, valid=None):
    """ViLBERT's "nce" region target: each masked region's prediction (N_masked, D) must score its own original
    feature above every other valid region's feature in the batch (cross-entropy over dot products).
    features: (B, R, D) original features; masked / valid: (B, R) booleans (valid defaults to all regions)."""
    if predictions.shape[0] == 0:
        return zero_loss(predictions)
    valid = torch.ones_like(masked) if valid is None else valid.bool()
    candidates = features[valid].float()  # (N_valid, D)
    scores = predictions.float() @ candidates.t()  # (N_masked, N_valid)
    position_in_valid = torch.cumsum(valid.reshape(-1).long(), 0) - 1
    return F.cross_entropy(scores, position_in_valid[masked.reshape(-1)])


# ----------------------------------------------------------------------------------------------------------------
# Word-region alignment (optimal transport)
# ----------------------------------------------------------------------------------------------------------------


def signed_alignment_loss(distances: torch.Tensor, itm_labels: torch.Tensor) -> torch.Tensor:
    """The WRA / WPA loss of UNITER and ViLT: optimal-transport distances (B,) pulled down for matching pairs and
    pushed up for mismatched ones, `(sum d_match - sum d_mismatch) / number of labelled pairs` (-100 = unlabelled)."""
    sign = torch.where(itm_labels == 1, 1.0, torch.where(itm_labels == 0, -1.0, 0.0)).to(distances.dtype)
    counted = (itm_labels >= 0).sum().clamp(min=1)
    return (distances * sign).sum() / counted


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
