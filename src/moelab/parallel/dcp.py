"""Sharded checkpoints with torch.distributed.checkpoint (DCP), loadable at any world size and
expert-parallel degree, and consolidation to one safetensors file. A DCP folder holds
``model.*`` (every weight under its global name and shape: expert weights as full ``(E, ...)``
tensors, however they were split) and optionally ``optim.*`` (AdamW state keyed the same way);
docs/distributed.md (*Checkpoints*) is the one account of how runs write and read them. No
function here gathers full weights or optimizer state onto a rank: :func:`consolidate` reads
one tensor at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import struct
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from moelab.errors import MoelabError
from moelab.io import atomic_path

MODEL, OPTIM = "model", "optim"
DCP_METADATA = ".metadata"


def _no_dist() -> bool:
    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns that it 'assumes' a single process even when told so (no_dist=True)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def is_sharded_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / DCP_METADATA).is_file()


def save_sharded(
    folder: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    process_group=None,
    asynchronous: bool = False,
):
    """Write ``model`` (and ``optimizer``) to DCP folder ``folder``. Collective: every rank
    calls it with the same folder (a shared filesystem across nodes) and writes its own shards.

    ``asynchronous`` (under a process group): copy the state to CPU memory, write it in a
    background thread and return that write's Future (``.result()`` waits); the caller must
    then give a ``process_group`` used by nothing else (e.g. ``dist.new_group(backend="gloo")``),
    so the background collectives never interleave with training's. Otherwise returns None
    when the shards are written."""
    state = {MODEL: get_model_state_dict(model)}
    if optimizer is not None:
        state[OPTIM] = get_optimizer_state_dict(model, optimizer)
    if asynchronous and not _no_dist():
        return dcp.async_save(state, checkpoint_id=str(folder), process_group=process_group)
    with _quiet_single_process():
        dcp.save(state, checkpoint_id=str(folder), no_dist=_no_dist(), process_group=process_group)
    return None


def load_sharded(
    folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Load a DCP folder into ``model`` (and ``optimizer``), whatever the world size and
    expert-parallel degree it was saved with. Collective under a process group."""
    folder = Path(folder)
    if not is_sharded_checkpoint(folder):
        raise MoelabError(f"{folder}: not a sharded checkpoint (no {DCP_METADATA} file)")
    state = {MODEL: get_model_state_dict(model)}
    if optimizer is not None:
        state[OPTIM] = get_optimizer_state_dict(model, optimizer)
    try:
        with _quiet_single_process():
            dcp.load(state, checkpoint_id=str(folder), no_dist=_no_dist())
    except (dcp.CheckpointException, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MoelabError(
            f"{folder}: sharded checkpoint does not fit this model ({first[:300]})"
        ) from None
    set_model_state_dict(model, state[MODEL])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state[OPTIM])


def _model_entries(folder: Path) -> dict[str, TensorStorageMetadata]:
    """Global name -> DCP metadata of every model weight in DCP folder ``folder``."""
    if not is_sharded_checkpoint(folder):
        raise MoelabError(f"{folder}: not a sharded checkpoint (no {DCP_METADATA} file)")
    prefix = MODEL + "."
    entries = {
        fqn[len(prefix) :]: md
        for fqn, md in FileSystemReader(str(folder)).read_metadata().state_dict_metadata.items()
        if fqn.startswith(prefix) and isinstance(md, TensorStorageMetadata)
    }
    if not entries:
        raise MoelabError(f"{folder}: the sharded checkpoint holds no model weights")
    return entries


# safetensors' names of torch dtypes
_SAFETENSORS_DTYPE = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def consolidate(folder: str | Path, out_file: str | Path) -> dict[str, Any]:
    """Write the weights of DCP folder ``folder`` to one safetensors file, one tensor at a
    time (never the whole model in memory), hashing while writing; atomically (a temporary
    name, renamed at the end). Returns ``{"bytes", "sha256"}`` of the file, the format
    ``meta.json`` records."""
    folder, out = Path(folder), Path(out_file)
    entries = _model_entries(folder)
    header: dict[str, Any] = {}
    offset = 0
    for name, md in sorted(entries.items()):
        if md.properties.dtype not in _SAFETENSORS_DTYPE:
            raise MoelabError(f"{folder}: {name} has dtype {md.properties.dtype}, not writable")
        n = math.prod(md.size) * torch.empty((), dtype=md.properties.dtype).element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPE[md.properties.dtype],
            "shape": list(md.size),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned (safetensors' own padding)
    digest = hashlib.sha256()
    with atomic_path(out) as tmp, open(tmp, "wb") as f:

        def write(chunk: bytes) -> None:
            f.write(chunk)
            digest.update(chunk)

        write(struct.pack("<Q", len(blob)) + blob)
        for name, md in sorted(entries.items()):  # each weight read alone (only its pieces)
            t = torch.empty(tuple(md.size), dtype=md.properties.dtype)
            reader = FileSystemReader(str(folder))
            with _quiet_single_process():
                dcp.load({f"{MODEL}.{name}": t}, storage_reader=reader, no_dist=True)
            write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            del t
    return {"bytes": out.stat().st_size, "sha256": digest.hexdigest()}


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim_state: dict
) -> None:
    """Load full (unsharded) weights and a name-keyed optimizer state, present on every rank,
    into a sharded model and its optimizer: a checkpoint written by one process, resumed by
    several."""
    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=full)
    set_optimizer_state_dict(model, optimizer, optim_state, options=full)
