"""Pixel columns stored as PNG or JPEG bytes in Arrow/Parquet, and decoded back on read.

`aggregation.image_compression: {obs: png}` writes each row of a uint8 (H, W[, C]) column as
an encoded image in a `binary` Arrow column whose field metadata says so
(`harvest.image: png`); the schema metadata still describes the logical column, so every
reader (`TransitionBatch.from_arrow`, hence datasets, windows, exports) gets the pixels back
as the same uint8 array. PNG is lossless; JPEG (`jpeg_quality`) is lossy and much smaller.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

IMAGE_METADATA_KEY = b"harvest.image"
IMAGE_FORMATS = ("png", "jpeg")


def check_image_column(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """Raise a ValueError naming the column unless it is uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)."""
    if np.dtype(dtype) != np.uint8 or not (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))):
        raise ValueError(
            f"aggregation.image_compression: column {name!r} is {np.dtype(dtype)}{list(shape)}; "
            "images must be uint8 (H, W) or (H, W, C) with C in 1, 3, 4"
        )


def _encode_one(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    from PIL import Image

    image = Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG", compress_level=1)
    else:
        image.convert("RGB" if image.mode == "RGBA" else image.mode).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def encode_images(pixels: np.ndarray, fmt: str, quality: int = 90, threads: int = 2) -> pa.Array:
    """One encoded image per row, as an Arrow binary array (PIL releases the GIL while encoding)."""
    with ThreadPoolExecutor(threads) as pool:
        return pa.array(list(pool.map(lambda row: _encode_one(row, fmt, quality), pixels)), type=pa.binary())


def decode_images(array: pa.Array | pa.ChunkedArray, shape: tuple[int, ...] | None) -> np.ndarray:
    """The uint8 pixels of an encoded-image column, shaped `(rows, *shape)`."""
    from PIL import Image

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    rows = [np.asarray(Image.open(io.BytesIO(value))) for value in array.to_pylist()]
    if not rows:
        return np.zeros((0, *(shape or (0, 0))), np.uint8)
    out = np.stack(rows)
    return out.reshape(len(rows), *shape) if shape is not None else out


def with_encoded_images(table: pa.Table, columns: Mapping[str, str], quality: int = 90) -> pa.Table:
    """`table` with the named uint8 tensor columns replaced by encoded images (field metadata marks them)."""
    for name, fmt in columns.items():
        index = table.schema.get_field_index(name)
        field = pa.field(name, pa.binary(), nullable=False, metadata={IMAGE_METADATA_KEY: fmt.encode()})
        pixels = table.column(name).combine_chunks().to_numpy_ndarray()  # images are (H, W[, C]) tensor columns
        table = table.set_column(index, field, encode_images(pixels, fmt, quality))
    return table


def image_format(field: pa.Field) -> str | None:
    """`png`/`jpeg` for an encoded-image field, None otherwise."""
    return (field.metadata or {}).get(IMAGE_METADATA_KEY, b"").decode() or None
