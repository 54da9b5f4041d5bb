"""Read single samples straight from the store's shard files, without zarr's async machinery.

A random single-sample read through ``zarr.Array`` costs about 1 ms of event-loop and thread
hand-offs (bench/store_codecs.py), more than decoding a 256 px label. The store's layout is
fixed and simple: one shard file per shard holding one chunk per sample (or per band of rows
of a sample: images are cut into two bands, so that one sample decodes on two cores), and
zarr's sharding index (offset, length as little-endian uint64, then crc32c) at the file's
end. This reader reads that index once per shard file version (keyed on the file's inode,
size and mtime, so a rewritten or new shard is seen), then ``pread``s the chunks asked for
and decodes them, on a thread pool where there are several (the codecs release the GIL).
An array whose codecs it does not know is left to zarr (``ShardReader.for_array`` returns
None).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec

from pipeline_lib.store.codecs import _ImageSerializer

# What zarr's shard index holds, as offset and length, for a chunk that was not written.
EMPTY_CHUNK = 2**64 - 1
Decode = Callable[[bytes], np.ndarray]


def crc32c_bytes(data: bytes) -> bytes:
    """The 4 bytes zarr's crc32c codec appends to ``data`` (the checksum as a native uint32)."""
    return np.uint32(google_crc32c.value(data)).tobytes()


def _check_crc32c(data: bytes, where: str) -> bytes:
    body, stored = data[:-4], data[-4:]
    if crc32c_bytes(body) != stored:
        raise ValueError(f"{where}: crc32c checksum mismatch")
    return body


def _chunk_decoder(codecs: tuple, chunk_shape: tuple[int, ...], dtype: np.dtype) -> Decode | None:
    """bytes -> array for the inner codec chains the store writes; None for any other."""
    kinds = tuple(type(c) for c in codecs)
    if kinds == (BytesCodec, ZstdCodec):
        zstd = codecs[1]._zstd_codec  # numcodecs Zstd: verifies the frame checksum

        def decode(data: bytes) -> np.ndarray:
            return np.frombuffer(zstd.decode(data), dtype).reshape(chunk_shape)

        return decode
    if len(codecs) == 2 and isinstance(codecs[0], _ImageSerializer) and kinds[1] is Crc32cCodec:
        image = codecs[0]

        def decode(data: bytes) -> np.ndarray:
            return image.decode_image(_check_crc32c(data, "chunk")).reshape(chunk_shape)

        return decode
    return None


def usable_cores() -> int:
    """The cores this process may run on (sched_getaffinity is Linux's; elsewhere all)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def store_sharding(array: zarr.Array) -> ShardingCodec | None:
    """``array``'s sharding codec where its layout is the store's, else None.

    The store's layout: shards of whole samples, each cut into chunks of one sample (or of
    one band of its rows), the shard index at the file's end with a crc32c, keys with "/".
    """
    codecs = array.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    index_kinds = tuple(type(c) for c in sharding.index_codecs)
    if (
        sharding.index_location.value != "end"
        or index_kinds != (BytesCodec, Crc32cCodec)
        or sharding.chunk_shape[0] != 1
        or tuple(sharding.chunk_shape[2:]) != tuple(array.shape[2:])
        or array.shape[1] % sharding.chunk_shape[1]
        or array.metadata.chunk_key_encoding.to_dict()["configuration"]["separator"] != "/"
    ):
        return None
    return sharding


class ShardReader:
    """Single rows of one store array, read from its shard files (one chunk per row or band)."""

    def __init__(self, root: Path, array: zarr.Array, decode: Decode, sharding: ShardingCodec):
        self.root = root
        self.shard_rows = array.shards[0]
        self.sample_shape = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self.fill_value = array.fill_value
        self._decode = decode
        self._band = sharding.chunk_shape[1]
        self._bands = self.sample_shape[0] // self._band
        self._index_bytes = self.shard_rows * self._bands * 16 + 4
        self._tail = "/".join(["0"] * len(self.sample_shape))
        self._indexes: dict[int, tuple[tuple[int, int, int], np.ndarray | None]] = {}
        self._cores = usable_cores()
        # Made on first use: a reader is made per process, and threads do not survive a fork.
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def for_array(cls, root: Path, array: zarr.Array) -> ShardReader | None:
        """A reader for ``array`` at ``root``, or None where its layout is not the store's."""
        sharding = store_sharding(array)
        if sharding is None:
            return None
        decode = _chunk_decoder(sharding.codecs, sharding.chunk_shape[1:], np.dtype(array.dtype))
        return None if decode is None else cls(root, array, decode, sharding)

    def _shard_path(self, shard: int) -> Path:
        return self.root / "c" / f"{shard}/{self._tail}"

    def _index(self, shard: int, fd: int, stat: os.stat_result) -> np.ndarray:
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = self._indexes.get(shard)
        if cached is not None and cached[0] == key:
            return cached[1]
        raw = os.pread(fd, self._index_bytes, stat.st_size - self._index_bytes)
        body = _check_crc32c(raw, f"{self._shard_path(shard)} shard index")
        index = np.frombuffer(body, "<u8").reshape(self.shard_rows, self._bands, 2)
        self._indexes[shard] = (key, index)
        return index

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The samples at array ``rows``; the fill value where a shard or chunk is absent.

        Each shard file touched is opened once and its index read once, however many of its
        rows are asked for; the chunks are read first, then decoded together.
        """
        out = np.full((len(rows), *self.sample_shape), self.fill_value, self.dtype)
        shards, local = np.divmod(np.asarray(rows, dtype=np.int64), self.shard_rows)
        chunks: list[tuple[np.ndarray, bytes]] = []  # (where in ``out``, encoded bytes)
        for shard in np.unique(shards):
            try:
                fd = os.open(self._shard_path(int(shard)), os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                index = self._index(int(shard), fd, os.fstat(fd))
                for i in np.flatnonzero(shards == shard):
                    for band, (offset, length) in enumerate(index[local[i]].tolist()):
                        if offset != EMPTY_CHUNK:
                            where = out[i, band * self._band : (band + 1) * self._band]
                            chunks.append((where, os.pread(fd, length, offset)))
            finally:
                os.close(fd)
        # One share per core; this thread decodes the first itself (one hand-off fewer).
        shares = [chunks[k :: self._cores] for k in range(min(self._cores, len(chunks)))]
        if len(shares) > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(self._cores - 1, "shard-decode")
        others = [self._pool.submit(self._decode_into, share) for share in shares[1:]]
        if shares:
            self._decode_into(shares[0])
        for other in others:
            other.result()
        return out

    def _decode_into(self, chunks: list[tuple[np.ndarray, bytes]]) -> None:
        for where, data in chunks:
            where[...] = self._decode(data)
