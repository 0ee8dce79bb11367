"""Shared CNN-model layers (hf_vlp/layers): the 2-D sine position embedding."""

import math

import pytest
import torch

from hf_vlp.layers.sine_position import SinePositionEmbedding, sine_position_embedding


def reference_sine(height, width, num_pos_feats, normalize=True, temperature=10000.0):
    """Element by element from the definition, for an unpadded (height, width) map."""
    out = torch.zeros(2 * num_pos_feats, height, width, dtype=torch.float64)
    for row in range(height):
        for col in range(width):
            for axis, (pos, extent) in enumerate(((row + 1, height), (col + 1, width))):
                if normalize:
                    pos = pos / (extent + 1e-6) * 2 * math.pi
                for i in range(num_pos_feats):
                    angle = pos / temperature ** (2 * (i // 2) / num_pos_feats)
                    out[axis * num_pos_feats + i, row, col] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    return out


@pytest.mark.parametrize("normalize", [True, False])
def test_sine_position_matches_definition(normalize):
    mask = torch.ones(1, 3, 5, dtype=torch.bool)
    got = sine_position_embedding(mask, num_pos_feats=6, normalize=normalize)
    assert got.shape == (1, 12, 3, 5)
    torch.testing.assert_close(got[0].double(), reference_sine(3, 5, 6, normalize), atol=1e-5, rtol=1e-5)


def test_sine_position_valid_region_ignores_padding():
    """A padded image's valid region gets the embedding of the same image unpadded (normalised by its own extent)."""
    mask = torch.zeros(2, 6, 7, dtype=torch.long)
    mask[0, :4, :5] = 1
    mask[1] = 1
    got = SinePositionEmbedding(hidden_size=8)(mask)
    torch.testing.assert_close(got[0, :, :4, :5].double(), reference_sine(4, 5, 4), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1].double(), reference_sine(6, 7, 4), atol=1e-5, rtol=1e-5)


def test_sine_position_bad_inputs():
    with pytest.raises(ValueError, match="pixel_mask"):
        sine_position_embedding(torch.ones(3, 4), num_pos_feats=4)
    with pytest.raises(ValueError, match="hidden_size"):
        SinePositionEmbedding(hidden_size=6)


# --- DETR layers, matcher and set loss --------------------------------------------------------------------------

import itertools  # noqa: E402

from torch import nn  # noqa: E402

from hf_vlp.layers.detr import (  # noqa: E402
    AttributeHead,
    DetrAttention,
    DetrDecoder,
    DetrDecoderLayer,
    DetrEncoderLayer,
    HungarianMatcher,
    SetPredictionLoss,
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    check_detection_labels,
    generalized_box_iou,
)


def test_detr_attention_loads_and_matches_nn_multihead_attention():
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ours = DetrAttention(8, 2).eval()
    ours.load_state_dict(reference.state_dict())  # same parameter names: in_proj_weight/bias, out_proj
    query, memory = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
    valid = torch.ones(3, 6, dtype=torch.bool)
    valid[1, 4:] = False
    expected = reference(query, memory, memory, key_padding_mask=~valid)[0]
    torch.testing.assert_close(ours(query, memory, memory, valid)[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_detr_layers_match_torch_transformer_layers_without_positions(pre_norm):
    """With no position embeddings a DETR layer is torch's Transformer*Layer (same parameter names)."""
    torch.manual_seed(0)
    kwargs = dict(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True, norm_first=pre_norm)
    torch_encoder = nn.TransformerEncoderLayer(**kwargs).eval()
    torch_decoder = nn.TransformerDecoderLayer(**kwargs).eval()
    encoder = DetrEncoderLayer(8, 2, 16, dropout=0.0, pre_norm=pre_norm).eval()
    decoder = DetrDecoderLayer(8, 2, 16, dropout=0.0, pre_norm=pre_norm).eval()
    encoder.load_state_dict(torch_encoder.state_dict())
    decoder.load_state_dict(torch_decoder.state_dict())
    source, queries = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(
            encoder(source, valid)[0], torch_encoder(source, src_key_padding_mask=~valid), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            decoder(queries, source, valid)[0],
            torch_decoder(queries, source, memory_key_padding_mask=~valid),
            atol=1e-5,
            rtol=1e-5,
        )


def test_detr_positions_go_to_queries_and_keys_only():
    """Adding a position to the memory changes attention weights, not the values: a constant position over every
    memory slot leaves a single-key memory's output unchanged."""
    torch.manual_seed(0)
    decoder = DetrDecoder(2, 8, 2, 16, dropout=0.0).eval()
    queries, memory = torch.zeros(1, 3, 8), torch.randn(1, 1, 8)
    with torch.no_grad():
        plain = decoder(queries, memory).intermediate_hidden_states
        shifted = decoder(queries, memory, position_embeddings=torch.randn(1, 1, 8)).intermediate_hidden_states
    assert plain.shape == (2, 1, 3, 8)
    torch.testing.assert_close(plain, shifted)
    # every intermediate output went through the final LayerNorm
    torch.testing.assert_close(plain.mean(-1), torch.zeros(2, 1, 3) + decoder.norm.bias.mean(), atol=1e-5, rtol=0)


def test_box_conversions_and_giou():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.1, 0.1]])
    xyxy = box_cxcywh_to_xyxy(boxes)
    torch.testing.assert_close(xyxy[0], torch.tensor([0.4, 0.3, 0.6, 0.7]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), boxes)
    giou = generalized_box_iou(xyxy, xyxy)
    torch.testing.assert_close(giou.diagonal(), torch.ones(2))
    # disjoint boxes: IoU 0, enclosing box area 0.2*0.4+... -> GIoU in (-1, 0)
    assert -1 < giou[0, 1] < 0


def random_targets(generator, sizes, num_classes, attributes=None):
    targets = []
    for n in sizes:
        centres = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        extents = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
        target = {
            "class_labels": torch.randint(0, num_classes, (n,), generator=generator),
            "boxes": torch.cat([centres, extents], -1),
        }
        if attributes:
            target["attributes"] = torch.randint(-1, attributes[0], (n, attributes[1]), generator=generator)
        targets.append(target)
    return targets


def test_hungarian_matching_is_the_brute_force_optimum():
    generator = torch.manual_seed(3)
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0)
    for _ in range(5):
        logits = torch.randn(2, 5, 4, generator=generator)
        boxes = torch.rand(2, 5, 4, generator=generator) * 0.4 + 0.1
        targets = random_targets(generator, [3, 2], num_classes=3)
        for image, (rows, cols) in enumerate(matcher(logits, boxes, targets)):
            cost = matcher.cost_matrix(
                logits[image], boxes[image], targets[image]["class_labels"], targets[image]["boxes"]
            )
            n = cost.shape[1]
            best = min(
                sum(float(cost[q, t]) for t, q in enumerate(perm))
                for perm in itertools.permutations(range(cost.shape[0]), n)
            )
            assert sorted(cols.tolist()) == list(range(n))
            assert float(cost[rows, cols].sum()) == pytest.approx(best, abs=1e-5)


def brute_force_set_loss(logits, boxes, targets, num_classes, eos_coef, weights):
    """Set loss by enumerating every one-to-one assignment under the matching cost, from the definitions."""
    matcher = HungarianMatcher(1.0, 5.0, 2.0)
    queries = logits.shape[1]
    num_boxes = max(sum(len(t["class_labels"]) for t in targets), 1)
    class_weight = torch.ones(num_classes + 1)
    class_weight[-1] = eos_coef
    ce_num, ce_den, l1, giou = 0.0, 0.0, 0.0, 0.0
    for image, target in enumerate(targets):
        cost = matcher.cost_matrix(logits[image], boxes[image], target["class_labels"], target["boxes"])
        n = len(target["class_labels"])
        perm = min(
            itertools.permutations(range(queries), n), key=lambda p: sum(float(cost[q, t]) for t, q in enumerate(p))
        )
        classes = torch.full((queries,), num_classes)
        for t, q in enumerate(perm):
            classes[q] = target["class_labels"][t]
            l1 += float((boxes[image, q] - target["boxes"][t]).abs().sum())
            pair = generalized_box_iou(
                box_cxcywh_to_xyxy(boxes[image, q][None]), box_cxcywh_to_xyxy(target["boxes"][t][None])
            )
            giou += 1 - float(pair)
        log_probs = logits[image].log_softmax(-1)
        for q in range(queries):
            w = float(class_weight[classes[q]])
            ce_num += -w * float(log_probs[q, classes[q]])
            ce_den += w
    return {
        "loss_ce": weights[0] * ce_num / ce_den,
        "loss_bbox": weights[1] * l1 / num_boxes,
        "loss_giou": weights[2] * giou / num_boxes,
    }


def test_set_loss_equals_brute_force_assignment_on_every_layer():
    generator = torch.manual_seed(7)
    num_classes = 3
    criterion = SetPredictionLoss(
        num_classes,
        HungarianMatcher(1.0, 5.0, 2.0),
        eos_coef=0.1,
        class_loss_coef=1.0,
        bbox_loss_coef=5.0,
        giou_loss_coef=2.0,
    )
    layer_logits = torch.randn(3, 2, 4, num_classes + 1, generator=generator)
    layer_boxes = torch.rand(3, 2, 4, 4, generator=generator) * 0.4 + 0.1
    targets = random_targets(generator, [2, 3], num_classes)
    losses = criterion(layer_logits, layer_boxes, targets)
    assert set(losses) == {
        f"{name}{suffix}" for name in ("loss_ce", "loss_bbox", "loss_giou") for suffix in ("", "_0", "_1")
    }
    for layer, suffix in ((2, ""), (0, "_0"), (1, "_1")):
        expected = brute_force_set_loss(
            layer_logits[layer], layer_boxes[layer], targets, num_classes, 0.1, (1.0, 5.0, 2.0)
        )
        for name, value in expected.items():
            assert float(losses[name + suffix]) == pytest.approx(value, rel=1e-4, abs=1e-5), name + suffix
    no_aux = SetPredictionLoss(num_classes, HungarianMatcher(1.0, 5.0, 2.0), aux_loss=False)
    assert set(no_aux(layer_logits, layer_boxes, targets)) == {"loss_ce", "loss_bbox", "loss_giou"}


def test_attribute_loss_from_definition():
    criterion = SetPredictionLoss(2, HungarianMatcher(), max_attributes=3, attribute_head=AttributeHead(2, 5, 4))
    logits = torch.randn(2, 5)  # two boxes, five attributes
    targets = torch.tensor([[1, 3, -1], [-1, -1, -1]])
    per_slot = -logits[0].log_softmax(-1)
    expected = 0.5 * (per_slot[1] + per_slot[3]) / 2  # one box with a loss
    torch.testing.assert_close(criterion.attribute_loss(logits, targets), expected)


def test_set_loss_trains_boxes_classes_and_attributes():
    torch.manual_seed(0)
    generator = torch.manual_seed(1)
    hidden = nn.Parameter(torch.randn(2, 2, 4, 8))  # (layers, batch, queries, hidden)
    class_head, box_head = nn.Linear(8, 4), nn.Linear(8, 4)
    attribute_head = AttributeHead(3, 6, 8, class_embedding_size=4, intermediate_size=8)
    for linear in (attribute_head.attr_linear1, attribute_head.attr_linear2):  # the 0.01 init learns slowly
        nn.init.normal_(linear.weight, std=0.5)
    criterion = SetPredictionLoss(3, HungarianMatcher(1.0, 5.0, 2.0), attribute_head=attribute_head, max_attributes=2)
    targets = random_targets(generator, [2, 1], 3, attributes=(6, 2))
    parameters = [hidden, *class_head.parameters(), *box_head.parameters(), *criterion.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=0.05)

    def step():
        return criterion(class_head(hidden), box_head(hidden).sigmoid(), targets, hidden)

    first = {k: float(v.detach()) for k, v in step().items()}
    assert "loss_attr" in first and "loss_attr_0" in first
    for _ in range(60):
        optimizer.zero_grad()
        sum(step().values()).backward()
        optimizer.step()
    last = {k: float(v.detach()) for k, v in step().items()}
    for name in ("loss_ce", "loss_bbox", "loss_giou", "loss_attr"):
        assert last[name] < first[name], name


def test_check_detection_labels_errors():
    good = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    check_detection_labels(good, 1, num_classes=2)
    with pytest.raises(ValueError, match="list of 2"):
        check_detection_labels(good, 2, num_classes=2)
    pixel_boxes = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[30.0, 40.0, 20.0, 10.0]])}]
    with pytest.raises(ValueError, match=r"normalized \(cx, cy, w, h\)"):
        check_detection_labels(pixel_boxes, 1, num_classes=2)
    zero_width = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.0, 0.2]])}]
    with pytest.raises(ValueError, match="boxes"):
        check_detection_labels(zero_width, 1, num_classes=2)
    with pytest.raises(ValueError, match="class_labels"):
        check_detection_labels([{**good[0], "class_labels": torch.tensor([5])}], 1, num_classes=2)


# --- CNN image processor and detection targets ------------------------------------------------------------------

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from hf_vlp.processing.cnn_images import (  # noqa: E402
    IMAGENET_MEAN,
    CnnImageProcessor,
    coco_to_detection_target,
    detection_target_from_row,
    resized_size,
)


def test_resized_size_follows_shorter_side_with_a_longer_side_cap():
    assert resized_size(480, 640, 800, 1333) == (800, 1066)
    assert resized_size(640, 480, 800, 1333) == (1066, 800)
    assert resized_size(100, 1000, 800, 1333) == (133, 1330)  # the cap wins: the shorter side shrinks
    assert resized_size(800, 900, 800, 1333) == (800, 900)


def test_cnn_image_processor_resizes_normalizes_and_pads_with_a_mask():
    processor = CnnImageProcessor(shortest_edge=32, longest_edge=64, size_divisibility=16)
    mean_colour = (np.array(IMAGENET_MEAN) * 255).round().astype(np.uint8)
    tall = Image.fromarray(np.broadcast_to(mean_colour, (40, 20, 3)).copy())
    wide = Image.fromarray(np.zeros((10, 30, 3), dtype=np.uint8))
    batch = processor([tall, wide])
    # tall 40x20 -> 64x32; wide 10x30 -> 21x63 (cap: shorter side round(64 * 10 / 30), longer int(21 * 3));
    # batch 64x64, already a multiple of 16
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["pixel_mask"].shape == (2, 64, 64)
    assert int(batch["pixel_mask"][0].sum()) == 64 * 32 and int(batch["pixel_mask"][1].sum()) == 21 * 63
    assert batch["pixel_mask"][0, :, :32].all() and not batch["pixel_mask"][0, :, 32:].any()
    assert batch["pixel_values"][0, :, :, :32].abs().max() < 0.02  # the mean colour normalizes to ~0
    assert (batch["pixel_values"][0, :, :, 32:] == 0).all()  # padding is zero
    black = batch["pixel_values"][1, :, 0, 0]
    torch.testing.assert_close(black, -torch.tensor(IMAGENET_MEAN) / torch.tensor([0.229, 0.224, 0.225]))
    padded = CnnImageProcessor(shortest_edge=20, longest_edge=None, size_divisibility=32)([tall])
    assert padded["pixel_values"].shape == (1, 3, 64, 32)  # 40x20 -> 40x20 (no change) -> padded to 64x32


def test_coco_boxes_become_normalized_cxcywh_targets():
    target = coco_to_detection_target(
        [[10, 20, 30, 40], [190, 90, 30, 30], [5, 5, 0, 10], [0, 0, 10, 10]],
        [3, 1, 2, 4],
        image_size=(100, 200),
        iscrowd=[0, 0, 0, 1],
    )
    # the second box is clipped to the image (190..200, 90..100); the empty and the crowd box are dropped
    assert target["class_labels"].tolist() == [3, 1]
    torch.testing.assert_close(
        target["boxes"], torch.tensor([[0.125, 0.4, 0.15, 0.4], [0.975, 0.95, 0.05, 0.1]]), atol=1e-6, rtol=0
    )
    check_detection_labels([target], 1, num_classes=5)
    row = {"width": 200, "height": 100, "objects": {"bbox": [[10, 20, 30, 40]], "category": [3]}}
    torch.testing.assert_close(detection_target_from_row(row)["boxes"], target["boxes"][:1])
    processed = CnnImageProcessor(shortest_edge=50)([Image.new("RGB", (200, 100))], annotations=[row])
    torch.testing.assert_close(processed["labels"][0]["boxes"], target["boxes"][:1])  # resizing keeps them
    with pytest.raises(ValueError, match="objects"):
        detection_target_from_row({"width": 2, "height": 2})
    with pytest.raises(ValueError, match="class_labels"):
        coco_to_detection_target([[0, 0, 1, 1]], [1, 2], image_size=(4, 4))
