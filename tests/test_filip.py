"""FILIP (modeling/filip): late-interaction similarity against a naive loop, chunked = unchunked, token selection,
the contrastive loss under 2-process gloo DDP = the 1-process loss on the global batch, the memory bound, the heads
(losses fall, Auto classes, zero-shot prompts, LoRA on both towers) and bad input. The common checks (save / load,
SDPA, checkpointing, padding, ...) run from the spec in tests/test_common_models.py."""

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from hf_vlp.modeling.filip.late_interaction import late_interaction_loss, late_interaction_similarity, select_tokens

# ------------------------------------------------------------------------------------------------------------------
# naive references (explicit loops over examples and tokens)
# ------------------------------------------------------------------------------------------------------------------


def naive_similarity(queries, keys, query_mask, key_mask):
    """s[q, k] = mean over q's real tokens of the max over k's real tokens of the inner product."""
    result = torch.zeros(len(queries), len(keys), dtype=torch.float64)
    for q in range(len(queries)):
        for k in range(len(keys)):
            maxima = []
            for a in range(queries.shape[1]):
                if not query_mask[q, a]:
                    continue
                maxima.append(max(float(queries[q, a] @ keys[k, b]) for b in range(keys.shape[1]) if key_mask[k, b]))
            result[q, k] = sum(maxima) / len(maxima)
    return result


def naive_loss(image_tokens, text_tokens, text_mask, scale):
    """Paper eq. 4-6 written out: InfoNCE over s^I for each image and over s^T for each text."""
    image, text = F.normalize(image_tokens.double(), dim=-1), F.normalize(text_tokens.double(), dim=-1)
    image_mask = torch.ones(image.shape[:2], dtype=torch.bool)
    s_image = naive_similarity(image, text, image_mask, text_mask)  # [image i, text j]
    s_text = naive_similarity(text, image, text_mask, image_mask)  # [text j, image i]
    targets = torch.arange(len(image))
    return (F.cross_entropy(scale * s_image, targets) + F.cross_entropy(scale * s_text, targets)) / 2


def random_tokens(n, length, dim=8, seed=0, min_real=1):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, length, dim, generator=generator)
    lengths = torch.randint(min_real, length + 1, (n,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return tokens, mask


# ------------------------------------------------------------------------------------------------------------------
# similarity, chunking, selection, memory bound
# ------------------------------------------------------------------------------------------------------------------


def test_similarity_equals_the_naive_loop_on_random_tensors():
    queries, query_mask = random_tokens(3, 5, seed=1)
    keys, key_mask = random_tokens(4, 6, seed=2)
    expected = naive_similarity(queries, keys, query_mask, key_mask)
    actual = late_interaction_similarity(queries, keys, query_mask, key_mask)
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5)
    # a padded token's value never matters
    queries[~query_mask], keys[~key_mask] = 1e6, 1e6
    torch.testing.assert_close(late_interaction_similarity(queries, keys, query_mask, key_mask), actual)


def test_image_to_text_and_text_to_image_similarities_are_different_functions():
    images, _ = random_tokens(3, 4, seed=3)
    texts, text_mask = random_tokens(3, 5, seed=4)
    per_image = late_interaction_similarity(images, texts, None, text_mask)
    per_text = late_interaction_similarity(texts, images, text_mask, None)
    assert not torch.allclose(per_image, per_text.t())


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
def test_chunked_similarity_and_loss_equal_unchunked_with_gradients(chunk_size):
    image, _ = random_tokens(5, 4, seed=5)
    text, text_mask = random_tokens(5, 6, seed=6)
    image.requires_grad_(True), text.requires_grad_(True)
    results = {}
    for chunk in (None, chunk_size):
        image.grad = text.grad = None
        loss = late_interaction_loss(image, text, 7.0, text_mask=text_mask, chunk_size=chunk, token_selection_ratio=0.5)
        loss.backward()
        similarity = late_interaction_similarity(image, text, None, text_mask, chunk_size=chunk)
        results[chunk] = (loss.detach(), similarity.detach(), image.grad.clone(), text.grad.clone())
    for unchunked, chunked in zip(results[None], results[chunk_size]):
        torch.testing.assert_close(chunked, unchunked, rtol=1e-6, atol=1e-6)


def test_loss_equals_the_paper_formula_written_as_loops():
    image, _ = random_tokens(4, 5, seed=7)
    text, text_mask = random_tokens(4, 6, seed=8)
    loss = late_interaction_loss(image, text, 5.0, text_mask=text_mask, token_selection_ratio=1.0)
    torch.testing.assert_close(loss.double(), naive_loss(image, text, text_mask, 5.0), rtol=1e-5, atol=1e-6)


def test_token_selection_keeps_the_tokens_with_the_highest_maximum_similarity():
    tokens, mask = random_tokens(3, 8, seed=9, min_real=3)
    other, other_mask = random_tokens(4, 5, seed=10)
    selected, selected_mask = select_tokens(tokens, mask, other, other_mask, ratio=0.25)
    for n in range(3):
        real = int(mask[n].sum())
        keep = max(1, math.ceil(0.25 * real))
        assert int(selected_mask[n].sum()) == keep
        # naive: each real token's best match over every real token of every other-modality sequence
        scores = [
            max(float(tokens[n, a] @ other[m, b]) for m in range(4) for b in range(5) if other_mask[m, b])
            for a in range(real)
        ]
        best = sorted(range(real), key=lambda a: -scores[a])[:keep]
        torch.testing.assert_close(selected[n, :keep], tokens[n, best])
    same, same_mask = select_tokens(tokens, mask, other, other_mask, ratio=1.0)
    assert same is tokens and torch.equal(same_mask, mask)


def test_a_rank_never_holds_more_than_one_chunk_block(monkeypatch):
    """Every similarity block the loss builds (forward and backward) is at most (local batch, chunk, N_img, N_txt)."""
    largest = []
    einsum = torch.einsum

    def spy(equation, *operands):
        out = einsum(equation, *operands)
        largest.append(out.numel())
        return out

    monkeypatch.setattr(torch, "einsum", spy)
    image, _ = random_tokens(12, 9, seed=11)
    text, text_mask = random_tokens(12, 7, seed=12)
    image.requires_grad_(True)
    late_interaction_loss(image, text, 10.0, text_mask=text_mask, chunk_size=3, token_selection_ratio=1.0).backward()
    assert max(largest) <= 12 * 3 * 9 * 7, max(largest)
    assert max(largest) < 12 * 12 * 9 * 7  # the unchunked block was never built


def test_inputs_with_an_all_padding_text_are_refused():
    image, _ = random_tokens(2, 3)
    text, text_mask = random_tokens(2, 4)
    text_mask[1] = False
    with pytest.raises(ValueError, match="example 1 has no unmasked token"):
        late_interaction_loss(image, text, 1.0, text_mask=text_mask)
    with pytest.raises(ValueError, match="pairs image i with text i"):
        late_interaction_loss(image, text[:1], 1.0)


# ------------------------------------------------------------------------------------------------------------------
# DDP: 2 gloo processes = 1 process on the global batch
# ------------------------------------------------------------------------------------------------------------------


class TokenTowers(torch.nn.Module):
    """A toy token-level dual encoder: one linear layer per modality and CLIP's learnable log-temperature."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Linear(6, 4)
        self.text = torch.nn.Linear(5, 4)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, images, texts, text_mask, ratio):
        return late_interaction_loss(
            self.image(images),
            self.text(texts),
            self.logit_scale.exp(),
            text_mask=text_mask,
            token_selection_ratio=ratio,
            chunk_size=2,
        )


def global_batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(7, 5, 6, generator=generator)
    texts = torch.randn(7, 6, 5, generator=generator)
    lengths = torch.tensor([2, 4, 3, 4, 6, 5, 2])
    return images, texts, torch.arange(6)[None, :] < lengths[:, None]


# rank 0 gets 4 examples with at most 4 real tokens (its texts are cut to 4 positions), rank 1 gets 3 with up to 6:
# uneven batches and uneven text lengths must still give the global loss
SPLITS = [(0, 4, 4), (4, 7, 6)]
RATIOS = (1.0, 0.5)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank, world_size, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        for ratio in RATIOS:
            model = torch.nn.parallel.DistributedDataParallel(TokenTowers())
            images, texts, mask = global_batch()
            start, end, length = SPLITS[rank]
            loss = model(images[start:end], texts[start:end, :length], mask[start:end, :length], ratio)
            loss.backward()
            mean_loss = loss.detach().clone()
            torch.distributed.all_reduce(mean_loss)
            mean_loss /= world_size
            grads = {name: p.grad.clone() for name, p in model.module.named_parameters()}
            results[(rank, ratio)] = (mean_loss, grads)
    finally:
        torch.distributed.destroy_process_group()


def one_process_loss(model, ratio):
    """The loss of one process on all 7 pairs. With token selection, each rank chooses its tokens against its own
    batch (the paper selects "in the same local worker"), so the reference selects per shard, then scores the
    concatenation on all tokens it kept."""
    images, texts, mask = global_batch()
    if ratio == 1.0:
        return model(images, texts, mask, ratio)
    image_parts, text_parts, mask_parts = [], [], []
    for start, end, length in SPLITS:
        image = F.normalize(model.image(images[start:end]), dim=-1)
        text = F.normalize(model.text(texts[start:end, :length]), dim=-1)
        text_mask = mask[start:end, :length]
        image_ones = torch.ones(image.shape[:2], dtype=torch.bool)
        image_parts.append(select_tokens(image, image_ones, text, text_mask, ratio)[0])
        selected_text, selected_mask = select_tokens(text, text_mask, image, image_ones, ratio)
        text_parts.append(F.pad(selected_text, (0, 0, 0, 6 - selected_text.shape[1])))
        mask_parts.append(F.pad(selected_mask, (0, 6 - selected_mask.shape[1])))
    return late_interaction_loss(
        torch.cat(image_parts),
        torch.cat(text_parts),
        model.logit_scale.exp(),
        text_mask=torch.cat(mask_parts),
        token_selection_ratio=1.0,
        normalize=False,
    )


def test_two_process_ddp_equals_one_process_global_batch():
    """Mean of the per-rank losses and the DDP-averaged gradients (4 + 3 examples, texts padded to 4 and 6 tokens)
    equal the one-process loss and gradients on all 7 pairs, without and with token selection."""
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), results), nprocs=2, join=True)
    for ratio in RATIOS:
        model = TokenTowers()
        loss = one_process_loss(model, ratio)
        loss.backward()
        for rank in range(2):
            mean_loss, grads = results[(rank, ratio)]
            torch.testing.assert_close(mean_loss, loss.detach(), rtol=1e-6, atol=1e-6)
            for name, param in model.named_parameters():
                torch.testing.assert_close(
                    grads[name], param.grad, rtol=1e-5, atol=1e-6, msg=f"rank {rank} ratio {ratio} grad {name}"
                )


# ------------------------------------------------------------------------------------------------------------------
# the model and its heads
# ------------------------------------------------------------------------------------------------------------------


def tiny(task="pretraining", **overrides):
    import hf_vlp
    from hf_vlp.recipes import build_config

    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = build_config(
        "filip",
        sizes=dict(text_config=sizes, vision_config=dict(sizes, image_size=32, patch_size=8), projection_dim=16),
        **overrides,
    )
    torch.manual_seed(0)
    spec = hf_vlp.get_spec("filip")
    return spec.model_class(task)(config), spec


def test_model_logits_are_the_late_interaction_of_its_token_embeddings():
    model, spec = tiny()
    inputs = spec.example_inputs_for(model.config, "pretraining", batch_size=3, text_length=7)
    with torch.no_grad():
        out = model.eval()(**inputs)
    mask = inputs["attention_mask"].bool()
    images = out.image_token_embeds
    assert images.shape[1] == (32 // 8) ** 2  # the patches, without the CLS token
    ones = torch.ones(images.shape[:2], dtype=torch.bool)
    scale = model.logit_scale.exp()
    expected_image = scale * naive_similarity(images, out.text_token_embeds, ones, mask).float()
    expected_text = scale * naive_similarity(out.text_token_embeds, images, mask, ones).float()
    torch.testing.assert_close(out.logits_per_image, expected_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits_per_text, expected_text, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.global_logits_per_text, scale * out.text_embeds @ out.image_embeds.t())
    torch.testing.assert_close(out.image_token_embeds.norm(dim=-1), torch.ones(images.shape[:2]))


@pytest.mark.parametrize("task", ["pretraining", "retrieval"])
def test_losses_fall_on_a_tiny_batch(task):
    model, spec = tiny(task)
    inputs = spec.example_inputs_for(model.config, task, batch_size=4, text_length=7, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for _ in range(25):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_auto_classes_and_the_processor_round_trip(tmp_path):
    import transformers
    from transformers import CLIPImageProcessorPil

    from hf_vlp.modeling.filip import FilipForImageTextRetrieval, FilipModel, FilipProcessor
    from hf_vlp.recipes import shapes_tokenizer

    model, _ = tiny()
    model.save_pretrained(tmp_path)
    assert type(transformers.AutoConfig.from_pretrained(tmp_path)).__name__ == "FilipConfig"
    assert type(transformers.AutoModel.from_pretrained(tmp_path)) is FilipModel
    assert type(transformers.AutoModelForPreTraining.from_pretrained(tmp_path)) is FilipModel
    zero_shot = transformers.AutoModelForZeroShotImageClassification.from_pretrained(tmp_path)
    assert type(zero_shot) is FilipForImageTextRetrieval

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = FilipProcessor(image_processor=image_processor, tokenizer=shapes_tokenizer(num_images=20))
    processor.save_pretrained(tmp_path)
    reloaded = transformers.AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is FilipProcessor
    from PIL import Image

    batch = reloaded(images=[Image.new("RGB", (40, 32), "red")], text=["a red circle"], padding=True)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}  # exactly the model's inputs
    assert batch["pixel_values"].shape == (1, 3, 32, 32)


def test_zero_shot_logits_average_the_image_to_text_logits_over_each_class_templates():
    from hf_vlp.modeling.filip import FilipProcessor

    texts = FilipProcessor.prompt_texts(["circle", "square"], ["a {}.", "a photo of a {}.", "{}"])
    assert texts == ["a circle.", "a photo of a circle.", "circle", "a square.", "a photo of a square.", "square"]
    with pytest.raises(ValueError, match="templates"):
        FilipProcessor.prompt_texts(["circle"], ["no placeholder"])
    model, spec = tiny("retrieval")
    images = spec.example_inputs_for(model.config, "retrieval", batch_size=2)["pixel_values"]
    prompts = spec.example_inputs_for(model.config, "retrieval", batch_size=6, text_length=7, seed=1)
    model.eval()
    scores = model.zero_shot_logits(images, prompts["input_ids"], prompts["attention_mask"], num_templates=3)
    with torch.no_grad():
        full = model(input_ids=prompts["input_ids"], pixel_values=images, attention_mask=prompts["attention_mask"])
    assert full.logits_per_image.shape == (2, 6) and scores.shape == (2, 2)
    torch.testing.assert_close(scores, full.logits_per_image.reshape(2, 2, 3).mean(-1))


def test_zero_shot_pipeline_runs_on_the_retrieval_head(tmp_path):
    from PIL import Image
    from transformers import CLIPImageProcessorPil, pipeline

    from hf_vlp.recipes import shapes_tokenizer

    tokenizer = shapes_tokenizer(num_images=20)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # a BERT tokenizer's segments: CLIP has none
    model, _ = tiny("retrieval")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    classifier = pipeline(
        "zero-shot-image-classification", model=model.eval(), tokenizer=tokenizer, image_processor=image_processor
    )
    result = classifier(Image.new("RGB", (32, 32), "blue"), candidate_labels=["circle", "square", "cross"])
    assert sorted(r["label"] for r in result) == ["circle", "cross", "square"]
    assert abs(sum(r["score"] for r in result) - 1) < 1e-5


def test_lora_preset_adapts_both_towers_and_trains_them():
    from peft import LoraConfig, get_peft_model

    model, spec = tiny()
    inputs = spec.example_inputs_for(model.config, "pretraining", batch_size=3, text_length=7)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=spec.lora_target_modules))
    lora = {name: p for name, p in peft_model.named_parameters() if "lora_B" in name}
    towers = {tower for tower in ("vision_model", "text_model") if any(f".{tower}." in name for name in lora)}
    assert towers == {"vision_model", "text_model"}
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == {name for name in dict(peft_model.named_parameters()) if "lora_" in name}
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        peft_model(**inputs).loss.backward()
        optimizer.step()
    moved = {tower for tower in towers for name, p in lora.items() if f".{tower}." in name and p.abs().sum() > 0}
    assert moved == {"vision_model", "text_model"}


def test_bad_input_is_a_value_error_naming_the_argument():
    model, spec = tiny()
    inputs = spec.example_inputs_for(model.config, "pretraining", batch_size=3, text_length=7)
    with pytest.raises(ValueError, match="pixel_values has 2 images but input_ids has 3 texts"):
        model(**{**inputs, "pixel_values": inputs["pixel_values"][:2]})
    # scoring every image against every text needs no pairing
    out = model(**{**inputs, "pixel_values": inputs["pixel_values"][:2]}, return_loss=False)
    assert out.logits_per_image.shape == (2, 3) and out.logits_per_text.shape == (3, 2)
    padded = inputs["attention_mask"].clone()
    padded[1] = 0
    with pytest.raises(ValueError, match="no unmasked token"):
        model(**{**inputs, "attention_mask": padded})
    with pytest.raises(ValueError, match="attention_mask"):
        model(**{**inputs, "attention_mask": inputs["attention_mask"][:, :3]})
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=inputs["pixel_values"])
    retrieval, _ = tiny("retrieval")
    with pytest.raises(ValueError, match="labels"):
        retrieval(**{**inputs, "labels": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="labels"):
        retrieval(**{**inputs, "labels": torch.tensor([0.0, 1.0, 2.0])})
    with pytest.raises(ValueError, match="token_selection_ratio"):
        tiny(token_selection_ratio=1.5)


def test_retrieval_throughput_times_both_scorers_on_one_gallery():
    from hf_vlp.modeling.filip.retrieval_bench import retrieval_throughput

    result = retrieval_throughput(
        gallery_size=50, patches=4, filip_dim=8, clip_dim=8, query_batch=3, chunk_size=16, repeats=1, device="cpu"
    )
    assert result["filip_queries_per_s"] > 0 and result["clip_queries_per_s"] > 0
    assert result["filip_over_clip"] == pytest.approx(result["filip_queries_per_s"] / result["clip_queries_per_s"])
    assert result["filip_gallery_mib"] == pytest.approx(4 * result["clip_gallery_mib"])  # 4 patches vs 1 vector
