"""Pixel columns as PNG or JPEG bytes: which columns qualify, exact PNG round trips for every
channel layout, JPEG close to the source, and Arrow tables whose readers get the pixels back."""

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pytest

from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.images import (
    IMAGE_METADATA_KEY,
    check_image_column,
    decode_images,
    encode_images,
    image_format,
    with_encoded_images,
)
from tests.rollout.test_batch import random_batch


def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 1), (6, 5, 3), (6, 5, 4)])
def test_check_image_column_accepts_uint8_grey_rgb_and_rgba(shape):
    check_image_column("obs", np.uint8, shape)


@pytest.mark.parametrize(
    "dtype, shape, described",
    [
        (np.float32, (6, 5, 3), r"float32\[6, 5, 3\]"),
        (np.uint8, (6, 5, 2), r"uint8\[6, 5, 2\]"),
        (np.uint8, (30,), r"uint8\[30\]"),
    ],
)
def test_check_image_column_refuses_other_columns_naming_them(dtype, shape, described):
    with pytest.raises(
        ValueError, match=rf"aggregation.image_compression: column 'next_obs' is {described}; images must be uint8"
    ):
        check_image_column("next_obs", dtype, shape)


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 1), (6, 5, 3), (6, 5, 4)])
def test_png_gives_back_the_exact_pixels_of_every_channel_layout(shape):
    pixels = noise((3, *shape))
    encoded = encode_images(pixels, "png")
    assert encoded.type == pa.binary() and len(encoded) == 3
    assert all(value.as_py().startswith(b"\x89PNG") for value in encoded)
    np.testing.assert_array_equal(decode_images(encoded, shape), pixels)


def test_jpeg_is_lossy_but_close_on_a_smooth_picture():
    ramp = np.broadcast_to(np.linspace(0, 255, 32).astype(np.uint8)[None, :, None], (32, 32, 3))
    pixels = np.stack([ramp, 255 - ramp])
    encoded = encode_images(pixels, "jpeg", quality=90)
    assert all(value.as_py().startswith(b"\xff\xd8") for value in encoded)
    back = decode_images(encoded, (32, 32, 3))
    assert back.dtype == np.uint8 and back.shape == pixels.shape
    assert np.abs(back.astype(int) - pixels).mean() < 3


def test_decode_reads_chunked_arrays_and_gives_an_empty_block_for_no_rows():
    pixels = noise((4, 3, 2))
    encoded = encode_images(pixels, "png")
    chunked = pa.chunked_array([encoded.slice(0, 1), encoded.slice(1)])
    np.testing.assert_array_equal(decode_images(chunked, (3, 2)), pixels)
    empty = decode_images(pa.array([], pa.binary()), (3, 2))
    assert empty.shape == (0, 3, 2) and empty.dtype == np.uint8


def test_an_encoded_table_is_marked_and_reads_back_as_the_same_pixels():
    schema = BatchSchema.for_spaces(gym.spaces.Box(0, 255, (8, 7, 3), np.uint8), gym.spaces.Discrete(2))
    batch = random_batch(schema, 5)
    batch.columns["obs"] = noise((5, 8, 7, 3), seed=1)
    table = pa.Table.from_batches([batch.to_arrow(schema)])
    encoded = with_encoded_images(table, {"obs": "png"})
    assert encoded.schema.field("obs").type == pa.binary()
    assert encoded.schema.field("obs").metadata == {IMAGE_METADATA_KEY: b"png"}
    assert image_format(encoded.schema.field("obs")) == "png"
    assert image_format(encoded.schema.field("next_obs")) is None  # not named: left as a tensor
    assert encoded.column_names == table.column_names
    back = TransitionBatch.from_arrow(encoded)
    np.testing.assert_array_equal(back["obs"], batch["obs"])
    np.testing.assert_array_equal(back["next_obs"], batch["next_obs"])
