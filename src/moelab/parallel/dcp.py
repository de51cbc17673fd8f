"""Sharded checkpoints with torch.distributed.checkpoint (DCP), loadable at any world size and
expert-parallel degree, and consolidation to one safetensors file.

A sharded checkpoint is a DCP folder holding ``model.*`` (every weight under its global name
and shape: expert weights as full ``(E, ...)`` tensors, however they were split) and optionally
``optim.*`` (AdamW state keyed the same way). Saving is collective: every rank writes its own
shards. Loading reads whatever pieces the current layout needs, so a checkpoint written by 8
ranks with 8-way expert parallelism loads into 2 ranks with 2-way, or into one process (no
process group needed) - the thing fairseq's per-rank expert files could not do.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save as safetensors_bytes
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
from moelab.io import atomic_write_bytes

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
    folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Write ``model`` (and ``optimizer``) to DCP folder ``folder``. Collective: every rank
    calls it with the same folder (a shared filesystem across nodes)."""
    state = {MODEL: get_model_state_dict(model)}
    if optimizer is not None:
        state[OPTIM] = get_optimizer_state_dict(model, optimizer)
    with _quiet_single_process():
        dcp.save(state, checkpoint_id=str(folder), no_dist=_no_dist())


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


def read_sharded_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The full model weights of a DCP folder as plain CPU tensors, in one process."""
    folder = Path(folder)
    if not is_sharded_checkpoint(folder):
        raise MoelabError(f"{folder}: not a sharded checkpoint (no {DCP_METADATA} file)")
    reader = FileSystemReader(str(folder))
    prefix = MODEL + "."
    tensors = {
        fqn: torch.empty(tuple(md.size), dtype=md.properties.dtype)
        for fqn, md in reader.read_metadata().state_dict_metadata.items()
        if fqn.startswith(prefix) and isinstance(md, TensorStorageMetadata)
    }
    if not tensors:
        raise MoelabError(f"{folder}: the sharded checkpoint holds no model weights")
    with _quiet_single_process():
        dcp.load(tensors, storage_reader=reader, no_dist=True)
    return {fqn[len(prefix) :]: t for fqn, t in tensors.items()}


def consolidate(folder: str | Path, out_file: str | Path) -> Path:
    """Write the weights of DCP folder ``folder`` to one safetensors file (atomically), the
    format ``moelab.train.load_model``, evaluation and export read."""
    tensors = {k: v.contiguous() for k, v in read_sharded_weights(folder).items()}
    out = Path(out_file)
    atomic_write_bytes(out, safetensors_bytes(tensors))
    return out


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gather a (sharded) model's full weights onto rank 0's CPU (other ranks get an empty
    dict). Collective."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Gather the optimizer state, keyed by parameter name, onto rank 0's CPU. Collective."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full (unsharded) weights, present on every rank, into a (sharded) model."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load a name-keyed full optimizer state (present on every rank) into a sharded one."""
    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )
