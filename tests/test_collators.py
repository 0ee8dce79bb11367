"""Pretraining and task collators: the targets each objective needs, made the way the papers describe."""

import numpy as np
import pytest
import torch

import hf_vlp  # noqa: F401
from hf_vlp.modeling.uniter import UniterProcessor
from hf_vlp.pretraining.collators import DataCollatorForVLPretraining, DataCollatorForVLTask
from hf_vlp.processing.region import RegionFeatureProcessor


def rows(count=8, classes=6, dim=10, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        regions = 3 + i % 3
        probs = rng.random((regions, classes)).astype(np.float32)
        out.append(
            dict(
                text=f"a red circle left of {i} blue squares near a green cross",
                region_features=rng.random((regions, dim)).astype(np.float32) + i,  # image identity in the values
                boxes=[[1, 1, 30, 30]] * regions,
                image_width=64,
                image_height=64,
                region_labels=[int(c) for c in rng.integers(1, classes, regions)],
                region_class_probs=probs / probs.sum(1, keepdims=True),
            )
        )
    return out


@pytest.fixture
def processor(bert_tokenizer):
    return UniterProcessor(RegionFeatureProcessor(), bert_tokenizer)


def test_joint_batch_has_every_objective_with_conditional_masking(processor):
    collator = DataCollatorForVLPretraining(processor, mlm_probability=0.3, mrm_probability=0.3, seed=1)
    batch = collator(rows())
    matched = batch["itm_labels"].bool()
    text_masked = (batch["labels"] != -100).any(1)
    regions_masked = batch["region_mask"].any(1)
    assert not (text_masked & regions_masked).any(), "an example masked both modalities"
    assert not (text_masked | regions_masked)[~matched].any(), "a mismatched pair was masked"
    assert (text_masked | regions_masked)[matched].all(), "a matching pair was left unmasked"
    assert not (batch["region_mask"] & (batch["visual_attention_mask"] == 0)).any(), "a padding region was masked"
    masked = batch["region_mask"]
    assert (batch["region_class_labels"][masked] > 0).all() and (batch["region_class_labels"][~masked] == -100).all()
    torch.testing.assert_close(batch["region_feature_labels"], batch["visual_feats"])
    assert batch["region_soft_labels"].shape[-1] == 6


def test_itm_negatives_never_pair_a_text_with_its_own_image(processor):
    data = rows(count=16)
    collator = DataCollatorForVLPretraining(processor, objectives=("itm",), itm_negative_probability=0.5, seed=3)
    labels = []
    for _ in range(5):
        batch = collator(data)
        image_identity = batch["visual_feats"][:, 0, 0].floor().long()  # row i's features are offset by i
        own = image_identity == torch.arange(16)
        assert torch.equal(own, batch["itm_labels"].bool())
        labels.append(batch["itm_labels"])
    rate = 1 - torch.cat(labels).float().mean().item()
    assert 0.3 < rate < 0.7


def test_mlm_masking_follows_bert_80_10_10(processor):
    data = rows(count=64)
    collator = DataCollatorForVLPretraining(processor, objectives=("mlm",), mlm_probability=0.15, seed=0)
    plain = processor(text=[r["text"] for r in data])["input_ids"]
    masked_count, as_mask, unchanged, total = 0, 0, 0, 0
    for _ in range(10):
        batch = collator(data)
        selected = batch["labels"] != -100
        total += (plain != 0).sum().item() - 2 * len(data)
        masked_count += selected.sum().item()
        as_mask += (batch["input_ids"][selected] == processor.tokenizer.mask_token_id).sum().item()
        unchanged += (batch["input_ids"][selected] == plain[selected]).sum().item()
        assert torch.equal(batch["labels"][selected], plain[selected])
        assert not selected[:, 0].any(), "[CLS] was masked"
    assert 0.12 < masked_count / total < 0.19
    assert 0.74 < as_mask / masked_count < 0.86 and 0.05 < unchanged / masked_count < 0.16


def test_per_batch_sampling_draws_the_same_objective_on_every_rank(processor):
    ranks = [DataCollatorForVLPretraining(processor, objective_sampling="per_batch", seed=7) for _ in range(2)]
    names = [[sorted(k for k in c(rows()) if "label" in k or k == "region_mask") for _ in range(6)] for c in ranks]
    assert names[0] == names[1]
    assert len({tuple(n) for n in names[0]}) > 1, "the draw never changed objective"


def test_task_collator_vqa_soft_scores_and_retrieval_groups(processor):
    data = rows(count=4)
    for i, row in enumerate(data):
        row.update(question=row["text"], answer_ids=[i, 5], answer_scores=[1.0, 0.3])
    batch = DataCollatorForVLTask(processor, "vqa", num_labels=6)(data)
    assert batch["labels"][2, 2] == 1.0 and batch["labels"][2, 5] == pytest.approx(0.3)
    retrieval = DataCollatorForVLTask(processor, "retrieval", retrieval_negatives=2)(data)
    assert retrieval["group_size"] == 3 and retrieval["input_ids"].shape[0] == 12
    identity = retrieval["visual_feats"][:, 0, 0].floor().long().view(4, 3)
    assert torch.equal(identity[:, 0], torch.arange(4)) and (identity[:, 1:] != torch.arange(4)[:, None]).all()


def test_collators_reject_bad_configuration(processor):
    with pytest.raises(ValueError, match="unknown objectives"):
        DataCollatorForVLPretraining(processor, objectives=("mlm", "xyz"))
    with pytest.raises(ValueError, match="num_labels"):
        DataCollatorForVLTask(processor, "vqa")
    data = rows()
    for row in data:
        del row["region_labels"], row["region_class_probs"]
    with pytest.raises(ValueError, match="region classes"):
        DataCollatorForVLPretraining(processor, objectives=("mrc",))(data)
