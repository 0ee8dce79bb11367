"""SOHO: parity with the original on every fixture output, the original's mask quirk behind its switch, the visual
dictionary (nearest entry, straight-through gradient, moving averages only in training), masked visual modelling,
losses that fall, bad inputs, the converter's layouts and the processor. Sizes are read from the fixture folders,
config and checkpoints, never written here."""

import copy
import math

import pytest
import torch
from conftest import fixture_dir
from safetensors.torch import load_file

from hf_vlp.conversion import common
from hf_vlp.conversion import soho as soho_conversion
from hf_vlp.modeling.soho import (
    SohoConfig,
    SohoForPreTraining,
    SohoForVisualQuestionAnswering,
    SohoImageProcessor,
    SohoModel,
    SohoProcessor,
    SohoVisualDictionary,
    SohoVisualEmbeddings,
)
from hf_vlp.modeling.soho.inputs_soho import example_inputs
from hf_vlp.modeling.soho.modeling_soho import _grid_mask

TINY = dict(
    vocab_size=40,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=16,
    backbone_stem_channels=8,
    backbone_base_channels=8,
    num_visual_tokens=12,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    vqa_dropout=0.0,
    num_labels=5,
    initializer_range=0.1,
)


def _folders():
    root = fixture_dir("soho")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.pth")))
    assert folders, f"no checkpoint folders under {root}"
    return folders


def _convert(folder, **options):
    (checkpoint,) = sorted(folder.glob("*.pth"))
    config = folder / "config.json"
    return soho_conversion.convert(checkpoint, config if config.exists() else None, **options)


# ------------------------------------------------------------------------------------------------------------------
# parity with the original
# ------------------------------------------------------------------------------------------------------------------


def test_every_fixture_output_of_every_folder_verifies():
    for folder in _folders():
        model = _convert(folder)
        lines = []
        report = common.verify(soho_conversion, model, folder, print_fn=lines.append)
        assert report.passed, "\n".join(lines)
        reference = load_file(folder / "outputs.safetensors")
        verified = {line.split(":")[0] for line in lines if line.endswith(" ok")}
        assert verified == set(reference), (folder.name, sorted(set(reference) - verified))


def test_the_square_canvas_switch_is_what_the_fixtures_verify():
    """Where the original's square canvas marks other grid positions than the real image extent, the converted model
    verifies only with `square_mask_canvas=True` (the default)."""
    exercised = 0
    for folder in _folders():
        model = _convert(folder)
        _, kwargs = soho_conversion.fixture_inputs(folder)
        reference = load_file(folder / "outputs.safetensors")["visual_attention"]
        model.config.square_mask_canvas = False
        with torch.no_grad():
            plain = soho_conversion.fixture_outputs(model, folder)
        if torch.equal(plain["visual_attention"], reference):
            continue  # this fixture's geometry does not tell the two apart
        exercised += 1
        lines = []
        assert not common.verify(soho_conversion, model, folder, print_fn=lines.append).passed
        assert any(line.startswith("visual_attention:") and "FAIL" in line for line in lines)
    assert exercised, "no fixture folder exercises the mask quirk (README: the pretrain set does)"


def test_square_canvas_mask_reproduces_the_original_geometry():
    # a 96 x 256 padded batch whose image is 60 x 100: the original paints [:60, :100] on a 96 x 96 canvas
    pixel_mask = torch.zeros(1, 96, 256)
    pixel_mask[0, :60, :100] = 1
    pixel_values = torch.zeros(1, 3, 96, 256)
    grid = (3, 8)
    square = _grid_mask(pixel_mask, pixel_values, grid, square_canvas=True)
    plain = _grid_mask(pixel_mask, pixel_values, grid, square_canvas=False)
    # nearest resizing reads source row floor(i * in / out) and column floor(j * in / out)
    rows = [math.floor(i * 96 / 3) < 60 for i in range(3)]
    square_cols = [math.floor(j * 96 / 8) < 100 for j in range(8)]  # the canvas is 96 wide: every column is inside
    plain_cols = [math.floor(j * 256 / 8) < 100 for j in range(8)]
    assert square[0].tolist() == [[r and c for c in square_cols] for r in rows]
    assert plain[0].tolist() == [[r and c for c in plain_cols] for r in rows]
    assert not torch.equal(square, plain)


# ------------------------------------------------------------------------------------------------------------------
# the visual dictionary
# ------------------------------------------------------------------------------------------------------------------


def test_dictionary_returns_the_nearest_entry_with_a_straight_through_gradient():
    torch.manual_seed(0)
    dictionary = SohoVisualDictionary(num_tokens=7, dim=4, decay=0.5).eval()
    features = torch.randn(10, 4, requires_grad=True)
    quantized, indices = dictionary(features)
    expected = torch.cdist(features.detach(), dictionary.embed).argmin(1)
    assert torch.equal(indices, expected)
    torch.testing.assert_close(quantized.detach(), dictionary.embed[expected])
    weights = torch.randn(10, 4)
    (quantized * weights).sum().backward()
    torch.testing.assert_close(features.grad, weights)  # identity gradient through the lookup


def test_dictionary_moving_average_step_matches_its_definition():
    torch.manual_seed(0)
    decay, tokens = 0.4, 5
    dictionary = SohoVisualDictionary(num_tokens=tokens, dim=3, decay=decay).train()
    dictionary.cluster_size.uniform_(0, 2)
    dictionary.embed_avg.normal_()
    before = copy.deepcopy(dictionary.state_dict())
    features = torch.randn(9, 3)
    quantized, indices = dictionary(features)
    one_hot = torch.nn.functional.one_hot(indices, tokens).float()
    counts, sums = one_hot.sum(0), one_hot.t() @ features
    size = decay * before["cluster_size"] + (1 - decay) * counts
    average = decay * before["embed_avg"] + (1 - decay) * sums
    smoothed = (size + 1e-5) / (size.sum() + tokens * 1e-5) * size.sum()
    torch.testing.assert_close(dictionary.cluster_size, size)
    torch.testing.assert_close(dictionary.cluster_sum, before["cluster_sum"] + counts)
    torch.testing.assert_close(dictionary.embed_avg, average)
    torch.testing.assert_close(dictionary.embed, average / smoothed[:, None])
    # indices come from the table before the step; the returned entries from the table after it
    assert torch.equal(indices, torch.cdist(features, before["embed"]).argmin(1))
    torch.testing.assert_close(quantized, dictionary.embed[indices])


def test_dictionary_updates_only_in_training_mode():
    torch.manual_seed(0)
    model = SohoForPreTraining(SohoConfig(**TINY))
    inputs = example_inputs(model.config, "pretraining")
    buffers = lambda: {k: v.clone() for k, v in model.soho.visual_embeddings.dictionary.named_buffers()}  # noqa: E731
    initial = buffers()
    model.eval()
    with torch.no_grad():
        model(**inputs)
    assert all(torch.equal(initial[k], v) for k, v in buffers().items()), "eval mode changed the dictionary"
    model.train()
    with torch.no_grad():
        model(**inputs)
    changed = buffers()
    for name in ("embed", "cluster_size", "cluster_sum", "embed_avg"):
        assert not torch.equal(initial[name], changed[name]), f"training did not update {name}"
    # every grid position of every caption row is counted once
    visual = model.soho(**{k: inputs[k] for k in ("input_ids", "pixel_values", "pixel_mask")}).visual_tokens
    assert changed["cluster_sum"].sum() == visual.shape[0] * visual.shape[1]


def test_visual_mask_sample_masks_every_real_position_sharing_the_picked_index():
    torch.manual_seed(3)
    token_ids = torch.randint(0, 3, (6, 8))
    valid = torch.ones(6, 8, dtype=torch.bool)
    valid[-1, 5:] = False
    masked = SohoVisualEmbeddings.sample_visual_mask(token_ids, valid, mask_prob=1.0)
    assert masked.any() and not masked[~valid].any()
    for row in range(6):
        picked = token_ids[row, masked[row]].unique()
        assert len(picked) <= 1
        if len(picked):  # every real position with that index, and no other
            assert torch.equal(masked[row], (token_ids[row] == picked) & valid[row])
    assert SohoVisualEmbeddings.sample_visual_mask(token_ids, valid, mask_prob=0.0) is None


# ------------------------------------------------------------------------------------------------------------------
# objectives
# ------------------------------------------------------------------------------------------------------------------


def _train(model, inputs, steps=25, lr=2e-3):
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        output = model(**inputs)
        output.loss.backward()
        optimizer.step()
        losses.append(output)
    return losses


def test_pretraining_losses_fall_on_a_tiny_batch():
    torch.manual_seed(0)
    model = SohoForPreTraining(SohoConfig(**TINY, visual_mask_prob=1.0))
    inputs = example_inputs(model.config, "pretraining", batch_size=4, text_length=8)
    outputs = _train(model, inputs)
    first, last = outputs[0], outputs[-1]
    assert last.mlm_loss < 0.5 * first.mlm_loss, (first.mlm_loss, last.mlm_loss)
    assert last.itm_loss < 0.5 * first.itm_loss, (first.itm_loss, last.itm_loss)
    mvm = [o.mvm_loss.item() for o in outputs if (o.mvm_labels != -100).any()]
    assert len(mvm) > 3 and all(math.isfinite(v) for v in mvm)  # masked visual modelling ran and was scored
    assert last.loss < first.loss


def test_vqa_loss_falls_on_a_tiny_batch():
    torch.manual_seed(0)
    model = SohoForVisualQuestionAnswering(SohoConfig(**TINY))
    assert model.soho.visual_embeddings.dictionary is None  # the original's VQA neck
    inputs = example_inputs(model.config, "vqa", batch_size=4)
    outputs = _train(model, inputs)
    assert outputs[-1].loss < 0.5 * outputs[0].loss, (outputs[0].loss, outputs[-1].loss)


def test_captions_share_their_image_in_image_major_order():
    torch.manual_seed(0)
    model = SohoForPreTraining(SohoConfig(**TINY)).eval()
    inputs = example_inputs(model.config, "base", batch_size=2, text_length=6)
    repeated = {
        "input_ids": inputs["input_ids"].repeat_interleave(3, 0),
        "attention_mask": inputs["attention_mask"].repeat_interleave(3, 0),
        "pixel_values": inputs["pixel_values"],
        "pixel_mask": inputs["pixel_mask"],
    }
    with torch.no_grad():
        once = model(**inputs).itm_logits
        thrice = model(**repeated).itm_logits
    torch.testing.assert_close(thrice, once.repeat_interleave(3, 0), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------------


def test_bad_inputs_are_value_errors_naming_the_argument():
    model = SohoModel(SohoConfig(**TINY)).eval()
    inputs = example_inputs(model.config, "base")
    mask = inputs["pixel_mask"]
    cases = [
        ({"pixel_mask": mask[:, :-8]}, "pixel_mask"),  # not the image's height and width
        ({"pixel_mask": mask[:1]}, "pixel_mask"),  # not one per image
        ({"input_ids": inputs["input_ids"][:1].repeat(3, 1), "attention_mask": None}, "input_ids"),  # 3 rows, 2 images
        ({"attention_mask": inputs["attention_mask"][:, :-1]}, "attention_mask"),
        ({"pixel_values": inputs["pixel_values"][..., :32]}, "pixel_values"),  # under the stride-64 grid
    ]
    for change, argument in cases:
        with pytest.raises(ValueError, match=argument), torch.no_grad():
            model(**{**inputs, **change})
    pretraining = SohoForPreTraining(SohoConfig(**TINY)).eval()
    inputs = example_inputs(pretraining.config, "pretraining")
    for change, argument in [
        ({"labels": inputs["labels"][:, :-1]}, "labels"),
        ({"itm_labels": inputs["itm_labels"][:1]}, "itm_labels"),
    ]:
        with pytest.raises(ValueError, match=argument), torch.no_grad():
            pretraining(**{**inputs, **change})
    for config in (dict(hidden_size=30), dict(backbone_block="wide"), dict(visual_mask_prob=2.0)):
        with pytest.raises(ValueError, match=next(iter(config))):
            SohoConfig(**{**TINY, **config})


# ------------------------------------------------------------------------------------------------------------------
# converter
# ------------------------------------------------------------------------------------------------------------------


def test_converter_reads_only_the_state_dict_and_refuses_what_does_not_fit(tmp_path):
    for folder in _folders():
        (checkpoint,) = sorted(folder.glob("*.pth"))
        original = torch.load(checkpoint, weights_only=False)
        # a released file also carries optimizer and amp state: never read
        extended = tmp_path / f"{folder.name}_with_optimizer.pth"
        torch.save({**original, "optimizer": {"state": {}, "param_groups": []}, "amp": {"loss_scaler0": 1.0}}, extended)
        model = soho_conversion.convert(extended, folder / "config.json")
        reference = _convert(folder)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
        unknown = tmp_path / f"{folder.name}_unknown.pth"
        torch.save({**original, "state_dict": {**original["state_dict"], "neck.extra.weight": torch.zeros(1)}}, unknown)
        with pytest.raises(common.ConversionError, match="neck.extra.weight"):
            soho_conversion.convert(unknown, folder / "config.json")
        pretraining = "neck.vq.embed" in original["state_dict"]
        assert isinstance(model, SohoForPreTraining if pretraining else SohoForVisualQuestionAnswering)
        if not pretraining:
            with pytest.raises(common.ConversionError, match="task='vqa'"):
                soho_conversion.convert(checkpoint, task="pretraining")
        base = soho_conversion.convert(checkpoint, folder / "config.json", task="base")
        assert isinstance(base, SohoModel)
    with pytest.raises(ValueError, match="unknown option"):
        soho_conversion.convert(checkpoint, bogus=1)


def test_pretraining_checkpoint_starts_vqa_fine_tuning_like_the_original():
    for folder in _folders():
        (checkpoint,) = sorted(folder.glob("*.pth"))
        if "neck.vq.embed" not in torch.load(checkpoint, weights_only=False)["state_dict"]:
            continue
        pretrained = _convert(folder)
        vqa = soho_conversion.convert(checkpoint, folder / "config.json", task="vqa")
        assert vqa.soho.visual_embeddings.dictionary is None
        for name, value in vqa.soho.backbone.state_dict().items():
            assert torch.equal(value, pretrained.soho.backbone.state_dict()[name]), name
        lines = []
        report = common.verify(soho_conversion, vqa, folder, print_fn=lines.append)
        assert report.passed, "\n".join(lines)  # backbone and mask outputs compared, the other neck's skipped
        return
    pytest.skip("no pretraining-layout checkpoint in the fixture root")


def test_cli_converts_verifies_and_saves(tmp_path):
    from hf_vlp.cli import main

    folder = _folders()[0]
    (checkpoint,) = sorted(folder.glob("*.pth"))
    output = tmp_path / "converted"
    code = main(
        ["convert", "soho", "--checkpoint", str(checkpoint), "--config", str(folder / "config.json"),
         "--verify", str(folder), "--output", str(output)]
    )  # fmt: skip
    assert code in (0, None)
    reloaded = type(_convert(folder)).from_pretrained(output)
    assert common.verify(soho_conversion, reloaded, folder, print_fn=lambda line: None).passed


# ------------------------------------------------------------------------------------------------------------------
# processor
# ------------------------------------------------------------------------------------------------------------------


def test_image_processor_resizes_normalizes_and_pads_like_the_original():
    from PIL import Image

    processor = SohoImageProcessor(size={"shortest_edge": 60, "longest_edge": 100}, size_divisor=32)
    wide = Image.new("RGB", (300, 120), (123, 116, 104))  # w x h: long side 300 -> 100, short 120 -> 40
    tall = Image.new("RGB", (50, 60), (0, 0, 0))  # short 50 -> 60 would make 72 long; min scale = 60 / 50
    batch = processor([wide, tall])
    assert processor.resized_shape(120, 300) == (40, 100)
    assert processor.resized_shape(60, 50) == (72, 60)
    pixel_values, pixel_mask = batch["pixel_values"], batch["pixel_mask"]
    assert pixel_values.shape == (2, 3, 96, 128) and pixel_mask.shape == (2, 96, 128)
    assert pixel_mask[0].sum() == 40 * 100 and pixel_mask[0, :40, :100].all()
    assert pixel_mask[1].sum() == 72 * 60 and pixel_mask[1, :72, :60].all()
    assert (pixel_values[pixel_mask[:, None].expand_as(pixel_values) == 0] == 0).all()
    expected = (torch.tensor([123.0, 116.0, 104.0]) - torch.tensor(processor.image_mean)) / torch.tensor(
        processor.image_std
    )
    torch.testing.assert_close(pixel_values[0, :, 10, 10], expected)
    with pytest.raises(ValueError, match=r"images\[0\]"):
        processor([torch.full((3, 8, 8), float("nan"))])


def test_processor_round_trip_and_caption_count(tmp_path, bert_tokenizer):
    from PIL import Image

    processor = SohoProcessor(SohoImageProcessor(), bert_tokenizer)
    images = [Image.new("RGB", (80, 64)), Image.new("RGB", (64, 64))]
    batch = processor(images=images, text=["a red circle", "a cube", "two blue squares", "nothing"])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask"}
    assert batch["input_ids"].shape[0] == 4 and batch["pixel_values"].shape[0] == 2
    with pytest.raises(ValueError, match="captions for every image"):
        processor(images=images, text=["one", "two", "three"])
    processor.save_pretrained(tmp_path)
    reloaded = SohoProcessor.from_pretrained(tmp_path)
    again = reloaded(images=images, text=["a red circle", "a cube", "two blue squares", "nothing"])
    assert all(torch.equal(batch[k], again[k]) for k in batch)
