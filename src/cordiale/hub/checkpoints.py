"""Round checkpoints on disk: named array records as one safetensors file per committed round.

A checkpoint file is written to a temporary name, flushed to disk and renamed, so a file under its
final name is always complete; the database row that names it is the commit point (a file with no
row, left by a crash between the two, is simply overwritten when the round is redone). Loading
reads safetensors only: data, never code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as st_save

from cordiale.core.errors import ConfigError
from cordiale.core.records import ArrayRecord

__all__ = ["checkpoint_name", "load_checkpoint", "save_checkpoint"]


def checkpoint_name(server_round: int) -> str:
    return f"round-{server_round:05d}.safetensors"


def save_checkpoint(directory: Path, server_round: int, groups: dict[str, ArrayRecord]) -> str:
    """Write ``groups`` (group -> record) durably; return the file name (relative)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    order: list[str] = []
    for group, record in groups.items():
        for name, arr in record.items():
            key = f"{group}/{name}"
            tensors[key] = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)  # keeps 0-d
            order.append(key)
    name = checkpoint_name(server_round)
    final = directory / name
    tmp = directory / f".{name}.tmp"
    data = st_save(tensors, metadata={"order": "\n".join(order)})
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return name


def load_checkpoint(path: Path) -> dict[str, ArrayRecord]:
    """Read a checkpoint back into its groups, in the order they were saved."""
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} is missing: the hub's data directory is incomplete")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            order = meta["order"].split("\n") if meta.get("order") else sorted(f.keys())
            groups: dict[str, ArrayRecord] = {}
            for key in order:
                group, name = key.split("/", 1)
                groups.setdefault(group, ArrayRecord())[name] = f.get_tensor(key)
    except (SafetensorError, OSError, KeyError) as e:
        raise ConfigError(f"checkpoint {path} is corrupt: {e}") from None
    return groups
