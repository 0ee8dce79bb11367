"""The shared contrastive loss (hf_vlp.pretraining.contrastive): single-process behaviour and exactness under
2-process DDP (gloo, CPU) against the 1-process run on the global batch."""

import importlib.util
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F


def _load_contrastive():
    """The module by file path: the spawned workers then skip `import hf_vlp` (which imports every architecture and
    transformers), so the 2-process run starts in a few seconds."""
    path = Path(__file__).resolve().parents[1] / "hf_vlp" / "pretraining" / "contrastive.py"
    spec = importlib.util.spec_from_file_location("hf_vlp_contrastive_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_contrastive = _load_contrastive()
contrastive_loss = _contrastive.contrastive_loss
gather_with_grad = _contrastive.gather_with_grad
gather_without_grad = _contrastive.gather_without_grad


class TwoTowers(torch.nn.Module):
    """A toy dual encoder: one linear layer per modality and a learnable log-temperature (CLIP's logit_scale)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Linear(6, 4)
        self.text = torch.nn.Linear(5, 4)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, images, texts, sample_ids=None):
        return contrastive_loss(self.image(images), self.text(texts), self.logit_scale.exp(), sample_ids=sample_ids)


def global_batch():
    generator = torch.Generator().manual_seed(1)
    images, texts = torch.randn(7, 6, generator=generator), torch.randn(7, 5, generator=generator)
    ids = torch.tensor([0, 1, 1, 2, 3, 3, 4])
    return images, texts, ids


# rank 0 gets 4 rows, rank 1 gets 3: uneven local batches must still give the global loss
SPLITS = [(0, 4), (4, 7)]


def reference_loss(images, texts, scale):
    image, text = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    logits = scale * image @ text.t()
    targets = torch.arange(len(images))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def test_single_process_matches_clip_formula():
    images, texts, _ = global_batch()
    model = TwoTowers()
    loss = model(images, texts)
    expected = reference_loss(model.image(images), model.text(texts), model.logit_scale.exp())
    torch.testing.assert_close(loss, expected)


def test_sample_ids_without_duplicates_equal_diagonal_targets():
    images, texts, _ = global_batch()
    model = TwoTowers()
    torch.testing.assert_close(model(images, texts, torch.arange(7)), model(images, texts))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="image_embeds and text_embeds"):
        contrastive_loss(torch.randn(3, 4), torch.randn(2, 4), 10.0)
    with pytest.raises(ValueError, match="2-d"):
        contrastive_loss(torch.randn(3, 1, 4), torch.randn(3, 1, 4), 10.0)


def test_gather_is_identity_without_process_group():
    tensor = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(tensor) is tensor
    torch.testing.assert_close(gather_without_grad(tensor), tensor.detach())


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank, world_size, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        for use_ids in (False, True):
            model = torch.nn.parallel.DistributedDataParallel(TwoTowers())
            images, texts, ids = global_batch()
            start, end = SPLITS[rank]
            loss = model(images[start:end], texts[start:end], ids[start:end] if use_ids else None)
            loss.backward()
            mean_loss = loss.detach().clone()
            torch.distributed.all_reduce(mean_loss)
            mean_loss /= world_size
            grads = {name: p.grad.clone() for name, p in model.module.named_parameters()}
            results[(rank, use_ids)] = (mean_loss, grads)
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_ddp_equals_one_process_global_batch():
    """Mean of the per-rank losses and the DDP-averaged gradients (uneven local batches 4 + 3) equal the loss and
    gradients of one process on all 7 pairs, with diagonal targets and with sample_ids."""
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), results), nprocs=2, join=True)
    images, texts, ids = global_batch()
    for use_ids in (False, True):
        model = TwoTowers()
        loss = model(images, texts, ids if use_ids else None)
        loss.backward()
        for rank in range(2):
            mean_loss, grads = results[(rank, use_ids)]
            torch.testing.assert_close(mean_loss, loss.detach(), rtol=1e-6, atol=1e-6)
            for name, param in model.named_parameters():
                torch.testing.assert_close(
                    grads[name], param.grad, rtol=1e-5, atol=1e-6, msg=f"rank {rank} ids {use_ids} grad {name}"
                )
