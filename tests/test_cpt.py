"""CPT (Colorful Prompt Tuning): painting, prompts, tokens and scores reproduce the fixture made by running the
authors' code (`../shared/fixtures/cpt/`, README there); colour/alpha/box conventions; bad input; the scoring API,
few-shot tuning and CLI on a tiny UNITER."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_vlp import cpt
from hf_vlp.conversion.common import fixture_root
from hf_vlp.processing.cpt import (
    BLUE,
    PALETTES,
    RED,
    CptColor,
    CptProcessor,
    box_block,
    decode_rle,
    insert_colors,
    overlapping_pairs,
    paint_boxes,
    paint_masks,
    paint_polygons,
    polygon_mask,
    refexp_prompt,
    region_geometry,
    relation_prompts,
    shuffled_like_vg_dataset,
    vcr_coloring,
    xywh_to_cpt_xyxy,
)

CPT_DIR = fixture_root() / "cpt"
OSCAR_PRETRAIN = fixture_root() / "oscar" / "pretrain"


def _fixture():
    if not (CPT_DIR / "boxes.json").exists() or not (OSCAR_PRETRAIN / "vocab.txt").exists():
        pytest.skip(f"CPT fixture not found under {fixture_root()} (set HF_VLP_FIXTURES)")
    from safetensors.torch import load_file

    read = lambda name: json.loads((CPT_DIR / name).read_text())
    return {
        "boxes": read("boxes.json"),
        "prompts": read("prompts.json"),
        "scoring": read("scoring.json"),
        "meta": read("fixture_meta.json"),
        "tensors": load_file(CPT_DIR / "tensors.safetensors"),
    }


@pytest.fixture(scope="module")
def fixture():
    return _fixture()


@pytest.fixture(scope="module")
def tokenizer():
    if not (OSCAR_PRETRAIN / "vocab.txt").exists():
        pytest.skip(f"no BERT vocabulary at {OSCAR_PRETRAIN} (set HF_VLP_FIXTURES)")
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(OSCAR_PRETRAIN))


def _image(fixture):
    return Image.open(CPT_DIR / fixture["boxes"]["image"]).convert("RGB")


def _assert_same_pixels(painted, relative_path):
    expected = np.array(Image.open(CPT_DIR / relative_path).convert("RGB"))
    ours = np.array(painted)
    assert ours.shape == expected.shape, relative_path
    differing = int((ours != expected).any(-1).sum())
    assert differing == 0, f"{relative_path}: {differing} pixels differ"


# ------------------------------------------------------------------------------------------------------------------
# Fixture: painting (pixel-exact)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quirks", [False, True])
@pytest.mark.parametrize("mode", ["box", "mask"])
def test_fixture_refcoco_painting(fixture, tokenizer, quirks, mode):
    refcoco = fixture["boxes"]["refcoco"]
    painting = fixture["meta"]["refcoco_painting"][mode]
    processor = CptProcessor(tokenizer, colors="refcoco", original_quirks=quirks)
    boxes = [c["box_xywh"] for c in refcoco["candidates"]]
    masks = [c["rle"] for c in refcoco["candidates"]] if mode == "mask" else None
    copies = processor.paint_candidates(_image(fixture), boxes=boxes, masks=masks)
    assert len(copies) == len(painting["colored_images"])
    for copy, path, names, rects in zip(
        copies, painting["colored_images"], painting["color_names"], painting["rects_xyxy"]
    ):
        _assert_same_pixels(copy.image, path)
        assert [c.name for c in copy.colors] == names
        assert copy.rects == rects


def test_fixture_vg_painting_and_pairs(fixture, tokenizer):
    vg = fixture["boxes"]["vg"]
    pairs = shuffled_like_vg_dataset(overlapping_pairs(vg["boxes_xyxy"]), seed=0)
    assert [list(p) for p in pairs] == vg["pairs_with_positive_iou"]
    processor = CptProcessor(tokenizer)
    for entry in fixture["prompts"]["vg"]:
        pair = (entry["subject_index"], entry["object_index"])
        _assert_same_pixels(processor.paint_relation(_image(fixture), vg["boxes_xyxy"], pair), entry["colored_image"])


def test_fixture_gqa_painting(fixture, tokenizer):
    gqa = fixture["prompts"]["gqa"]
    painted = CptProcessor(tokenizer).paint_gqa(_image(fixture), [gqa["to_mark_entry"][0]])
    _assert_same_pixels(painted, gqa["colored_image"])


@pytest.mark.parametrize("quirks", [False, True])
def test_fixture_vcr_painting_and_texts(fixture, tokenizer, quirks):
    vcr, boxes = fixture["prompts"]["vcr"], fixture["boxes"]["vcr"]
    coloring = vcr_coloring(
        vcr["question_tokens_with_refs"],
        vcr["answers_with_refs"],
        vcr["rationales_with_refs"],
        boxes["names"],
        boxes=boxes["boxes_xyxy_score"],
        n_color=vcr["n_color"],
        colors="gqa_vcr_original",
        original_quirks=quirks,
    )
    assert coloring.painted_objects == vcr["painted_object_ids"]
    assert [c.name for c in coloring.painted_colors] == vcr["painted_colors"]
    assert coloring.text_colors == vcr["txt_colors"]
    assert coloring.text_names == vcr["txt_names"]
    processor = CptProcessor(tokenizer, original_quirks=quirks)
    _assert_same_pixels(processor.paint_vcr(_image(fixture), boxes["segms_polygons"], coloring), vcr["colored_image"])
    texts = processor.vcr_texts(vcr["question_tokens_with_refs"], vcr["answers_with_refs"], coloring)
    assert [a for a, _ in texts] == [vcr["text_a"]] * len(texts)
    assert [b for _, b in texts] == vcr["text_b_per_answer"]


def test_fixture_rle_masks_paint_exactly_the_decoded_pixels(fixture):
    image = np.array(_image(fixture))
    for candidate, path in zip(
        fixture["boxes"]["refcoco"]["candidates"], fixture["meta"]["refcoco_painting"]["mask"]["colored_images"]
    ):
        mask = decode_rle(candidate["rle"])
        assert mask.shape == tuple(candidate["rle"]["size"]) and set(np.unique(mask)) <= {0, 1}
        expected = np.array(Image.open(CPT_DIR / path).convert("RGB"))
        changed = (expected != image).any(-1)
        assert not (changed & (mask == 0)).any()  # nothing outside the mask was painted


# ------------------------------------------------------------------------------------------------------------------
# Fixture: prompts, tokens, region geometry
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quirks", [False, True])
def test_fixture_refcoco_prompts_and_tokens(fixture, tokenizer, quirks):
    refcoco, prompts, tensors = fixture["boxes"]["refcoco"], fixture["prompts"]["refcoco"], fixture["tensors"]
    text_length = tensors["refcoco.input_ids"].shape[1]
    processor = CptProcessor(tokenizer, max_text_length=text_length, original_quirks=quirks)
    copies = processor.paint_candidates(_image(fixture), boxes=[c["box_xywh"] for c in refcoco["candidates"]])
    texts = processor.grounding_texts(refcoco["caption"], [c["label"] for c in refcoco["candidates"]], copies)
    rows = prompts["per_colored_image"]
    assert [b for _, b in texts] == [row["text_b_tags"] for row in rows]
    assert {a for a, _ in texts} == {prompts["templates_from_code"][str(prompts["template_used_zero_shot"])]}
    for number, text in prompts["templates_from_code"].items():
        assert refexp_prompt(prompts["caption_used"], int(number)) == text
    encoded = processor.encode(texts)
    assert encoded["tokens"] == [row["tokens"] for row in rows]
    for name in ("input_ids", "token_type_ids"):
        assert torch.equal(encoded[name], tensors[f"refcoco.{name}"])
    assert torch.equal(encoded["attention_mask"], tensors["refcoco.attention_mask"][:, :text_length])
    assert torch.equal(encoded["mask_positions"][:, 0], tensors["refcoco.mask_token_pos"])
    targets = processor.grounding_targets(copies, refcoco["gt_bbox_xywh"])
    assert targets == [row["gt_label_token"] for row in rows]
    assert processor.color_token_ids(targets) == tensors["refcoco.gt_token_ids"].tolist()


@pytest.mark.parametrize("quirks", [False, True])
def test_fixture_vg_prompts_and_tokens(fixture, tokenizer, quirks):
    labels, tensors = fixture["boxes"]["vg"]["labels"], fixture["tensors"]
    for entry in fixture["prompts"]["vg"]:
        key = f"vg.{entry['id']}"
        text_length = tensors[f"{key}.input_ids"].shape[1]
        max_masks = tensors[f"{key}.input_ids"].shape[0] // 2
        processor = CptProcessor(tokenizer, max_text_length=text_length, original_quirks=quirks)
        pair = (entry["subject_index"], entry["object_index"])
        texts = processor.relation_texts(entry["subject"], entry["object"], labels, pair, max_masks=max_masks)
        encoded = processor.encode(texts, expected_masks=None)
        assert encoded["mask_positions"] == entry["mask_positions"]
        if quirks:  # the released code, byte for byte
            assert [a for a, _ in texts] == entry["captions_text_a"]
            assert {b for _, b in texts} == {entry["text_b_as_released_code_builds_it"]}
            assert encoded["tokens"] == entry["tokens"]
            for name in ("input_ids", "token_type_ids"):
                assert torch.equal(encoded[name], tensors[f"{key}.{name}"])
            assert torch.equal(encoded["attention_mask"], tensors[f"{key}.attention_mask"][:, :text_length])
        else:  # intended: one space before the masks, colour words in front of the words
            assert [a for a, _ in texts] == [a.replace("  ", " ") for a in entry["captions_text_a"]]
            assert {b for _, b in texts} == {entry["text_b_evidently_intended"]}


def test_fixture_gqa_and_vcr_tokens(fixture, tokenizer):
    gqa, vcr, tensors = fixture["prompts"]["gqa"], fixture["prompts"]["vcr"], fixture["tensors"]
    processor = CptProcessor(tokenizer)
    text_a, text_b = processor.gqa_texts(gqa["question"], [gqa["to_mark_entry"][1]])
    assert (text_a, text_b) == (gqa["rewritten_question_text_a"], gqa["text_b"])
    assert insert_colors(gqa["question"], [(span, c) for span, c in gqa["colors_meta_from_prompt_feat"]]) == text_a
    coloring = vcr_coloring(
        vcr["question_tokens_with_refs"],
        vcr["answers_with_refs"],
        vcr["rationales_with_refs"],
        fixture["boxes"]["vcr"]["names"],
        n_color=vcr["n_color"],
        colors="gqa_vcr_original",
    )
    text_length = tensors["vcr.input_ids"].shape[1]
    encoded = processor.encode(
        processor.vcr_texts(vcr["question_tokens_with_refs"], vcr["answers_with_refs"], coloring),
        max_length=text_length,
        expected_masks=0,
    )
    assert encoded["tokens"] == vcr["tokens_per_answer"]
    for name in ("input_ids", "token_type_ids"):
        assert torch.equal(encoded[name], tensors[f"vcr.{name}"])
    assert torch.equal(encoded["attention_mask"], tensors["vcr.attention_mask"][:, :text_length])


def test_fixture_region_geometry(fixture):
    boxes, tensors = fixture["boxes"], fixture["tensors"]
    width, height = boxes["width"], boxes["height"]
    geometry = tensors["refcoco.region_features"][..., -6:]
    rects = xywh_to_cpt_xyxy([c["box_xywh"] for c in boxes["refcoco"]["candidates"]])
    ours = torch.from_numpy(region_geometry(rects, width, height))
    assert torch.allclose(ours.expand_as(geometry), geometry, atol=1e-6)
    for entry in fixture["prompts"]["vg"]:
        feats = tensors[f"vg.{entry['id']}.img_feats"]
        n = len(boxes["vg"]["boxes_xyxy"])
        assert torch.allclose(
            torch.from_numpy(region_geometry(boxes["vg"]["boxes_xyxy"], width, height)), feats[:n, -6:], atol=1e-6
        )
    n = len(boxes["vcr"]["boxes_xyxy_score"])
    vcr_geometry = torch.from_numpy(region_geometry([b[:4] for b in boxes["vcr"]["boxes_xyxy_score"]], width, height))
    assert torch.allclose(
        vcr_geometry.expand(tensors["vcr.img_feats"].shape[0], -1, -1), tensors["vcr.img_feats"][:, :n, -6:], atol=1e-6
    )


# ------------------------------------------------------------------------------------------------------------------
# Fixture: scores with the tiny VinVL checkpoint
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oscar_model():
    _fixture()
    try:
        from hf_vlp.conversion import oscar as oscar_conversion
    except ImportError as error:
        pytest.skip(f"hf_vlp.conversion.oscar is not available ({error}); CPT scores need the converted VinVL model")
    return oscar_conversion.convert(str(OSCAR_PRETRAIN)).eval()


def _oscar_inputs(tensors, prefix, img_feats=None):
    """Fixture rows (text + 2054-d region rows, one joint mask) -> hf_vlp inputs; the last 6 feature columns are
    CPT's geometry [x1, y1, x2, y2, w, h] / image size, which the model derives from `visual_pos`."""
    input_ids = tensors[f"{prefix}.input_ids"]
    text_length = input_ids.shape[1]
    mask = tensors[f"{prefix}.attention_mask"]
    feats = tensors[f"{prefix}.img_feats"] if img_feats is None else img_feats
    return dict(
        input_ids=input_ids,
        token_type_ids=tensors[f"{prefix}.token_type_ids"],
        attention_mask=mask[:, :text_length],
        visual_feats=feats[..., :-6],
        visual_pos=feats[..., -6:-2].contiguous(),
        visual_attention_mask=mask[:, text_length:],
    )


def _ratio_tolerance(ratio, none_logit, atol):
    # r = c / n: an error e in both logits moves r by about e * (1 + |r|) / |n|
    return atol * (1 + ratio.abs()) / none_logit.abs() + 1e-6


def test_fixture_refcoco_scores(fixture, oscar_model, tokenizer):
    tensors, scoring = fixture["tensors"], fixture["scoring"]["refcoco"]
    red, none = scoring["red_token_id"], scoring["none_token_id"]
    assert (cpt.color_token_id(tokenizer, "red"), cpt.color_token_id(tokenizer, "none")) == (red, none)
    with torch.no_grad():
        logits = cpt.mask_logits(oscar_model, _oscar_inputs(tensors, "refcoco"), tensors["refcoco.mask_token_pos"])[
            :, 0
        ]
    assert torch.allclose(logits, tensors["refcoco.mask_logits_full_vocab"], atol=5e-4)
    color_ids = torch.full((logits.shape[0], 1), red)
    zero_shot = cpt.grounding_scores(logits, color_ids)[:, 0]
    assert torch.allclose(zero_shot, tensors["refcoco.score_zero_shot_red_logit"], atol=1e-4)
    assert int(zero_shot.argmax()) == scoring["zero_shot_argmax"]
    ratio = cpt.grounding_scores(logits, color_ids, none, method="ratio")[:, 0]
    expected = tensors["refcoco.score_few_shot_red_over_none"]
    assert ((ratio - expected).abs() <= _ratio_tolerance(expected, tensors["refcoco.none_logit"], 1e-4)).all()
    assert int(ratio.argmax()) == scoring["few_shot_argmax"]
    # the ratio formula itself, exactly, on the original's own logits
    reference = cpt.grounding_scores(tensors["refcoco.mask_logits_full_vocab"], color_ids, none, method="ratio")[:, 0]
    assert torch.allclose(reference, expected, rtol=1e-6, atol=0)


def test_fixture_grounding_decision_and_accuracy(fixture):
    refcoco, scoring, tensors = fixture["boxes"]["refcoco"], fixture["scoring"]["refcoco"], fixture["tensors"]
    rects = xywh_to_cpt_xyxy([c["box_xywh"] for c in refcoco["candidates"]])
    from hf_vlp.processing.cpt import cpt_iou_xywh, rect_to_xywh

    for key, scores in (("zero_shot", "score_zero_shot_red_logit"), ("few_shot", "score_few_shot_red_over_none")):
        best = int(tensors[f"refcoco.{scores}"].argmax())
        assert rects[best].tolist() == scoring[f"{key}_predicted_rect_xyxy"]
        correct = cpt_iou_xywh(rect_to_xywh(rects[best].tolist()), refcoco["gt_bbox_xywh"]) > 0.5
        assert 100.0 * correct == scoring[f"{key}_accuracy_reported_by_val"]


def test_fixture_vg_scores(fixture, oscar_model, tokenizer):
    tensors, scoring = fixture["tensors"], fixture["scoring"]["vg"]
    vocabulary = scoring["predicate_vocabulary_idx_to_predicate"]
    indices = sorted(vocabulary, key=int)
    predicate_ids = cpt.predicate_token_ids(tokenizer, [vocabulary[i] for i in indices], scoring["rel2rel_rewrites"])
    for entry in fixture["prompts"]["vg"]:
        key = f"vg.{entry['id']}"
        rows = tensors[f"{key}.input_ids"].shape[0]
        feats = tensors[f"{key}.img_feats"][None].expand(rows, -1, -1)
        forward, reverse = cpt.predicate_scores(
            oscar_model, _oscar_inputs(tensors, key, feats), entry["mask_positions"], predicate_ids, max_masks=rows // 2
        )
        for ours, name in ((forward, "scores_forward"), (reverse, "scores_reverse")):
            expected = tensors[f"{key}.{name}"]
            full = torch.zeros_like(expected)
            full[[int(i) for i in indices]] = ours
            assert torch.allclose(full, expected, atol=1e-4), name
        assert vocabulary[indices[int(forward.argmax())]] == scoring["argmax_forward"][entry["id"]]
        assert vocabulary[indices[int(reverse.argmax())]] == scoring["argmax_reverse"][entry["id"]]


def test_fixture_vcr_scores(fixture, oscar_model):
    tensors = fixture["tensors"]
    scores = cpt.answer_scores(oscar_model, _oscar_inputs(tensors, "vcr"))
    assert torch.allclose(scores, tensors["vcr.answer_score_1_minus_p1"], atol=1e-5)
    assert int(scores.argmax()) == fixture["scoring"]["vcr"]["predicted_answer"]


# ------------------------------------------------------------------------------------------------------------------
# Conventions (no fixture needed)
# ------------------------------------------------------------------------------------------------------------------


def _random_image(height=24, width=32, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_colors_and_alpha_of_the_released_tables():
    assert RED == CptColor("red", (240, 0, 30), 127) and BLUE == CptColor("blue", (0, 10, 255), 127)
    assert PALETTES["refcoco"] == (RED,) and PALETTES["vg"] == (RED, BLUE)
    assert [c.name for c in PALETTES["gqa_vcr_original"]] == ["blue", "red", "yellow", "blue", "purple", "green"]
    assert all(c.alpha == 127 for c in PALETTES["gqa_vcr_original"])


@pytest.mark.parametrize("alpha", [0, 1, 127, 128, 200, 255])
def test_blend_equals_pillow_paste(alpha):
    image = _random_image()
    color = CptColor("red", (240, 0, 30), alpha)
    patch = Image.new("RGBA", (10, 7), color.rgba)
    expected = image.copy()
    expected.paste(patch, (3, 5), patch)
    ours = paint_boxes(image, [[3, 5, 13, 12]], [color])
    assert np.array_equal(np.array(ours), np.array(expected))


def test_box_conventions():
    # exclusive (RefCOCO / VG): columns int(x1) .. int(x2) - 1; inclusive (GQA): .. int(x2)
    assert box_block([2.7, 3.2, 10.9, 8.0], inclusive=False) == (2, 3, 10, 8)
    assert box_block([2.7, 3.2, 10.9, 8.0], inclusive=True) == (2, 3, 11, 9)
    assert box_block([5, 5, 5, 5], inclusive=True) == (5, 5, 6, 6)  # max(..., 1)
    # RefCOCO xywh -> x + w - 1
    assert xywh_to_cpt_xyxy([[1.0, 2.0, 10.0, 4.0]]).tolist() == [[1.0, 2.0, 10.0, 5.0]]
    # float32 round trip before truncation, as maskrcnn's BoxList
    assert box_block([0, 0, 2.9999999999, 1], inclusive=False)[2] == 3


@pytest.mark.parametrize("inclusive", [False, True])
def test_painting_changes_exactly_the_block(inclusive):
    image = _random_image()
    painted = np.array(paint_boxes(image, [[4.5, 2.2, 20.7, 11.9]], [RED], inclusive=inclusive))
    changed = (painted != np.array(image)).any(-1)
    left, top, right, bottom = box_block([4.5, 2.2, 20.7, 11.9], inclusive)
    inside = np.zeros_like(changed)
    inside[top:bottom, left:right] = True
    assert not (changed & ~inside).any()
    # inside, every pixel equals the documented integer blend
    base = np.array(image)[inside].astype(np.int64)
    t = base * 128 + np.array([240, 0, 30]) * 127 + 128
    assert np.array_equal(painted[inside], ((t >> 8) + t) >> 8)


def test_mask_and_polygon_painting_stay_inside():
    image = _random_image()
    mask = np.zeros((24, 32), dtype=np.uint8)
    mask[5:9, 10:20] = 1
    changed = (np.array(paint_masks(image, [mask], [BLUE])) != np.array(image)).any(-1)
    assert not (changed & (mask == 0)).any()
    polygon = [[[2, 2], [12, 3], [8, 15]]]
    inside = polygon_mask(polygon, 32, 24)
    changed = (np.array(paint_polygons(image, [polygon], [BLUE])) != np.array(image)).any(-1)
    assert inside.any() and not (changed & ~inside).any()


def test_overlapping_paints_are_applied_in_order():
    image = Image.new("RGB", (8, 8), (100, 100, 100))
    both = np.array(paint_boxes(image, [[0, 0, 6, 6], [2, 2, 8, 8]], [RED, BLUE]))
    first = np.array(paint_boxes(image, [[0, 0, 6, 6]], [RED]))
    again = np.array(paint_boxes(Image.fromarray(first), [[2, 2, 8, 8]], [BLUE]))
    assert np.array_equal(both, again)


def test_rle_uncompressed_and_compressed_agree():
    mask = np.zeros((6, 5), dtype=np.uint8)
    mask[1:4, 2:4] = 1
    flat = mask.T.reshape(-1)  # column-major runs, starting with zeros
    runs, value, count = [], 0, 0
    for pixel in flat:
        if pixel != value:
            runs.append(count)
            value, count = pixel, 0
        count += 1
    runs.append(count)
    assert np.array_equal(decode_rle({"size": [6, 5], "counts": runs}), mask)
    # pycocotools' string for the same mask (leb128-like, with differences after the second count)
    assert np.array_equal(decode_rle({"size": [6, 5], "counts": "=3305"}), mask)


def test_relation_prompts_and_overlap_rule():
    assert relation_prompts("man", "horse", max_masks=2) == [
        "man in red color is [MASK] a horse in blue color",
        "man in red color is [MASK] [MASK] a horse in blue color",
        "horse in blue color is [MASK] a man in red color",
        "horse in blue color is [MASK] [MASK] a man in red color",
    ]
    # maskrcnn's +1 convention: touching boxes and boxes less than a pixel apart "overlap", a pixel apart do not
    assert overlapping_pairs([[0, 0, 10, 10], [10.5, 0, 20, 10], [21, 0, 30, 10], [30, 0, 40, 10]]) == [(0, 1), (2, 3)]


# ------------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    from transformers import BertTokenizer

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "red",
        "blue",
        "none",
        "is",
        "in",
        "color",
        ".",
        "the",
        "circle",
        "square",
        "triangle",
        "a",
        "shape",
        "left",
        "of",
        "yellow",
        "green",
    ]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(words) + "\n")
    return BertTokenizer.from_pretrained(str(path.parent))


def test_box_outside_the_image_is_an_error(small_tokenizer):
    processor = CptProcessor(small_tokenizer)
    with pytest.raises(ValueError, match="outside the 32x24 image"):
        processor.paint_candidates(_random_image(), boxes=[[20, 10, 15, 5]])  # x + w = 35 > 32
    with pytest.raises(ValueError, match="outside"):
        paint_boxes(_random_image(), [[-3, 0, 5, 5]], [RED])


def test_rle_of_another_size_is_an_error():
    rle = {"size": [10, 10], "counts": [100]}
    with pytest.raises(ValueError, match=r"masks\[0\]` has size \(10, 10\).*image is \(24, 32\)"):
        paint_masks(_random_image(), [rle], [RED])
    with pytest.raises(ValueError, match="cover 99 pixels"):
        decode_rle({"size": [10, 10], "counts": [99]})


def _coco_rle_string(counts):
    """pycocotools' `rleToString`: 5-bit groups + continuation bit, counts after the second as differences."""
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            chunk = x & 0x1F
            x >>= 5
            more = x != -1 if chunk & 0x10 else x != 0
            out.append(chr(chunk + (0x20 if more else 0) + 48))
    return "".join(out)


def test_rle_declaring_a_huge_size_is_refused_before_allocating(small_tokenizer):
    import tracemalloc

    assert _coco_rle_string([13, 3, 3, 3, 8]) == "=3305"  # pycocotools' string of the mask above
    runs = [3, 700, 2, 41, 1018]
    assert decode_rle({"size": [42, 42], "counts": _coco_rle_string(runs)}).sum() == 700 + 41
    # a consistent RLE (its runs cover 20000 x 20000 pixels) of a few bytes: decoding it would need gigabytes
    runs = [7, 1] * 9 + [20000 * 20000 - 72]
    huge = {"size": [20000, 20000], "counts": _coco_rle_string(runs)}
    assert len(huge["counts"]) < 40
    image = _random_image()
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"masks\[0\]` has size \(20000, 20000\).*image is \(24, 32\)"):
            paint_masks(image, [huge], [RED])
        with pytest.raises(ValueError, match=r"masks\[0\]` has size \(20000, 20000\)"):
            CptProcessor(small_tokenizer).paint_candidates(image, masks=[huge])  # boxes taken from the masks
        with pytest.raises(ValueError, match="declares a 20000x20000 mask .* more than max_pixels"):
            decode_rle(huge)  # no image size: the default cap
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, f"{peak} bytes allocated before refusing"
    with pytest.raises(ValueError, match=r"size'\]` must be \[height, width\]"):
        decode_rle({"size": [-1, 5], "counts": [0]})


def test_coco_flat_polygons_are_accepted():
    pairs = [[[2, 2], [12, 3], [8, 15]], [[20, 4], [28, 4], [28, 12]]]
    flat = [[2, 2, 12, 3, 8, 15], [20.0, 4.0, 28.0, 4.0, 28.0, 12.0]]  # COCO `segmentation`
    expected = polygon_mask(pairs, 32, 24)
    assert expected.any() and np.array_equal(polygon_mask(flat, 32, 24), expected)
    assert np.array_equal(polygon_mask([np.asarray(flat[0])], 32, 24), polygon_mask(pairs[:1], 32, 24))
    image = _random_image()
    assert np.array_equal(
        np.array(paint_polygons(image, [flat], [BLUE])), np.array(paint_polygons(image, [pairs], [BLUE]))
    )
    with pytest.raises(ValueError, match="odd length 5"):
        polygon_mask([[2, 2, 12, 3, 8]], 32, 24)
    with pytest.raises(ValueError, match="polygon part 0 must be"):
        polygon_mask([2, 2, 12, 3, 8, 15], 32, 24)  # one flat list, not a list of parts


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_coordinates_are_errors(small_tokenizer, bad):
    processor = CptProcessor(small_tokenizer)
    image = _random_image()
    with pytest.raises(ValueError, match="NaN or infinite"):
        processor.paint_candidates(image, boxes=[[0, 0, 8, 8], [bad, 4, 8, 8]])
    with pytest.raises(ValueError, match=r"`boxes_xyxy\[2\]`.*NaN or infinite"):  # not in the painted pair
        cpt.relation_inputs(
            processor,
            image,
            [[0, 0, 12, 12], [8, 6, 20, 18], [24, 2, bad, 9]],
            (0, 1),
            ["circle", "square", "triangle"],
            _mean_colour_features,
        )
    copies = processor.paint_candidates(image, boxes=[[0, 0, 8, 8]])
    with pytest.raises(ValueError, match="`target_box.*NaN or infinite"):
        processor.grounding_targets(copies, [0, 0, bad, 8])
    for function in (overlapping_pairs, xywh_to_cpt_xyxy):
        with pytest.raises(ValueError, match="NaN or infinite"):
            function([[0, 0, 4, 4], [1, 1, bad, 5]])
    with pytest.raises(ValueError, match="NaN or infinite"):
        region_geometry([[0, 0, bad, 4]], 32, 24)
    with pytest.raises(ValueError, match="NaN or infinite"):
        polygon_mask([[0, 0, 5, bad, 9, 9]], 32, 24)


def test_template_without_mask_is_an_error(small_tokenizer):
    with pytest.raises(ValueError, match=r"exactly one \[MASK\]"):
        CptProcessor(small_tokenizer, template="{caption} is red.")
    with pytest.raises(ValueError, match=r"exactly one \[MASK\]"):
        refexp_prompt("the circle", "{caption} is [MASK] or [MASK].")
    with pytest.raises(ValueError, match="span"):
        refexp_prompt("the circle", 4)
    with pytest.raises(ValueError, match="crashes in the released CPT code"):
        refexp_prompt("the circle", 5, span=(4, 10), original_quirks=True)
    assert refexp_prompt("the red circle", 6, span=(4, 7)) == "the [MASK] red circle."


def test_more_candidates_than_colours_allow_is_an_error(small_tokenizer):
    processor = CptProcessor(small_tokenizer, colors="vg")
    boxes = [[0, 0, 4, 4], [5, 0, 4, 4], [10, 0, 4, 4], [15, 0, 4, 4], [20, 0, 4, 4]]
    with pytest.raises(ValueError, match="need 3 painted copies with 2 colour"):
        processor.paint_candidates(_random_image(), boxes=boxes, max_copies=2)
    with pytest.raises(ValueError, match="3 boxes to paint but only 2 colours"):
        processor.paint_gqa(_random_image(), [[0, 0, 3, 3]] * 3, colors="vg")
    with pytest.raises(ValueError, match="`n_color` = 7"):
        vcr_coloring([[0]], [], [], ["person"], n_color=7)
    with pytest.raises(ValueError, match="one word piece"):
        CptProcessor(small_tokenizer, colors=[CptColor("magenta", (255, 0, 255))])


def test_processor_save_and_load(small_tokenizer, tmp_path):
    processor = CptProcessor(small_tokenizer, colors="vg", template="{caption} is [MASK].", max_text_length=40)
    processor.save_pretrained(tmp_path)
    loaded = CptProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert loaded.colors == PALETTES["vg"]


def test_processor_is_a_processor_mixin_whose_options_round_trip(small_tokenizer, tmp_path):
    from transformers import ProcessorMixin

    colors = [CptColor("blue", (0, 10, 255), 200), CptColor("red", (250, 0, 45), 60)]  # non-default transparency
    processor = CptProcessor(
        small_tokenizer,
        colors=colors,
        template="the {caption} is [MASK] color.",
        max_text_length=24,
        original_quirks=True,
    )
    assert isinstance(processor, ProcessorMixin)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["colors"] == [["blue", [0, 10, 255, 200]], ["red", [250, 0, 45, 60]]]
    assert (saved["template"], saved["max_text_length"], saved["original_quirks"], saved["none_word"]) == (
        "the {caption} is [MASK] color.",
        24,
        True,
        "none",
    )
    loaded = CptProcessor.from_pretrained(tmp_path)
    assert (loaded.colors, loaded.template, loaded.max_text_length, loaded.original_quirks) == (
        tuple(colors),
        processor.template,
        24,
        True,
    )
    # the same painted pixels and token ids (quirks: the copy's first mask and first colour word, as released)
    image, boxes = _random_image(), [[0, 0, 8, 8], [10, 4, 8, 8], [20, 10, 8, 8]]
    masks = [np.pad(np.ones((6, 6), np.uint8), ((y, 18 - y), (x, 26 - x))) for x, y in ((1, 1), (11, 5), (21, 11))]
    for kwargs in ({}, {"masks": masks}):
        ours = processor(image, "circle.", boxes=boxes, labels=["circle", "square", "triangle"], **kwargs)
        theirs = loaded(image, "circle.", boxes=boxes, labels=["circle", "square", "triangle"], **kwargs)
        for name in ("input_ids", "token_type_ids", "attention_mask", "mask_positions"):
            assert torch.equal(ours[name], theirs[name]), name
        assert ours["texts"] == theirs["texts"]
        for a, b in zip(ours["painted_copies"], theirs["painted_copies"]):
            assert np.array_equal(np.array(a.image), np.array(b.image)) and a.candidates == b.candidates
    # the alpha really is part of the round trip: another transparency paints other pixels
    opaque = CptProcessor(small_tokenizer, colors=[CptColor("blue", (0, 10, 255), 255), colors[1]])
    assert not np.array_equal(
        np.array(opaque.paint_candidates(image, boxes=boxes)[0].image),
        np.array(loaded.paint_candidates(image, boxes=boxes)[0].image),
    )


def test_from_pretrained_overrides_options_without_touching_the_tokenizer(small_tokenizer, tmp_path):
    CptProcessor(small_tokenizer, template=2).save_pretrained(tmp_path / "saved")
    loaded = CptProcessor.from_pretrained(tmp_path / "saved", template=1, original_quirks=True)
    assert (loaded.template, loaded.original_quirks) == (1, True)
    assert "template" not in loaded.tokenizer.init_kwargs
    loaded.save_pretrained(tmp_path / "again")
    assert "template" not in json.loads((tmp_path / "again" / "tokenizer_config.json").read_text())
    assert json.loads((tmp_path / "again" / "processor_config.json").read_text())["template"] == 1


def test_processor_call_is_paint_prompt_and_encode(small_tokenizer):
    processor = CptProcessor(small_tokenizer, colors="vg")
    image, boxes, labels = _random_image(), [[0, 0, 8, 8], [10, 4, 8, 8], [20, 10, 8, 8]], ["circle", "square", "a"]
    out = processor(image, "the circle", boxes=boxes, labels=labels)
    copies = processor.paint_candidates(image, boxes=boxes)
    encoded = processor.encode(processor.grounding_texts("the circle", labels, copies))
    assert torch.equal(out["input_ids"], encoded["input_ids"])
    assert torch.equal(out["mask_positions"], encoded["mask_positions"][:, 0])
    assert [c.candidates for c in out["painted_copies"]] == [[0, 1], [2]]
    assert all(np.array_equal(np.array(a.image), np.array(b.image)) for a, b in zip(out["painted_copies"], copies))
    with pytest.raises(ValueError, match="got 2 `labels` .* for 3 candidate boxes"):
        processor(image, "the circle", boxes=boxes, labels=labels[:2])
    with pytest.raises(ValueError, match="`images` must be one image"):
        processor([image, image], "the circle", boxes=boxes)


def test_multi_colour_copies(small_tokenizer):
    processor = CptProcessor(small_tokenizer, colors="vg")
    copies = processor.paint_candidates(_random_image(), boxes=[[0, 0, 4, 4], [5, 0, 4, 4], [10, 0, 4, 4]])
    assert [c.candidates for c in copies] == [[0, 1], [2]]
    texts = processor.grounding_texts("the circle.", ["circle", "square", "triangle"], copies)
    assert texts[0] == ("the circle is in [MASK] color.", "red circle blue square triangle")
    assert texts[1][1] == "circle square red triangle"


# ------------------------------------------------------------------------------------------------------------------
# Scoring API, few-shot tuning and CLI on a tiny UNITER
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_uniter(small_tokenizer):
    from hf_vlp.modeling.uniter import UniterConfig, UniterForPreTraining

    torch.manual_seed(0)
    config = UniterConfig(
        vocab_size=len(small_tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        visual_feat_dim=3,
        num_region_classes=4,
        max_position_embeddings=80,
    )
    return UniterForPreTraining(config).eval()


def _mean_colour_features(images, boxes):
    """Region features = mean RGB / 255 of each box (a stand-in for a CNN)."""
    out = []
    for image, image_boxes in zip(images, boxes):
        pixels = np.asarray(image, dtype=np.float32) / 255
        out.append(
            np.stack([pixels[int(b[1]) : int(b[3]) + 1, int(b[0]) : int(b[2]) + 1].mean((0, 1)) for b in image_boxes])
        )
    return out


def test_mask_logits_match_the_model_head(tiny_uniter, small_tokenizer):
    processor = CptProcessor(small_tokenizer)
    prepared = cpt.grounding_inputs(
        processor,
        _random_image(),
        [[0, 0, 8, 8], [10, 4, 8, 8]],
        "the circle",
        _mean_colour_features,
        labels=["circle", "square"],
    )
    with torch.no_grad():
        ours = cpt.mask_logits(tiny_uniter, prepared.inputs, prepared.mask_positions)[:, 0]
        full = tiny_uniter(**prepared.inputs).mlm_logits
    expected = full[torch.arange(len(full)), prepared.mask_positions]
    assert torch.allclose(ours, expected, atol=1e-5)
    scores = cpt.candidate_scores(ours, prepared)
    red = small_tokenizer.convert_tokens_to_ids("red")
    assert torch.allclose(scores, expected[:, red])


def test_ground_and_few_shot_tuning(tiny_uniter, small_tokenizer, tmp_path):
    processor = CptProcessor(small_tokenizer)
    example = dict(
        image=_random_image(),
        boxes=[[0, 0, 8, 8], [10, 4, 8, 8], [20, 10, 8, 8]],
        text="the circle",
        labels=["circle", "square", "triangle"],
        target_index=1,
    )
    result = cpt.ground(
        tiny_uniter,
        processor,
        example["image"],
        example["boxes"],
        example["text"],
        _mean_colour_features,
        labels=example["labels"],
    )
    assert result.scores.shape == (3,) and result.best_index == int(result.scores.argmax())
    rows = cpt.grounding_training_rows(processor, [example], _mean_colour_features)
    targets = [int(r["labels"][r["labels"] != -100]) for r in rows]
    red, none = small_tokenizer.convert_tokens_to_ids(["red", "none"])
    assert sorted(targets) == sorted([red, none])  # one positive, one negative, as CPT samples
    model = cpt.CptForMaskedLM(tiny_uniter)
    batch = cpt.CptDataCollator()(rows)
    before = model(**batch).loss.item()
    defaults = cpt.few_shot_training_arguments(str(tmp_path))
    assert (defaults.learning_rate, defaults.num_train_epochs, defaults.adam_beta2) == (3e-5, 40, 0.98)
    args = cpt.few_shot_training_arguments(
        str(tmp_path), learning_rate=1e-2, num_train_epochs=3, per_device_train_batch_size=2, use_cpu=True
    )
    cpt.tune(tiny_uniter, processor, [example], _mean_colour_features, training_args=args)
    assert model(**batch).loss.item() < before
    ratio = cpt.ground(
        tiny_uniter,
        processor,
        example["image"],
        example["boxes"],
        example["text"],
        _mean_colour_features,
        labels=example["labels"],
        method="ratio",
    )
    assert ratio.best_index == 1


def test_predict_relation(tiny_uniter, small_tokenizer):
    processor = CptProcessor(small_tokenizer)
    boxes = [[0, 0, 12, 12], [8, 6, 20, 18], [24, 2, 30, 9]]
    labels = ["circle", "square", "triangle"]
    forward, reverse = cpt.predict_relation(
        tiny_uniter,
        processor,
        _random_image(),
        boxes,
        (0, 1),
        labels,
        ["left of", "in", "a"],
        _mean_colour_features,
        max_masks=2,
    )
    assert forward.shape == reverse.shape == (3,)
    assert (forward <= 0).all() and (reverse <= 0).all() and not torch.equal(forward, reverse)
    with pytest.raises(ValueError, match="2 word pieces; prompts were built with 1..1 masks"):
        cpt.predict_relation(
            tiny_uniter,
            processor,
            _random_image(),
            boxes,
            (0, 1),
            labels,
            ["left of"],
            _mean_colour_features,
            max_masks=1,
        )


def test_unknown_model_family_is_an_error():
    with pytest.raises(ValueError, match="no CPT adapter for model_type"):
        cpt.adapter_for(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no CPT adapter for architecture 'no_such_arch'"):
        cpt.get_cpt_adapter("no_such_arch")
    with pytest.raises(ValueError, match="`matching_class_meaning` must be one of"):
        cpt.CptAdapterSpec(encoder="x", matching_class_meaning="belongs")
    with pytest.raises(ValueError, match="CptAdapterSpec or a CptAdapter subclass"):
        cpt.register_cpt_adapter("x", "uniter")


def test_adapters_are_data_keyed_by_architecture_name(tiny_uniter, small_tokenizer, monkeypatch):
    """An architecture declares where its encoder and heads are; CPT finds them by the architecture name."""
    from types import SimpleNamespace

    assert isinstance(cpt.get_cpt_adapter("uniter"), cpt.CptAdapterSpec)
    assert cpt.get_cpt_adapter("oscar").matching_class_meaning == "mismatch"

    class Renamed(torch.nn.Module):  # UNITER's modules under other names, as another architecture would have them
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(model_type="renamed_uniter")
            self.encoder, self.lm_head, self.match_head = tiny_uniter.uniter, tiny_uniter.mlm_head, tiny_uniter.itm_head

    monkeypatch.setitem(cpt.ADAPTERS, "renamed_uniter", None)
    cpt.register_cpt_adapter(
        "renamed_uniter", cpt.CptAdapterSpec(encoder="encoder", mlm_head="lm_head", matching_head="match_head")
    )
    prepared = cpt.grounding_inputs(
        CptProcessor(small_tokenizer),
        _random_image(),
        [[0, 0, 8, 8], [10, 4, 8, 8]],
        "the circle",
        _mean_colour_features,
        labels=["circle", "square"],
    )
    with torch.no_grad():
        expected = cpt.mask_logits(tiny_uniter, prepared.inputs, prepared.mask_positions)
        assert torch.equal(cpt.mask_logits(Renamed(), prepared.inputs, prepared.mask_positions), expected)
        assert torch.equal(
            cpt.answer_scores(Renamed(), prepared.inputs), cpt.answer_scores(tiny_uniter, prepared.inputs)
        )
        # the built-in class keeps working and is the same adapter
        assert torch.equal(
            cpt.UniterAdapter(tiny_uniter).mlm_logits(torch.ones(2, 16)),
            cpt.adapter_for(tiny_uniter).mlm_logits(torch.ones(2, 16)),
        )
    # "mismatch": the score is 1 - p[class] (Oscar+'s polluted class)
    monkeypatch.setitem(
        cpt.ADAPTERS,
        "renamed_uniter",
        cpt.CptAdapterSpec(
            encoder="encoder", mlm_head="lm_head", matching_head="match_head", matching_class_meaning="mismatch"
        ),
    )
    with torch.no_grad():
        assert torch.allclose(
            cpt.answer_scores(Renamed(), prepared.inputs), 1 - cpt.answer_scores(tiny_uniter, prepared.inputs)
        )


def _nan_features(images, boxes):
    features = _mean_colour_features(images, boxes)
    features[0][0, 0] = np.nan
    return features


def test_nan_scores_are_an_error_not_a_best_candidate(tiny_uniter, small_tokenizer):
    processor = CptProcessor(small_tokenizer)
    boxes, labels = [[0, 0, 8, 8], [10, 4, 8, 8]], ["circle", "square"]
    # NaN features are refused by the model's input check (check_visual_inputs) before any score is computed
    with pytest.raises(ValueError, match="`visual_feats` holds NaN or infinite values"):
        cpt.ground(tiny_uniter, processor, _random_image(), boxes, "the circle", _nan_features, labels=labels)
    prepared = cpt.grounding_inputs(
        processor, _random_image(), boxes, "the circle", _mean_colour_features, labels=labels
    )
    logits = torch.zeros(2, len(small_tokenizer))
    logits[0, small_tokenizer.convert_tokens_to_ids("red")] = 1.0  # the `none` logit is 0: the ratio is inf
    none_id = small_tokenizer.convert_tokens_to_ids("none")
    logits[1, none_id] = 2.0
    with pytest.raises(ValueError, match="at flat indices \\[0\\].*`none` logit"):
        cpt.candidate_scores(logits, prepared, none_id, method="ratio")
    with pytest.raises(ValueError, match="`visual_feats` holds NaN or infinite values"):
        cpt.answer_scores(
            tiny_uniter, cpt.grounding_inputs(processor, _random_image(), boxes, "the circle", _nan_features).inputs
        )


def test_cli_nan_scores_are_an_error_not_invalid_json(tiny_uniter, small_tokenizer, tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_uniter.save_pretrained(model_dir)
    small_tokenizer.save_pretrained(model_dir)
    _random_image().save(tmp_path / "image.png")
    boxes = [[0, 0, 8, 8], [10, 4, 8, 8]]
    features = np.stack(_mean_colour_features([_random_image()] * 2, [xywh_to_cpt_xyxy(boxes)] * 2))
    features[1, 0, 0] = np.nan
    np.save(tmp_path / "features.npy", features)
    from hf_vlp.cli import main

    argv = [
        "cpt",
        "ground",
        "--model",
        str(model_dir),
        "--image",
        str(tmp_path / "image.png"),
        "--boxes",
        json.dumps(boxes),
        "--text",
        "the circle",
        "--region-features",
        str(tmp_path / "features.npy"),
    ]
    assert main(argv) == 1
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]  # after the fixture's progress bars
    assert captured.out == "" and "Traceback" not in captured.err
    assert last.startswith("hf-vlp cpt ground: error: ") and "NaN or infinite" in last
    with pytest.raises(ValueError, match="NaN or infinite"):
        main(argv + ["--debug"])
    assert capsys.readouterr().out == ""


def test_cli_ground(tiny_uniter, small_tokenizer, tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_uniter.save_pretrained(model_dir)
    small_tokenizer.save_pretrained(model_dir)
    image_path = tmp_path / "image.png"
    _random_image().save(image_path)
    boxes = [[0, 0, 8, 8], [10, 4, 8, 8]]
    np.save(
        tmp_path / "features.npy", np.stack(_mean_colour_features([_random_image()] * 2, [xywh_to_cpt_xyxy(boxes)] * 2))
    )
    from hf_vlp.cli import main

    code = main(
        [
            "cpt",
            "ground",
            "--model",
            str(model_dir),
            "--image",
            str(image_path),
            "--boxes",
            json.dumps(boxes),
            "--text",
            "the circle",
            "--labels",
            "circle,square",
            "--region-features",
            str(tmp_path / "features.npy"),
            "--save-painted",
            str(tmp_path / "painted"),
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["scores"]) == 2 and out["best_box"] == boxes[out["best_index"]]
    assert sorted(p.name for p in Path(tmp_path / "painted").iterdir()) == ["painted_0.png", "painted_1.png"]
