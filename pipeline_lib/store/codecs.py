"""The store's array codecs: lossless image codecs from imagecodecs as zarr v3 serializers.

imagecodecs' image codecs are numcodecs codecs, not zarr v3 ones, and they turn an array into
bytes, so in zarr v3 they go in ``serializer=`` (not ``compressors=``). Each class here wraps
one through zarr's numcodecs adapter, so ``zarr.json`` names it ``numcodecs.imagecodecs_<id>``
with the numcodecs configuration. A reader needs ``imagecodecs`` installed and the name
registered: importing this module (or ``pipeline_lib.store``) does it, and the package's
``zarr.codecs`` entry points make plain ``zarr.open_group`` do it by itself.

Labels keep zarr's own ``zstd`` codec (in the v3 specification, readable by any Zarr
implementation); only images need imagecodecs. Every codec here is lossless.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import warnings
from typing import Any, ClassVar

import imagecodecs.numcodecs
import numcodecs
import numpy as np
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
from zarr.codecs.numcodecs._codecs import _NumcodecsArrayBytesCodec
from zarr.errors import ZarrUserWarning
from zarr.registry import register_codec

from pipeline_lib.choices import IMAGE_CODECS
from pipeline_lib.errors import ConfigError


class _ImageSerializer(_NumcodecsArrayBytesCodec):
    """An imagecodecs numcodecs codec as a zarr v3 array-to-bytes codec of chunks of one sample."""

    def __init__(self, **codec_config: Any) -> None:
        # zarr warns on every construction (also on every open) that numcodecs codecs are
        # outside the v3 specification; that is said once, in the module docstring.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ZarrUserWarning)
            super().__init__(**codec_config)

    # Held around every call into a codec library that is unsafe to call from several
    # threads at once; None where calls may overlap.
    _lock: ClassVar[threading.Lock | None] = None

    def encode_image(self, image: np.ndarray) -> bytes:
        with self._lock or contextlib.nullcontext():
            return self._codec.encode(image)

    def decode_image(self, data: bytes) -> np.ndarray:
        with self._lock or contextlib.nullcontext():
            return np.asarray(self._codec.decode(data))

    async def _encode_single(self, chunk_data, chunk_spec):
        # A chunk is (1, rows, W, 3) of one sample: image codecs want (rows, W, 3). In a
        # thread, as zarr's own adapter does, so a shard's chunks encode on every core.
        image = np.ascontiguousarray(chunk_data.as_ndarray_like()).reshape(chunk_spec.shape[1:])
        encoded = await asyncio.to_thread(self.encode_image, image)
        return chunk_spec.prototype.buffer.from_bytes(encoded)

    async def _decode_single(self, chunk_data, chunk_spec):
        image = await asyncio.to_thread(self.decode_image, chunk_data.to_bytes())
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(image.reshape(chunk_spec.shape))


class Jpegxl(_ImageSerializer, codec_name="imagecodecs_jpegxl"):
    pass


class Webp(_ImageSerializer, codec_name="imagecodecs_webp"):
    pass


class Htj2k(_ImageSerializer, codec_name="imagecodecs_htj2k"):
    # OpenJPH (imagecodecs 2026.3.6): of 15 fresh processes each encoding 8 images on 8
    # threads at once, one wrote a codestream that decoded to other pixels; one at a time
    # it never did. The shard commit's read-back caught it as a checksum mismatch.
    _lock = threading.Lock()


class Png(_ImageSerializer, codec_name="imagecodecs_png"):
    pass


class Qoi(_ImageSerializer, codec_name="imagecodecs_qoi"):
    pass


SERIALIZERS: dict[str, type[_ImageSerializer]] = {
    "jpegxl": Jpegxl,
    "webp": Webp,
    "htj2k": Htj2k,
    "png": Png,
    "qoi": Qoi,
}
for _cls in SERIALIZERS.values():
    numcodecs.register_codec(getattr(imagecodecs.numcodecs, _cls.__name__))
    register_codec(_cls.codec_name, _cls)

# Lossless settings of each image codec, chosen by bench/store_codecs.py (see the README).
LOSSLESS: dict[str, dict[str, Any]] = {
    "jpegxl": {"lossless": True, "effort": 1, "numthreads": 1},
    "webp": {"lossless": True, "level": 0, "method": 0},
    "htj2k": {"reversible": True},
    "png": {"level": 1},
    "qoi": {},
}
# The default, by the figures in the README's "Benchmarks".
DEFAULT_IMAGE_CODEC = IMAGE_CODECS[0]


def image_codecs(name: str = DEFAULT_IMAGE_CODEC, level: int = 3) -> dict[str, Any]:
    """``serializer`` and ``compressors`` for the images array (``level`` is zstd's).

    An image codec is followed by crc32c, so a flipped byte fails the read as zstd's
    checksum does for labels.
    """
    if name == "zstd":
        return {"serializer": BytesCodec(), "compressors": ZstdCodec(level=level, checksum=True)}
    if name not in SERIALIZERS:
        raise ConfigError(f"unknown image codec {name!r}; choose one of {', '.join(IMAGE_CODECS)}")
    return {"serializer": SERIALIZERS[name](**LOSSLESS[name]), "compressors": Crc32cCodec()}


def label_codecs(level: int = 3) -> dict[str, Any]:
    """``serializer`` and ``compressors`` for the labels array: spec zstd with a checksum."""
    return {"serializer": BytesCodec(), "compressors": ZstdCodec(level=level, checksum=True)}
