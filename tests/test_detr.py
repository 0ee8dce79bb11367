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
