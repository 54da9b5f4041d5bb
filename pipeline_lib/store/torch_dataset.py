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

    The sample list is fixed at construction (from the manifests); the Zarr arrays are
    opened lazily, once per process, so forked or spawned workers never share handles.
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
        self._arrays = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _open(self):
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = SampleStore(self.path).arrays()
            self._pid = os.getpid()
        return self._arrays

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples in {self.path}")
        images, labels = self._open()
        row = int(self.indices[i])
        image = torch.from_numpy(np.ascontiguousarray(images[row].transpose(2, 0, 1)))
        if self.as_float:
            image = image.float().div_(255)
        label = torch.from_numpy(labels[row].astype(np.int64))
        return {"image": image, "label": label, "sample_id": self.sample_ids[i], "index": row}

    def __getstate__(self) -> dict[str, Any]:
        # Open Zarr handles are not sent to workers; each reopens its own.
        state = dict(self.__dict__)
        state["_arrays"], state["_pid"] = None, None
        return state
