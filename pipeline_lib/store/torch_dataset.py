"""A torch Dataset over the committed samples of a store, safe in DataLoader workers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline_lib.store.store import SampleStore


class StoreDataset(Dataset):
    """Random access to committed samples: ``{"image", "label", "sample_id", "index"}``.

    The sample list is fixed at construction (from the manifests); the store is opened
    lazily, once per process, so forked or spawned workers never share handles, and reads
    go through ``SampleStore.read_rows`` (its arrays kept open; a DataLoader's batch is
    fetched in one ``__getitems__`` call).
    Inside a process that runs threads (a Prefect flow does), give the DataLoader
    ``multiprocessing_context="spawn"``: forking a threaded process is unsafe.
    ``image`` is CHW float32 in [0, 1] (or uint8 with ``as_float=False``); ``label`` is
    HW int64 with raw LoveDA values 0..7.
    """

    def __init__(self, path: str | Path, as_float: bool = True):
        store = SampleStore(path)
        self.path = store.path
        table = store.manifest()
        self.indices = table["index"].to_numpy()
        self.sample_ids = table["sample_id"].to_pylist()
        self.as_float = as_float
        self._store: SampleStore | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _open(self) -> SampleStore:
        if self._store is None or self._pid != os.getpid():
            self._store = SampleStore(self.path)
            self._pid = os.getpid()
        return self._store

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, items: list[int]) -> list[dict[str, Any]]:
        """Several samples in one store read (what a DataLoader asks for a batch)."""
        for i in items:
            if not -len(self) <= i < len(self):
                raise IndexError(f"sample {i} out of range for {len(self)} samples in {self.path}")
        rows = [int(self.indices[i]) for i in items]
        images, labels = self._open().read_rows(rows)
        out = []
        for i, row, image, label in zip(items, rows, images, labels, strict=True):
            tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
            if self.as_float:
                tensor = tensor.float().div_(255)
            out.append(
                {
                    "image": tensor,
                    "label": torch.from_numpy(label.astype(np.int64)),
                    "sample_id": self.sample_ids[i],
                    "index": row,
                }
            )
        return out

    def __getstate__(self) -> dict[str, Any]:
        # Open store handles are not sent to workers; each reopens its own.
        state = dict(self.__dict__)
        state["_store"], state["_pid"] = None, None
        return state
