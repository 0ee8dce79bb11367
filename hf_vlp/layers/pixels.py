"""Validation of `pixel_values` for the models that read images (docs/design.md, "Input vocabulary")."""


def check_pixel_values(pixel_values, num_channels, images_per_example=None):
    """Raise a `ValueError` naming `pixel_values` unless it is (batch, num_channels, height, width), or (batch,
    images_per_example, num_channels, height, width) when `images_per_example` is given (NLVR2's image pairs)."""
    if pixel_values is None:
        raise ValueError(f"`pixel_values` is required: images of shape (batch, {num_channels}, height, width).")
    expected = (
        f"(batch, {num_channels}, height, width)"
        if images_per_example is None
        else f"(batch, {images_per_example}, {num_channels}, height, width)"
    )
    dims = 4 if images_per_example is None else 5
    if (
        pixel_values.dim() != dims
        or pixel_values.shape[-3] != num_channels
        or (images_per_example is not None and pixel_values.shape[1] != images_per_example)
    ):
        raise ValueError(f"`pixel_values` must be {expected}, got shape {tuple(pixel_values.shape)}.")
