"""Bad input, everywhere regions come in: processors, feature-file readers and the region models' forward.

Each case is one bad (or edge) input and what must happen: a `ValueError` whose message names the argument (and the
image / example where there is one), or, where a correct result exists, that result. Run this file as a script
(`python tests/test_bad_inputs.py`) for the table of outcomes by area: tried / clear error / correct / anything else.
"""

import base64
import functools
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertTokenizer

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.modeling.ernie_vil import ErnieVilConfig, ErnieVilModel, ErnieVilProcessor
from hf_vlp.modeling.lxmert import LxmertConfig, LxmertModel, LxmertProcessor
from hf_vlp.modeling.oscar import OscarConfig, OscarModel, OscarProcessor
from hf_vlp.modeling.uniter import UniterConfig, UniterModel, UniterProcessor
from hf_vlp.modeling.vilbert import VilbertConfig, VilbertModel, VilbertProcessor
from hf_vlp.modeling.visual_bert import VisualBertConfig, VisualBertModel, VisualBertProcessor
from hf_vlp.processing import RegionFeatureProcessor, RegionTextProcessor
from hf_vlp.processing.readers import read_bua_tsv, read_npz_features, write_bua_tsv

NAN, INF = float("nan"), float("inf")
DIM = 12  # region feature size of every tiny model here
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "blue", "square", "dog", "cat"]


@dataclass
class Case:
    area: str
    name: str
    run: object  # callable; raises, or returns after asserting the correct result
    error: str | None = None  # regex the ValueError must match; None: the correct result is the answer
    known_gap: str | None = None  # why it still fails (the file that must change), for strict xfail


CASES: list[Case] = []


def case(area, name, error=None, known_gap=None):
    def register(run):
        CASES.append(Case(area, name, run, error, known_gap))
        return run

    return register


# ------------------------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------------------------


def feats(*counts, dim=DIM):
    rng = np.random.default_rng(sum(counts))
    return [rng.random((n, dim), dtype=np.float32) for n in counts]


def boxes(*counts, size=100):
    """Valid pixel boxes inside a `size` x `size` image."""
    rng = np.random.default_rng(len(counts))
    out = []
    for n in counts:
        corners = np.sort(rng.uniform(0, size, (n, 2, 2)), axis=1)  # x1 <= x2, y1 <= y2
        out.append(corners.reshape(n, 4).astype(np.float32))
    return out


def sizes(count, size=100):
    return [(size, size)] * count


def with_value(arrays, image, index, value):
    arrays = [a.copy() for a in arrays]
    arrays[image][index] = value
    return arrays


@functools.cache
def tokenizer():
    folder = Path(tempfile.mkdtemp(prefix="hf_vlp_vocab_"))
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"))


# ------------------------------------------------------------------------------------------------------------------
# RegionFeatureProcessor
# ------------------------------------------------------------------------------------------------------------------

AREA = "RegionFeatureProcessor"


@case(AREA, "nan feature", r"`visual_feats\[1\]` holds 1 non-finite value\(s\) \(nan at region 2, column 5\)")
def _():
    RegionFeatureProcessor()(with_value(feats(3, 4), 1, (2, 5), NAN), boxes(3, 4), sizes(2))


@case(AREA, "inf feature", r"`visual_feats\[0\]` holds 1 non-finite value\(s\) \(inf at region 0")
def _():
    RegionFeatureProcessor()(with_value(feats(3), 0, (0, 0), INF), boxes(3), sizes(1))


@case(
    AREA,
    "nan box (the `box < 0` check is False for NaN)",
    r"`boxes\[1\]` holds 1 non-finite value\(s\) \(nan at region 1",
)
def _():
    RegionFeatureProcessor()(feats(2, 2), with_value(boxes(2, 2), 1, (1, 3), NAN), sizes(2))


@case(AREA, "inf normalized box", r"`boxes\[0\]` holds 1 non-finite")
def _():
    RegionFeatureProcessor(normalize_boxes_by_image_size=False)(feats(1), [[[0, 0, INF, 0.5]]])


@case(AREA, "nan image size", r"`image_sizes\[0\]` must be a finite, positive \(width, height\)")
def _():
    RegionFeatureProcessor()(feats(1), boxes(1), [(NAN, 100)])


@case(AREA, "zero image size", r"`image_sizes\[1\]` must be a finite, positive")
def _():
    RegionFeatureProcessor()(feats(1, 1), boxes(1, 1), [(100, 100), (0, 100)])


@case(AREA, "image size with three numbers", r"`image_sizes\[0\]` must be a finite, positive \(width, height\)")
def _():
    RegionFeatureProcessor()(feats(1), boxes(1), [(100, 100, 3)])


@case(AREA, "flipped box (x2 < x1)", r"`boxes\[0\]` must be x1,y1,x2,y2 with x2 >= x1 and y2 >= y1; region 1")
def _():
    RegionFeatureProcessor()(feats(2), [[[0, 0, 10, 10], [50, 0, 20, 10]]], sizes(1))


@case(AREA, "pixel boxes declared normalized", r"`boxes\[0\]` must be normalized to \[0, 1\]")
def _():
    RegionFeatureProcessor(normalize_boxes_by_image_size=False)(feats(1), [[[0, 0, 30, 30]]])


@case(AREA, "pixel box outside the image", r"`boxes\[0\]` has coordinates outside the 100x100 image")
def _():
    RegionFeatureProcessor()(feats(1), [[[0, 0, 300, 50]]], sizes(1))


for _value in (-1, 0, 2.5, True, "3"):
    case(AREA, f"max_regions={_value!r} at construction", r"`max_regions` must be None .* or a positive int")(
        functools.partial(RegionFeatureProcessor, max_regions=_value)
    )


@case(AREA, "max_regions set to 0 after construction", r"`max_regions` must be None .* or a positive int, got 0")
def _():
    processor = RegionFeatureProcessor()
    processor.max_regions = 0
    processor(feats(2), boxes(2), sizes(1))


@case(AREA, "max_regions=2 keeps the first two regions, global region included")
def _():
    out = RegionFeatureProcessor(add_global_region=True, max_regions=2)(feats(3), boxes(3), sizes(1))
    assert out["visual_feats"].shape == (1, 2, DIM) and out["visual_pos"].shape == (1, 2, 4)
    torch.testing.assert_close(out["visual_pos"][0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(out["visual_feats"][0, 1], torch.from_numpy(feats(3)[0][0]))


@case(AREA, "image without regions, with the global region: shapes agree")
def _():
    empty = np.zeros((0, DIM), np.float32), np.zeros((0, 4), np.float32)
    out = RegionFeatureProcessor(add_global_region=True)([empty[0], feats(2)[0]], [empty[1], boxes(2)[0]], sizes(2))
    assert out["visual_feats"].shape == (2, 3, DIM) and out["visual_pos"].shape == (2, 3, 4)
    assert out["visual_attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert (out["visual_feats"][0] == 0).all()  # the mean of no features: zeros
    torch.testing.assert_close(out["visual_pos"][0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))


@case(AREA, "only images without regions, with the global region")
def _():
    out = RegionFeatureProcessor(add_global_region=True)([np.zeros((0, DIM))], [np.zeros((0, 4))], sizes(1))
    assert out["visual_feats"].shape == (1, 1, DIM) and out["visual_pos"].shape == (1, 1, 4)
    assert out["visual_attention_mask"].tolist() == [[1]]


@case(AREA, "image without regions, no global region: all padding")
def _():
    out = RegionFeatureProcessor()([np.zeros((0, DIM)), feats(2)[0]], [np.zeros((0, 4)), boxes(2)[0]], sizes(2))
    assert out["visual_attention_mask"].tolist() == [[0, 0], [1, 1]]
    assert out["visual_feats"].shape == (2, 2, DIM)


@case(
    AREA,
    "region label count, with the global region: counts the given regions",
    r"image 0: `region_labels` has 2 entries for 3 regions \(one per given region",
)
def _():
    RegionFeatureProcessor(add_global_region=True)(feats(3), boxes(3), sizes(1), region_labels=[[1, 2]])


@case(AREA, "region labels of the right count, with the global region")
def _():
    out = RegionFeatureProcessor(add_global_region=True)(feats(3), boxes(3), sizes(1), region_labels=[[1, 2, 3]])
    assert out["region_labels"].tolist() == [[-100, 1, 2, 3]]


@case(AREA, "non-integral float region labels", r"`region_labels\[0\]` must hold integer ids, got 1.5 at region 1")
def _():
    RegionFeatureProcessor()(feats(2), boxes(2), sizes(1), region_labels=[np.array([2.0, 1.5])])


@case(AREA, "integral float region labels become int64")
def _():
    out = RegionFeatureProcessor()(feats(2), boxes(2), sizes(1), region_labels=[np.array([2.0, 1.0])])
    assert out["region_labels"].dtype == torch.int64 and out["region_labels"].tolist() == [[2, 1]]


@case(AREA, "ints then floats in a field: fractions kept (were truncated to the first image's dtype)")
def _():
    out = RegionFeatureProcessor()(feats(1, 1), boxes(1, 1), sizes(2), region_scores=[np.array([3]), np.array([0.75])])
    assert out["region_scores"].dtype == torch.float32 and out["region_scores"].tolist() == [[3.0], [0.75]]


@case(AREA, "fractional values in an `*_ids` field", r"`region_attribute_ids\[1\]` must hold integer ids, got 0.7")
def _():
    RegionFeatureProcessor()(feats(1, 1), boxes(1, 1), sizes(2), region_attribute_ids=[[3], [0.7]])


@case(
    AREA,
    "nan class probabilities",
    r"`region_class_probs\[0\]` holds 1 non-finite value\(s\) \(nan at region 1, column 0\)",
)
def _():
    probs = np.full((2, 3), 1 / 3, np.float32)
    probs[1, 0] = NAN
    RegionFeatureProcessor()(feats(2), boxes(2), sizes(1), region_class_probs=[probs])


@case(AREA, "text in a region field", r"`region_names` must hold numbers")
def _():
    RegionFeatureProcessor()(feats(2), boxes(2), sizes(1), region_names=[["dog", "cat"]])


@case(AREA, "region field with one entry for two images", r"`region_labels` must have one entry per image \(2\), got 1")
def _():
    RegionFeatureProcessor()(feats(1, 1), boxes(1, 1), sizes(2), region_labels=[[1]])


@case(AREA, "region field of different widths", r"`region_class_probs` must have the same shape per region")
def _():
    RegionFeatureProcessor()(feats(1, 1), boxes(1, 1), sizes(2), region_class_probs=[np.ones((1, 3)), np.ones((1, 4))])


@case(AREA, "ragged feature rows", r"`visual_feats\[0\]` must be a numeric array")
def _():
    RegionFeatureProcessor()([[[1.0, 2.0], [3.0]]], boxes(2), sizes(1))


@case(
    AREA,
    "one image's features not wrapped in a list",
    r"`visual_feats\[0\]` must have 2 dimensions, got shape \(12,\) \(pass one array per image",
)
def _():
    RegionFeatureProcessor()(feats(2)[0], boxes(2)[0], sizes(2))


@case(AREA, "different feature sizes", r"all images' `visual_feats` must have the same feature size, got \[8, 12\]")
def _():
    RegionFeatureProcessor()(feats(1) + feats(1, dim=8), boxes(1, 1), sizes(2))


@case(AREA, "features and boxes of different counts", r"image 0: 3 region features but 2 boxes")
def _():
    RegionFeatureProcessor()(feats(3), boxes(2), sizes(1))


@case(AREA, "pixel boxes without image sizes", r"`image_sizes` \[\(width, height\), \.\.\.\] is required")
def _():
    RegionFeatureProcessor()(feats(1), boxes(1))


@case(AREA, "no images", r"`visual_feats` and `boxes` are empty")
def _():
    RegionFeatureProcessor()([], [], [])


@case(AREA, "bfloat16 tensor features are read as float32")
def _():
    out = RegionFeatureProcessor()([torch.ones(2, DIM, dtype=torch.bfloat16)], boxes(2), sizes(1))
    assert out["visual_feats"].dtype == torch.float32 and (out["visual_feats"] == 1).all()


# ------------------------------------------------------------------------------------------------------------------
# RegionTextProcessor and the architectures' processors (modeling/*/processing_*.py)
# ------------------------------------------------------------------------------------------------------------------

AREA = "text + region processors"


def text_processor(cls=RegionTextProcessor, **region_options):
    return cls(RegionFeatureProcessor(**region_options), tokenizer())


@case(AREA, "two texts, one image", r"2 texts but 1 images: `text` and `visual_feats` need one entry per example")
def _():
    text_processor()(text=["a red circle", "a dog"], visual_feats=feats(2), boxes=boxes(2), image_sizes=sizes(1))


@case(AREA, "image sizes without regions", r"`image_sizes` given without `visual_feats` and `boxes`")
def _():
    text_processor()(text=["a dog"], image_sizes=sizes(1))


@case(AREA, "region field without regions", r"`region_labels` given without `visual_feats` and `boxes`")
def _():
    text_processor()(text=["a dog"], region_labels=[[1]])


@case(AREA, "nothing to process", r"pass `text`, `visual_feats` with `boxes`, or both")
def _():
    text_processor()()


@case(AREA, "nan feature through the text processor", r"`visual_feats\[0\]` holds 1 non-finite")
def _():
    text_processor()(
        text=["a dog"], visual_feats=with_value(feats(2), 0, (1, 1), NAN), boxes=boxes(2), image_sizes=sizes(1)
    )


@case(AREA, "UniterProcessor: max_regions=0", r"`max_regions` must be None .* or a positive int, got 0")
def _():
    text_processor(UniterProcessor, max_regions=0)


@case(AREA, "UniterProcessor: output feeds the model")
def _():
    batch = text_processor(UniterProcessor)(
        text=["a red circle", "a dog"], visual_feats=feats(3, 1), boxes=boxes(3, 1), image_sizes=sizes(2)
    )
    model = model_and_inputs("uniter")[0]
    assert torch.isfinite(model(**batch).last_hidden_state).all()


@case(AREA, "VilbertProcessor: image without regions keeps the global region")
def _():
    batch = text_processor(VilbertProcessor, add_global_region=True)(
        text=["a dog", "a cat"],
        visual_feats=[np.zeros((0, DIM))] + feats(2),
        boxes=[np.zeros((0, 4))] + boxes(2),
        image_sizes=sizes(2),
    )
    assert batch["visual_feats"].shape == (2, 3, DIM) and batch["visual_pos"].shape == (2, 3, 4)
    assert batch["visual_attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]


@case(AREA, "VilbertProcessor: nan feature", r"`visual_feats\[1\]` holds 1 non-finite")
def _():
    text_processor(VilbertProcessor, add_global_region=True)(
        text=["a dog", "a cat"],
        visual_feats=with_value(feats(1, 2), 1, (0, 0), NAN),
        boxes=boxes(1, 2),
        image_sizes=sizes(2),
    )


@case(AREA, "ErnieVilProcessor: nan box", r"`boxes\[0\]` holds 1 non-finite")
def _():
    text_processor(ErnieVilProcessor, add_global_region=True)(
        text=["a dog"], visual_feats=feats(2), boxes=with_value(boxes(2), 0, (0, 0), NAN), image_sizes=sizes(1)
    )


@case(AREA, "LxmertProcessor: box outside the image", r"`boxes\[1\]` has coordinates outside the 100x100 image")
def _():
    text_processor(LxmertProcessor)(
        text=["a dog", "a cat"],
        visual_feats=feats(1, 1),
        boxes=boxes(1) + [np.array([[0, 0, 500, 20]], np.float32)],
        image_sizes=sizes(2),
    )


def oscar_processor():
    return OscarProcessor(RegionFeatureProcessor(), tokenizer(), region_class_names=["background", "dog", "cat"])


@case(AREA, "OscarProcessor: float region label", r"`region_labels\[0\]` holds 1.5, not an id into region_class_names")
def _():
    oscar_processor()(
        text=["a dog"], visual_feats=feats(2), boxes=boxes(2), image_sizes=sizes(1), region_labels=[[1, 1.5]]
    )


@case(AREA, "OscarProcessor: nan region label", r"`region_labels\[0\]` holds nan, not an id")
def _():
    oscar_processor()(
        text=["a dog"], visual_feats=feats(1), boxes=boxes(1), image_sizes=sizes(1), region_labels=[[NAN]]
    )


@case(AREA, "OscarProcessor: integral float labels name their classes")
def _():
    batch = oscar_processor()(
        text=["a"], visual_feats=feats(2), boxes=boxes(2), image_sizes=sizes(1), region_labels=[[1.0, 2.0]]
    )
    assert tokenizer().decode(batch["input_ids"][0]) == "[CLS] a [SEP] dog cat [SEP]"


@case(AREA, "OscarProcessor: inf feature", r"`visual_feats\[0\]` holds 1 non-finite")
def _():
    oscar_processor()(
        text=["a dog"],
        visual_feats=with_value(feats(2), 0, (1, 0), -INF),
        boxes=boxes(2),
        image_sizes=sizes(1),
        region_labels=[[1, 2]],
    )


@case(
    AREA,
    "VisualBertProcessor: fractional visual_token_type_ids (were truncated to 0)",
    r"`visual_token_type_ids\[0\]` must hold integer ids, got 0.5 at region 1",
)
def _():
    text_processor(VisualBertProcessor)(text=["a dog"], visual_feats=feats(2), visual_token_type_ids=[[0, 0.5]])


@case(AREA, "VisualBertProcessor: nan feature without boxes", r"`visual_feats\[0\]` holds 1 non-finite")
def _():
    text_processor(VisualBertProcessor)(text=["a dog"], visual_feats=with_value(feats(2), 0, (0, 3), NAN))


# ------------------------------------------------------------------------------------------------------------------
# feature-file readers (hf_vlp/processing/readers.py)
# ------------------------------------------------------------------------------------------------------------------

AREA = "readers"


def tsv_line(image_id=42, width="640", height="480", boxes_=None, features_=None, num_boxes=None):
    boxes_ = np.array([[10, 10, 50, 60], [0, 0, 640, 480]], np.float32) if boxes_ is None else boxes_
    features_ = np.ones((len(boxes_), 4), np.float32) if features_ is None else features_
    encode = lambda array: base64.b64encode(np.ascontiguousarray(array, np.float32).tobytes()).decode()  # noqa: E731
    count = len(boxes_) if num_boxes is None else num_boxes
    return "\t".join([str(image_id), width, height, str(count), encode(boxes_), encode(features_)]) + "\n"


def read_tsv(text):
    path = Path(tempfile.mkdtemp(prefix="hf_vlp_tsv_")) / "features.tsv"
    path.write_text(text)
    return list(read_bua_tsv(path))


def read_npz(**arrays):
    folder = Path(tempfile.mkdtemp(prefix="hf_vlp_npz_"))
    defaults = dict(
        x=np.ones((2, 4), np.float32), bbox=np.array([[1, 1, 5, 5], [0, 0, 9, 9]], np.float32), image_w=10, image_h=10
    )
    np.savez(folder / "7.npz", **{**defaults, **arrays})
    return list(read_npz_features(folder / "7.npz"))


@case(AREA, "tsv: nan feature", r"line 2 \(image_id 'x9'\): features hold 1 NaN or infinite value\(s\), first at box 1")
def _():
    read_tsv(tsv_line() + tsv_line(image_id="x9", features_=with_value([np.ones((2, 4))], 0, (1, 2), NAN)[0]))


@case(
    AREA, "tsv: inf box", r"line 1 \(image_id 42\): boxes hold 1 NaN or infinite value\(s\), first at box 0, column 2"
)
def _():
    read_tsv(tsv_line(boxes_=np.array([[0, 0, INF, 5]], np.float32)))


@case(
    AREA, "tsv: flipped box", r"line 1 \(image_id 42\): boxes must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1; box 1"
)
def _():
    read_tsv(tsv_line(boxes_=np.array([[0, 0, 5, 5], [30, 0, 10, 5]], np.float32)))


@case(AREA, "tsv: nan image width", r"line 1: num_boxes / image_w / image_h must be finite numbers, got '2' / 'nan'")
def _():
    read_tsv(tsv_line(width="nan"))


@case(
    AREA, "tsv: inf image height (int(inf) overflowed)", r"line 1: num_boxes / image_w / image_h must be finite numbers"
)
def _():
    read_tsv(tsv_line(height="inf"))


@case(AREA, "tsv: zero image width", r"line 1 \(image_id 42\): image size must be positive, got 0x480")
def _():
    read_tsv(tsv_line(width="0"))


@case(AREA, "tsv: negative num_boxes", r"line 1: num_boxes must be >= 0, got -2")
def _():
    read_tsv(tsv_line(num_boxes=-2))


@case(AREA, "tsv: an image without boxes reads as (0, 4) and (0, D)")
def _():
    (record,) = read_tsv(tsv_line(boxes_=np.zeros((0, 4)), features_=np.zeros((0, 4))))
    assert record["boxes"].shape == (0, 4) and record["features"].shape[0] == 0


@case(
    AREA,
    "npz: nan feature",
    r"7.npz \(image_id 7\): features hold 1 NaN or infinite value\(s\), first at box 0, column 3",
)
def _():
    read_npz(x=with_value([np.ones((2, 4), np.float32)], 0, (0, 3), NAN)[0])


@case(AREA, "npz: flipped box", r"7.npz \(image_id 7\): boxes must be x1, y1, x2, y2 .*; box 0")
def _():
    read_npz(bbox=np.array([[1, 5, 5, 1], [0, 0, 9, 9]], np.float32))


@case(AREA, "npz: nan image width", r"7.npz: the image width / height must be finite numbers")
def _():
    read_npz(image_w=np.float32(NAN))


@case(AREA, "writer: nan feature", r"records\[0\] \(image_id 3\): features hold 1 NaN")
def _():
    path = Path(tempfile.mkdtemp(prefix="hf_vlp_tsv_")) / "out.tsv"
    write_bua_tsv(
        path,
        [
            {
                "image_id": 3,
                "image_width": 10,
                "image_height": 10,
                "boxes": np.zeros((1, 4)),
                "features": np.array([[NAN, 1.0]]),
            }
        ],
    )


# ------------------------------------------------------------------------------------------------------------------
# the region models' forward
# ------------------------------------------------------------------------------------------------------------------

AREA = "model forward"

TINY = dict(
    vocab_size=len(WORDS) + 20,
    hidden_size=16,
    num_attention_heads=2,
    intermediate_size=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
COATTENTION = dict(
    v_feature_size=DIM,
    v_hidden_size=16,
    v_num_attention_heads=2,
    v_intermediate_size=24,
    v_biattention_id=[0, 1],
    t_biattention_id=[0, 1],
    num_hidden_layers=2,
    v_num_hidden_layers=2,
)


@functools.cache
def model_and_inputs(arch):
    """A tiny model and a valid batch of 2 examples x 3 regions (the last region of example 1 is padding)."""
    torch.manual_seed(0)
    if arch == "uniter":
        model = UniterModel(UniterConfig(**TINY, num_hidden_layers=1, visual_feat_dim=DIM))
    elif arch == "vilbert":
        model = VilbertModel(VilbertConfig(**TINY, **COATTENTION, bi_hidden_size=16, bi_num_attention_heads=2))
    elif arch == "ernie_vil":
        model = ErnieVilModel(ErnieVilConfig(**TINY, **COATTENTION, co_hidden_size=16, co_num_attention_heads=2))
    elif arch == "oscar":
        model = OscarModel(
            OscarConfig(
                **TINY,
                num_hidden_layers=1,
                visual_feat_dim=DIM,
                pad_token_id=0,
                bos_token_id=2,
                eos_token_id=3,
                mask_token_id=4,
            )
        )
    elif arch == "lxmert":
        model = LxmertModel(LxmertConfig(**TINY, l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=DIM))
    else:
        model = VisualBertModel(VisualBertConfig(**TINY, num_hidden_layers=1, visual_embedding_dim=DIM))
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(2, 3, 2, generator=generator) * 0.5
    inputs = dict(
        input_ids=torch.randint(5, len(WORDS), (2, 5), generator=generator),
        attention_mask=torch.ones(2, 5, dtype=torch.long),
        visual_feats=torch.rand(2, 3, DIM, generator=generator),
        visual_pos=torch.cat([corners, corners + 0.4], dim=-1),
        visual_attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
    )
    if arch == "visual_bert":
        inputs["visual_embeds"] = inputs.pop("visual_feats")
        del inputs["visual_pos"]
    return model.eval(), inputs


def forward(arch, **changes):
    model, inputs = model_and_inputs(arch)
    with torch.no_grad():
        return model(**{**inputs, **changes})


def changed(arch, name, index, value):
    tensor = model_and_inputs(arch)[1][name].clone()
    tensor[index] = value
    return {name: tensor}


BOXED = ["uniter", "vilbert", "ernie_vil", "oscar", "lxmert"]

for arch in BOXED + ["visual_bert"]:
    feats_name = "visual_embeds" if arch == "visual_bert" else "visual_feats"
    add = functools.partial(case, f"{AREA}: {arch}")
    add("2-d features", rf"`{feats_name}` .*\(3, {DIM}\)")(
        lambda arch=arch, f=feats_name: forward(arch, **{f: model_and_inputs(arch)[1][f][0]})
    )
    add("features of the wrong size for the config", rf"`{feats_name}` must have {DIM} features per region")(
        lambda arch=arch, f=feats_name: forward(arch, **{f: torch.rand(2, 3, DIM + 3)})
    )
    add("visual_attention_mask of the wrong shape", r"`visual_attention_mask` must be \(batch, regions\) = \(2, 3\)")(
        lambda arch=arch: forward(arch, visual_attention_mask=torch.ones(2, 4, dtype=torch.long))
    )
    add(
        "one image for two texts",
        rf"batch (size )?2 and (image batch size 1 \(`{feats_name}`\)|`{feats_name}` batch 1)",
    )(
        lambda arch=arch, f=feats_name: forward(
            arch, **{k: v[:1] for k, v in model_and_inputs(arch)[1].items() if k.startswith("visual")}
        )
    )
    add(
        "nan feature",
        rf"`{feats_name}` holds NaN or infinite values at example 1, region 2",
    )(lambda arch=arch, f=feats_name: forward(arch, **changed(arch, f, (1, 2, 0), NAN)))
    add(
        "inf feature",
        rf"`{feats_name}` holds NaN or infinite values at example 0, region 1",
    )(lambda arch=arch, f=feats_name: forward(arch, **changed(arch, f, (0, 1, 4), -INF)))
    add(
        "visual_attention_mask of 0.5",
        r"`visual_attention_mask` must hold 0 \(padding\) or 1 \(region\), got 0.5",
    )(lambda arch=arch: forward(arch, visual_attention_mask=torch.tensor([[1.0, 0.5, 1.0], [1.0, 1.0, 0.0]])))
    if arch == "visual_bert":
        continue
    add("visual_pos with 5 numbers per box", r"`visual_pos` must be \(batch, regions, 4\)")(
        lambda arch=arch: forward(arch, visual_pos=torch.rand(2, 3, 5))
    )
    add("visual_pos for fewer regions", r"`visual_pos`.*\(2, 2, 4\)")(
        lambda arch=arch: forward(arch, visual_pos=model_and_inputs(arch)[1]["visual_pos"][:, :2])
    )
    add("visual_pos missing", r"`visual_pos`.* is required|`visual_pos` is required")(
        lambda arch=arch: forward(arch, visual_pos=None)
    )
    add("pixel boxes as visual_pos", r"`visual_pos` must be x1,y1,x2,y2 normalized to \[0, 1\].*example 0, region 0")(
        lambda arch=arch: forward(arch, visual_pos=model_and_inputs(arch)[1]["visual_pos"] * 600)
    )
    add("nan box", r"`visual_pos` holds NaN or infinite values at example 1, region 0")(
        lambda arch=arch: forward(arch, **changed(arch, "visual_pos", (1, 0, 3), NAN))
    )
    add("x,y,w,h boxes with x2 < x1", r"`visual_pos` must be x1,y1,x2,y2 with x2 >= x1 .*example 0, region 1")(
        lambda arch=arch: forward(arch, **changed(arch, "visual_pos", (0, 1), torch.tensor([0.5, 0.5, 0.2, 0.2])))
    )
    add(
        "nan feature in a padded region (attention weight 0 * nan = nan)",
        r"`visual_feats` holds NaN or infinite values at example 1, region 2",
    )(lambda arch=arch: forward(arch, **changed(arch, "visual_feats", (1, 2), NAN)))
    add("any finite box in a padded region: the real positions' output is unchanged")(
        lambda arch=arch: padded_box_is_ignored(arch)
    )


def padded_box_is_ignored(arch):
    garbage = forward(arch, **changed(arch, "visual_pos", (1, 2), torch.tensor([3.0, 2.0, -1.0, 0.0])))[0]
    zero = forward(arch, **changed(arch, "visual_pos", (1, 2), 0.0))[0]
    if garbage.shape[1] == 5 + 3:  # joint text + region sequence: the padded region's own output may differ
        garbage, zero = garbage[:, :-1], zero[:, :-1]
    torch.testing.assert_close(garbage, zero)


# ------------------------------------------------------------------------------------------------------------------
# the tests, and the table
# ------------------------------------------------------------------------------------------------------------------


def _params():
    params = []
    for item in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=item.known_gap)] if item.known_gap else []
        params.append(pytest.param(item, id=f"{item.area}: {item.name}", marks=marks))
    return params


@pytest.mark.parametrize("item", _params())
def test_bad_input(item):
    if item.error is None:
        item.run()
    else:
        with pytest.raises(ValueError, match=item.error):
            item.run()


def test_there_are_at_least_forty_distinct_cases():
    assert len({(c.area, c.name) for c in CASES}) == len(CASES) >= 40


def outcome(item):
    """'clear error' (the expected ValueError), 'correct' (the expected result), or 'anything else: ...'."""
    try:
        item.run()
    except ValueError as error:
        if item.error is not None and re.search(item.error, str(error)):
            return "clear error"
        return f"anything else: ValueError {str(error)[:80]!r}"
    except Exception as error:  # noqa: BLE001 - the table counts every kind of failure
        return f"anything else: {type(error).__name__} {str(error)[:80]!r}"
    return "correct" if item.error is None else "anything else: accepted"


if __name__ == "__main__":
    torch.set_num_threads(1)
    table, others = {}, []
    for item in CASES:
        result = outcome(item)
        area = item.area
        row = table.setdefault(area, {"tried": 0, "clear error": 0, "correct": 0, "anything else": 0})
        row["tried"] += 1
        row[result if result in ("clear error", "correct") else "anything else"] += 1
        if result.startswith("anything else"):
            others.append(f"  {item.area}: {item.name}: {result[15:]}")
    print("| area | tried | clear error | correct | anything else |\n|---|---|---|---|---|")
    for area, row in table.items():
        print(f"| {area} | " + " | ".join(str(v) for v in row.values()) + " |")
    total = {key: sum(row[key] for row in table.values()) for key in next(iter(table.values()))}
    print("| total | " + " | ".join(str(v) for v in total.values()) + " |")
    print("\n".join(others))
    sys.exit(0)
