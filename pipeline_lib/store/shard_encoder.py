"""Encode one whole shard of a store array into zarr's sharding format, chunks on every core.

zarr writes a shard through its async codec pipeline, one hand-off per chunk, and assembles
the file by appending chunk after chunk: on 256 px samples that took twice the time the
codecs themselves need (README, "Benchmarks"). The store always writes whole shards of a
fixed, simple layout (``shard_reader.store_sharding``), so this module encodes the chunks on
a thread pool (the codecs release the GIL), lays them end to end, appends the index (offset
and length of each chunk, little-endian uint64, then its crc32c) and hands the bytes to
zarr's own store, which writes them as one object (atomically, by rename, on a local disk).
Chunks that hold only the fill value are left out, as zarr leaves them out.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from pipeline_lib.store.codecs import _ImageSerializer
from pipeline_lib.store.shard_reader import EMPTY_CHUNK, crc32c_bytes, store_sharding

Encode = Callable[[np.ndarray], bytes]


def _with_crc32c(data: bytes) -> bytes:
    return data + crc32c_bytes(data)


def _chunk_encoder(codecs: tuple) -> Encode | None:
    """array -> bytes for the inner codec chains the store writes; None for any other."""
    kinds = tuple(type(c) for c in codecs)
    if kinds == (BytesCodec, ZstdCodec):
        zstd = codecs[1]._zstd_codec  # the numcodecs Zstd zarr itself encodes with
        return lambda chunk: zstd.encode(np.ascontiguousarray(chunk))
    if len(codecs) == 2 and isinstance(codecs[0], _ImageSerializer) and kinds[1] is Crc32cCodec:
        image = codecs[0]
        return lambda chunk: _with_crc32c(image.encode_image(np.ascontiguousarray(chunk)))
    return None


class ShardEncoder:
    """Writes whole shards of one store array (see the module docstring)."""

    def __init__(self, array: zarr.Array, encode: Encode, band: int):
        self.array = array
        self.shard_rows = array.shards[0]
        self._encode = encode
        self._band = band
        self._bands = array.shape[1] // band
        self._fill = array.fill_value

    @classmethod
    def for_array(cls, array: zarr.Array) -> ShardEncoder | None:
        """An encoder for ``array``, or None where its layout or codecs are not the store's
        (the caller then writes through zarr)."""
        sharding = store_sharding(array)
        encode = None if sharding is None else _chunk_encoder(sharding.codecs)
        return None if encode is None else cls(array, encode, sharding.chunk_shape[1])

    def encode(self, samples: np.ndarray, pool: ThreadPoolExecutor) -> Callable[[], bytes | None]:
        """Start encoding the shard file holding ``samples`` (at most a shard's rows; the rest
        stay empty) on ``pool``; the returned call waits and gives its bytes, or None where
        every chunk holds only the fill value (zarr then writes no file)."""
        chunks = [
            (row, band, samples[row, band * self._band : (band + 1) * self._band])
            for row in range(len(samples))
            for band in range(self._bands)
        ]
        chunks = [c for c in chunks if (c[2] != self._fill).any()]
        futures = [pool.submit(self._encode, chunk) for _, _, chunk in chunks]

        def assemble() -> bytes | None:
            if not futures:
                return None
            encoded = [f.result() for f in futures]
            index = np.full((self.shard_rows, self._bands, 2), EMPTY_CHUNK, "<u8")
            offset = 0
            for (row, band, _), data in zip(chunks, encoded, strict=True):
                index[row, band] = offset, len(data)
                offset += len(data)
            return b"".join([*encoded, _with_crc32c(index.tobytes())])

        return assemble

    def write(self, shard_id: int, data: bytes | None) -> None:
        """Put shard ``shard_id``'s file through zarr's store (a missing one stays missing)."""
        coords = (shard_id,) + (0,) * (self.array.ndim - 1)
        key = f"{self.array.path}/{self.array.metadata.encode_chunk_key(coords)}"
        store = self.array.store_path.store
        if data is None:
            sync(store.delete(key))
        else:
            sync(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def write_shard(
    arrays: tuple[zarr.Array, ...], shard_id: int, blocks: tuple, pool: ThreadPoolExecutor
) -> None:
    """Write shard ``shard_id`` of each array from its block of samples, every array's
    chunks encoding at once on ``pool``; an array of another layout goes through zarr."""
    pending = []
    for array, block in zip(arrays, blocks, strict=True):
        encoder = ShardEncoder.for_array(array)
        pending.append((array, block, encoder, encoder and encoder.encode(block, pool)))
    for array, block, encoder, assemble in pending:
        if encoder is None:
            start = shard_id * array.shards[0]
            padded = np.full((array.shards[0], *block.shape[1:]), array.fill_value, block.dtype)
            padded[: len(block)] = block
            array[start : start + len(padded)] = padded
        else:
            encoder.write(shard_id, assemble())
