"""The bottom-up-attention detector: parity with the original (both checkpoint layouts, every fixture output, the
preprocessing from the PNG files), NMS / RoIPool against straightforward loops, batched = one-by-one extraction,
the selection rules, Auto classes, and bad input.

Sizes, runs and image names are read from the fixture folder, so another fixture root passes unchanged.
"""

import json
import pickle
import re

import numpy as np
import pytest
import torch
from conftest import fixture_dir
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.conversion import bottom_up as conversion
from hf_vlp.conversion import common
from hf_vlp.modeling.bottom_up import BottomUpConfig, BottomUpDetector, BottomUpImageProcessor, box_ops
from hf_vlp.modeling.bottom_up.bench_bottom_up import benchmark_extraction

# shared/fixtures/frcnn/README.md, "How the weights were made": suggested tolerances
BOX_ATOL = 0.02
NORMALIZED_BOX_ATOL = 1e-4
FEATURE_ATOL, FEATURE_RTOL = 1e-3, 1e-3
EXACT = ("obj_ids", "attr_ids", "keep", "preds_per_image", "sizes")


@pytest.fixture(scope="module")
def frcnn():
    return fixture_dir("frcnn")


@pytest.fixture(scope="module")
def detector(frcnn):
    return conversion.convert(frcnn / "pytorch_model.bin", frcnn / "config.yaml")


def _check_output(name, ours, expected):
    assert ours.shape == expected.shape, name
    if name.rpartition(".")[2] in EXACT:
        assert torch.equal(ours.to(expected.dtype), expected), name
    elif name.endswith(".boxes") or name.endswith(".proposals") or name.endswith(".anchors"):
        assert (ours - expected).abs().max() <= BOX_ATOL, name
    elif "normalized_boxes" in name:
        assert (ours - expected).abs().max() <= NORMALIZED_BOX_ATOL, name
    else:
        assert torch.allclose(ours.float(), expected, atol=FEATURE_ATOL, rtol=FEATURE_RTOL), name


# ------------------------------------------------------------------------------------------------------------------
# parity with the original
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["hub", "detectron2_pickle"])
def test_every_fixture_output_matches_the_original(frcnn, layout):
    checkpoint = frcnn / "pytorch_model.bin" if layout == "hub" else next(frcnn.glob("*.pkl"))
    model = conversion.convert(checkpoint, frcnn / "config.yaml")
    reference = load_file(frcnn / "outputs.safetensors")
    with torch.no_grad():
        ours = conversion.fixture_outputs(model, frcnn)
    assert set(reference) <= set(ours), sorted(set(reference) - set(ours))
    for name, expected in reference.items():
        _check_output(name, ours[name], expected)
    report = common.verify(conversion, model, frcnn, print_fn=lambda line: None)
    assert report.passed and len(report.compared) == len(reference)


def test_sizes_come_from_the_checkpoint_and_config(frcnn, detector):
    config = detector.config
    original = conversion.read_original_config(frcnn / "config.yaml")
    with safe_open(frcnn / "outputs.safetensors", "pt") as handle:
        run = next(k for k in handle.keys() if k.endswith(".roi_features")).rpartition(".")[0]
        features = handle.get_slice(f"{run}.roi_features").get_shape()
    assert config.feature_dim == detector.feature_dim == features[-1]
    assert config.max_detections == original["max_detections"] == features[1]
    assert config.min_detections == original["min_detections"]
    assert config.num_classes == original["roi_heads"]["num_classes"]
    assert config.min_size == original["input"]["min_size_test"]


def test_image_processor_reproduces_the_original_preprocessing(frcnn, detector):
    inputs = load_file(frcnn / "inputs.safetensors")
    images = sorted({int(m.group(1)) for k in inputs if (m := re.match(r"image(\d+)\.raw_rgb_uint8$", k))})
    processor = detector.image_processor
    for run in conversion.fixture_runs(frcnn):
        single = re.fullmatch(r"single(\d+)", run)
        members = [int(single.group(1))] if single else images
        raw = [inputs[f"image{k}.raw_rgb_uint8"].numpy() for k in members]
        out = processor(raw)
        assert torch.equal(out["image_sizes"], inputs[f"{run}.sizes"])
        assert torch.equal(out["scales_yx"], inputs[f"{run}.scales_yx"])
        assert torch.allclose(out["pixel_values"], inputs[f"{run}.images"], atol=1e-4), run
        # the PNG files on disk decode to the same pixels (paths are accepted)
        pngs = [next(frcnn.glob(f"image{k}_*.png")) for k in members]
        assert torch.equal(processor(pngs)["pixel_values"], out["pixel_values"])


def test_extract_regions_from_image_files_equals_the_original_single_runs(frcnn, detector):
    reference = load_file(frcnn / "outputs.safetensors")
    for run in conversion.fixture_runs(frcnn):
        single = re.fullmatch(r"single(\d+)", run)
        if not single:
            continue
        (regions,) = detector.extract_regions([next(frcnn.glob(f"image{single.group(1)}_*.png"))])
        count = int(reference[f"{run}.preds_per_image"][0])
        assert torch.equal(regions["object_ids"], reference[f"{run}.obj_ids"][0, :count])
        assert torch.equal(regions["attribute_ids"], reference[f"{run}.attr_ids"][0, :count])
        assert (regions["boxes"] - reference[f"{run}.boxes"][0, :count]).abs().max() <= BOX_ATOL
        assert (
            regions["normalized_boxes"] - reference[f"{run}.normalized_boxes_per_image"][0, :count]
        ).abs().max() <= 1e-4
        assert torch.allclose(regions["features"], reference[f"{run}.roi_features"][0, :count], atol=1e-3, rtol=1e-3)
        assert regions["features"].dtype == torch.float32
        assert regions["class_probs"].shape == (count, detector.config.num_classes)
        assert torch.allclose(
            regions["class_probs"].max(-1).values, reference[f"{run}.obj_probs"][0, :count], atol=1e-3
        )


def test_batched_extraction_equals_one_by_one(frcnn, detector):
    pngs = sorted(frcnn.glob("image*_*.png"))
    images = [Image.open(p).convert("RGB") for p in pngs]
    images = images + [images[0].transpose(Image.FLIP_LEFT_RIGHT)]  # two images of one size share a batch
    together = detector.extract_regions(images, batch_size=4)
    for image, batched in zip(images, together):
        (alone,) = detector.extract_regions([image])
        assert torch.equal(batched["object_ids"], alone["object_ids"])
        assert torch.equal(batched["attribute_ids"], alone["attribute_ids"])
        assert torch.allclose(batched["boxes"], alone["boxes"], atol=1e-3)
        assert torch.allclose(batched["features"], alone["features"], atol=1e-4, rtol=1e-4)
        assert batched["image_size"] == alone["image_size"] == (image.height, image.width)


def test_normalized_boxes_are_per_image_unless_the_original_bug_is_asked_for(frcnn, detector):
    inputs = load_file(frcnn / "inputs.safetensors")
    run = next(r for r in conversion.fixture_runs(frcnn) if inputs[f"{r}.images"].shape[0] == 2)
    arguments = dict(
        pixel_values=inputs[f"{run}.images"], image_sizes=inputs[f"{run}.sizes"], scales_yx=inputs[f"{run}.scales_yx"]
    )
    correct = detector(**arguments)
    raw = inputs[f"{run}.sizes"].float() * inputs[f"{run}.scales_yx"]
    for image in range(2):
        count = int(correct.num_detections[image])
        expected = correct.boxes[image, :count] / raw[image, [1, 0, 1, 0]]
        assert torch.allclose(correct.normalized_boxes[image, :count], expected)
    detector.config.normalized_boxes_batch_bug = True
    try:
        buggy = detector(**arguments)
    finally:
        detector.config.normalized_boxes_batch_bug = False
    # x1 of every image by image 0's width, x2 by image 1's width
    assert torch.allclose(buggy.normalized_boxes[1, :, 0], correct.boxes[1, :, 0] / raw[0, 1])
    assert torch.allclose(buggy.normalized_boxes[0, :, 2], correct.boxes[0, :, 2] / raw[1, 1])


# ------------------------------------------------------------------------------------------------------------------
# the selection rules
# ------------------------------------------------------------------------------------------------------------------


def _single_run(frcnn):
    inputs = load_file(frcnn / "inputs.safetensors")
    run = next(r for r in conversion.fixture_runs(frcnn) if inputs[f"{r}.images"].shape[0] == 1)
    return dict(
        pixel_values=inputs[f"{run}.images"], image_sizes=inputs[f"{run}.sizes"], scales_yx=inputs[f"{run}.scales_yx"]
    )


def test_threshold_retry_and_detection_counts(frcnn, detector):
    config = detector.config
    saved = (config.nms_thresholds, config.min_detections, config.max_detections)
    try:
        out = detector(**_single_run(frcnn), output_intermediates=True)
        proposals = int(out.num_proposals[0])
        # no threshold leaves as many boxes as there are proposals + 1: the last threshold's result is used
        config.min_detections = config.max_detections = proposals + 1
        starved = detector(**_single_run(frcnn))
        assert float(starved.nms_threshold[0]) == pytest.approx(config.nms_thresholds[-1])
        assert int(starved.num_detections[0]) <= proposals
        assert (
            starved.boxes.shape[1] == proposals + 1 and (starved.boxes[0, int(starved.num_detections[0]) :] == 0).all()
        )
        # a threshold of 1.0 suppresses nothing: every proposal survives, the first max_detections are kept
        config.nms_thresholds, config.min_detections, config.max_detections = [1.0], 1, 3
        everything = detector(**_single_run(frcnn))
        assert int(everything.num_detections[0]) == 3
        order = torch.sort(_fg_max(out), descending=True, stable=True).indices[:3]
        assert torch.equal(everything.proposal_index[0], order)
    finally:
        config.nms_thresholds, config.min_detections, config.max_detections = saved


def _fg_max(out):
    count = int(out.num_proposals[0])
    return torch.softmax(out.object_logits[0, :count], -1)[:, :-1].max(-1).values


def test_features_belong_to_the_proposal_not_the_regressed_box(frcnn, detector):
    out = detector(**_single_run(frcnn), output_intermediates=True)
    count = int(out.num_detections[0])
    index = out.proposal_index[0, :count]
    assert torch.equal(out.features[0, :count], out.proposal_features[0, index])


def test_loop_path_gives_the_same_detections(frcnn, detector):
    arguments = _single_run(frcnn)
    fast = detector(**arguments)
    with detector.reference_loops():
        slow = detector(**arguments)
    assert torch.equal(fast.object_ids, slow.object_ids) and torch.equal(fast.proposal_index, slow.proposal_index)
    assert torch.equal(fast.features, slow.features)


# ------------------------------------------------------------------------------------------------------------------
# NMS and RoIPool against straightforward loops
# ------------------------------------------------------------------------------------------------------------------


def _random_boxes(generator, count, grid=8, integer=True):
    x1 = torch.randint(0, grid, (count,), generator=generator).float()
    y1 = torch.randint(0, grid, (count,), generator=generator).float()
    w = torch.randint(0, 5, (count,), generator=generator).float()  # zero-size boxes too
    h = torch.randint(0, 5, (count,), generator=generator).float()
    boxes = torch.stack([x1, y1, x1 + w, y1 + h], -1)
    if not integer:
        boxes = boxes + torch.rand(count, 4, generator=generator) * 0.5
    return boxes


@pytest.mark.parametrize("seed", range(6))
def test_nms_equals_the_greedy_loop_with_ties_and_exact_thresholds(seed):
    generator = torch.Generator().manual_seed(seed)
    boxes = torch.stack([_random_boxes(generator, 40, integer=seed % 2 == 0) for _ in range(3)])
    boxes[:, 5] = boxes[:, 4]  # identical boxes: IoU exactly 1
    valid = torch.rand(3, 40, generator=generator) > 0.15
    # small integer boxes give many IoUs exactly at 0.5, 1/3, 0.25 ...
    thresholds = [0.5, 1 / 3, 0.25, 0.0, 0.7]
    expected = box_ops.nms_keep_loop(boxes, valid, thresholds)
    for tile in (512, 7, 1):  # one tile, several, one box per tile
        assert torch.equal(box_ops.nms_keep(boxes, valid, thresholds, tile=tile), expected)
    assert torch.equal(box_ops.nms_keep(boxes, valid, 0.5), box_ops.nms_keep_loop(boxes, valid, 0.5))
    # with max_keep the first max_keep kept boxes are exact (the work may stop early)
    early = box_ops.nms_keep(boxes, valid, thresholds, max_keep=4, tile=5)
    rank = expected.cumsum(-1)
    assert torch.equal(early & (early.cumsum(-1) <= 4), expected & (rank <= 4))


def test_threshold_comparison_is_the_kernels_float_against_double():
    # the kernel compares a float32 IoU with a float64 threshold: float32(0.3) > 0.3 although they print alike
    for threshold in (0.3, 0.5, 0.7, 1 / 3, 0.6):
        below = box_ops._below_or_equal(threshold, torch.float32)
        near = torch.tensor(threshold, dtype=torch.float32)
        for value in (near, torch.nextafter(near, torch.tensor(1.0)), torch.nextafter(near, torch.tensor(0.0))):
            assert (float(value) > threshold) == bool(value > below)


def test_nms_suppresses_only_above_the_threshold():
    boxes = torch.tensor([[[0.0, 0.0, 4.0, 1.0], [0.0, 0.0, 2.0, 1.0], [10.0, 10.0, 11.0, 11.0]]])  # IoU(0, 1) = 0.5
    valid = torch.ones(1, 3, dtype=torch.bool)
    assert box_ops.nms_keep(boxes, valid, 0.5).tolist() == [[True, True, True]]
    assert box_ops.nms_keep(boxes, valid, 0.49).tolist() == [[True, False, True]]
    chain = torch.tensor([[[0.0, 0, 10, 10], [1.0, 0, 11, 10], [2.0, 0, 12, 10]]])  # 0 kills 1, so 2 survives at 0.7
    assert box_ops.nms_keep(chain, torch.ones(1, 3, dtype=torch.bool), 0.7).tolist() == [[True, False, True]]


def test_round_half_away_from_zero():
    values = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 14.5, 0.49999997, 2.4, -2.6])
    assert box_ops.round_half_away_from_zero(values).tolist() == [1, 2, 3, -1, -3, 15, 0, 2, -3]


@pytest.mark.parametrize("seed", range(4))
def test_roi_pool_equals_the_loop_kernel(seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 3, 9, 13, generator=generator)
    count = 30
    boxes = torch.rand(count, 4, generator=generator) * torch.tensor([230.0, 160.0, 230.0, 160.0]) - 10
    boxes = torch.stack(
        [boxes[:, [0, 2]].min(1).values, boxes[:, [1, 3]].min(1).values, boxes[:, [0, 2]].max(1).values,
         boxes[:, [1, 3]].max(1).values], 1
    )  # fmt: skip
    # coordinates exactly on .5 cells (x * 1/16 = k + 0.5), the map border (232 / 16 = 14.5) and beyond it
    boxes[:6] = torch.tensor(
        [[8.0, 8.0, 232.0, 152.0], [24.0, 40.0, 56.0, 72.0], [-8.0, -8.0, 8.0, 8.0], [200.0, 130.0, 400.0, 300.0],
         [0.0, 0.0, 0.0, 0.0], [40.0, 40.0, 41.0, 300.0]]
    )  # fmt: skip
    rois = torch.cat([torch.randint(0, 2, (count, 1), generator=generator).float(), boxes], 1)
    fast = box_ops.roi_pool(features, rois, (7, 5), 1.0 / 16)
    slow = box_ops.roi_pool_loop(features, rois, (7, 5), 1.0 / 16)
    assert torch.equal(fast, slow)
    assert (fast == 0).any()  # some bins are empty (boxes outside the map)


def test_roi_pool_rounds_half_away_from_zero():
    features = torch.arange(16.0).reshape(1, 1, 1, 16)
    # x1 = 232 -> 14.5 cells: C round() gives 15 (torch.round would give 14)
    rois = torch.tensor([[0.0, 232.0, 0.0, 240.0, 0.0]])
    assert box_ops.roi_pool(features, rois, (1, 1), 1.0 / 16).item() == 15.0


# ------------------------------------------------------------------------------------------------------------------
# Auto classes and saving
# ------------------------------------------------------------------------------------------------------------------


def test_auto_classes_round_trip_with_the_stored_anchors(tmp_path, detector, frcnn):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    detector.save_pretrained(tmp_path)
    detector.image_processor.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is BottomUpConfig
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is BottomUpDetector
    assert torch.equal(loaded.rpn.cell_anchors, detector.rpn.cell_anchors)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor) is BottomUpImageProcessor and processor.min_size == detector.config.min_size
    arguments = _single_run(frcnn)
    assert torch.equal(loaded.eval()(**arguments).boxes, detector(**arguments).boxes)


def test_a_fresh_model_builds_from_a_tiny_config():
    config = BottomUpConfig(
        depth=50, stem_channels=8, res2_channels=16, width_per_group=4, rpn_hidden_channels=8, num_anchors=3,
        anchor_sizes=[32.0], num_classes=5, num_attributes=3, class_embedding_dim=4, attribute_hidden_size=8,
        rpn_pre_nms_topk=50, rpn_post_nms_topk=10, min_detections=2, max_detections=4, min_size=64, max_size=96,
    )  # fmt: skip
    model = BottomUpDetector(config).eval()
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    (regions,) = model.extract_regions([image])
    assert regions["features"].shape[1] == model.feature_dim == 128
    assert regions["boxes"].shape[0] <= 4 and regions["class_probs"].shape[1] == 5
    assert model.detector_name == "bottom_up_frcnn"


# ------------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------------


def test_grayscale_and_rgba_images_are_converted(detector):
    rng = np.random.default_rng(0)
    rgb = (rng.random((40, 60, 3)) * 255).astype(np.uint8)
    gray = rgb[:, :, 0]
    processor = detector.image_processor
    expected = processor([np.repeat(gray[:, :, None], 3, axis=2)])["pixel_values"]
    assert torch.equal(processor([gray])["pixel_values"], expected)
    assert torch.equal(processor([Image.fromarray(gray, "L")])["pixel_values"], expected)
    rgba = np.concatenate([rgb, (rng.random((40, 60, 1)) * 255).astype(np.uint8)], axis=2)
    expected_rgb = processor([rgb])["pixel_values"]
    assert torch.equal(processor([rgba])["pixel_values"], expected_rgb)  # alpha dropped
    assert torch.equal(processor([Image.fromarray(rgba, "RGBA")])["pixel_values"], expected_rgb)


def test_bad_images_are_value_errors(detector, tmp_path):
    processor = detector.image_processor
    with pytest.raises(ValueError, match=r"images\[1\] is empty"):
        processor([np.zeros((4, 4, 3), np.uint8), np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"images\[0\].*not a file"):
        processor([str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match="images is empty"):
        processor([])
    with pytest.raises(ValueError, match=r"images\[0\] must be"):
        processor([np.zeros((4, 4, 5), np.uint8)])
    with pytest.raises(ValueError, match="pixel_values"):
        detector(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="image_sizes"):
        detector(torch.zeros(1, 3, 32, 32), image_sizes=torch.tensor([[64, 32]]))


def test_checkpoint_without_anchors_is_refused(frcnn, tmp_path):
    state = torch.load(frcnn / "pytorch_model.bin", weights_only=True)
    del state["proposal_generator.anchor_generator.cell_anchors.0"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(common.ConversionError, match="no anchors"):
        conversion.convert(tmp_path / "pytorch_model.bin", frcnn / "config.yaml")


def test_unknown_keys_and_foreign_layouts_are_refused(frcnn, tmp_path):
    state = torch.load(frcnn / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "roi_heads.box_predictor.extra.weight": torch.zeros(1)}, tmp_path / "extra.bin")
    with pytest.raises(common.ConversionError, match="neither mapped nor deliberately dropped"):
        conversion.convert(tmp_path / "extra.bin", frcnn / "config.yaml")
    vinvl = {"backbone.body.stem.conv1.weight": torch.zeros(1)}
    torch.save(vinvl, tmp_path / "vinvl.pth")
    with pytest.raises(common.ConversionError, match="maskrcnn-benchmark"):
        conversion.convert(tmp_path / "vinvl.pth")
    with pytest.raises(ValueError, match="unknown option"):
        conversion.convert(frcnn / "pytorch_model.bin", frcnn / "config.yaml", max_detection=3)


class _Payload:
    def __reduce__(self):
        return (print, ("executed",))


def test_pickle_with_code_is_refused_unexecuted(tmp_path, capsys):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"backbone.stem.conv1.weight": np.zeros(1)}, "x": _Payload()}))
    with pytest.raises(common.ConversionError, match="builtins.print"):
        conversion.load_detectron2_pickle(path)
    assert "executed" not in capsys.readouterr().out


def test_options_override_config_fields(frcnn):
    model = conversion.convert(frcnn / "pytorch_model.bin", frcnn / "config.yaml", max_detections=5, min_detections=2)
    assert model.config.max_detections == 5
    out = model(**_single_run(frcnn))
    assert out.boxes.shape[1] == 5


def test_benchmark_reports_both_paths(frcnn, detector):
    image = next(frcnn.glob("image*_*.png"))
    rows = benchmark_extraction(detector, [image], dtypes=("float32",), print_fn=None)
    assert [row["path"] for row in rows] == ["vectorised", "per-box loops"]
    assert all(row["same_detections"] and row["images_per_s"] > 0 for row in rows)
    json.dumps(rows)  # plain data, for a bench report


def test_hf_vlp_convert_verifies_the_fixture(frcnn, capsys):
    from hf_vlp.cli import main

    checkpoint = str(next(frcnn.glob("*.pkl")))
    arguments = ["convert", "bottom_up", "--checkpoint", checkpoint, "--config", str(frcnn / "config.yaml")]
    assert main([*arguments, "--verify", str(frcnn)]) == 0
    printed = capsys.readouterr().out
    assert "verification ok" in printed and "FAIL" not in printed
    assert main([*arguments, "--option", "max_detection=3"]) == 2  # a misspelt option, refused before loading


def test_converted_detector_is_saved_and_pushed_as_a_plain_transformers_folder(frcnn, tmp_path, hub_endpoint):
    """The detector has no ArchitectureSpec: `--output` writes weights, config, its image processor and a short card
    (no remote code), `AutoModel` / `AutoImageProcessor` reload it, and `hf-vlp push` uploads it."""
    from transformers import AutoImageProcessor, AutoModel

    from hf_vlp.cli import main

    checkpoint = str(frcnn / "pytorch_model.bin")
    output = tmp_path / "frcnn"
    arguments = ["convert", "bottom_up", "--checkpoint", checkpoint, "--config", str(frcnn / "config.yaml")]
    assert main([*arguments, "--output", str(output)]) == 0
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in output.iterdir()
    }
    assert "hf_vlp" in (output / "README.md").read_text() and not list(output.glob("modeling_*.py"))
    reloaded = AutoModel.from_pretrained(output)
    assert type(reloaded).__name__ == "BottomUpDetector"
    assert type(AutoImageProcessor.from_pretrained(output)).__name__ == "BottomUpImageProcessor"
    assert main(["push", "--model", str(output), "--repo_id", "tester/frcnn"]) == 0
