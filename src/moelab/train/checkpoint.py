"""Checkpoints: one folder per step, ``RUN_DIR/checkpoints/step_XXXXXXXX/`` with
``model.safetensors`` (tied weights stored once, their aliases in the file's metadata),
``state.pt`` and ``meta.json``, built under a temporary name and renamed into place, verified
by checksums on load: a damaged one (truncated, edited) is skipped in favour of the newest
valid one. docs/training.md (*Checkpoints and exact resume*) is the one account of what each
file holds, and docs/distributed.md (*Checkpoints*) of the DCP shards (``sharded/``) a run of
several processes writes instead of the weights and the optimizer state.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from moelab.errors import MoelabError
from moelab.io import atomic_dir, atomic_write_text, no_space_left, sha256_file, temp_beside

CHECKPOINTS = "checkpoints"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
META = "meta.json"
SHARDED = "sharded"  # DCP folder of a checkpoint written by several processes
DCP_METADATA = ".metadata"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_ALIASES_KEY = "moelab.aliases"


@dataclass
class Checkpoint:
    step: int
    path: Path


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Checkpoint]:
    """All checkpoint folders (valid or not), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir():
            found.append(Checkpoint(_meta_step(child, int(m.group(1))), child))
    return sorted(found, key=lambda c: c.step)


def _meta_step(path: Path, named: int) -> int:
    """The step a checkpoint's own meta.json records: a folder renamed by hand must not pass
    for a newer one. The name is used only when meta.json is unreadable (the checkpoint then
    fails its check anyway)."""
    try:
        step = json.loads((path / META).read_text(encoding="utf-8")).get("step")
    except (OSError, ValueError, AttributeError):
        return named
    return step if isinstance(step, int) and not isinstance(step, bool) else named


def weights_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state dict on CPU with shared tensors (tied embeddings) stored once.
    Returns (tensors, aliases) where aliases maps a dropped name to the name it shares."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu", copy=True).contiguous()
    return tensors, aliases


def _final_dir(run_dir: str | Path, step: int) -> Path:
    """Checkpoint ``step``'s folder, refused if it is a link (a crafted folder: never delete or
    write through it)."""
    final = step_dir(run_dir, step)
    if final.is_symlink():
        raise MoelabError(
            f"{final} is a link to {os.readlink(final)}; moelab writes checkpoints only into "
            "the run folder: remove the link and run the same command again"
        )
    return final


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    train_state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep_last``."""
    final = _final_dir(run_dir, step)
    if final.exists():  # same step saved before (e.g. a resumed run re-reaching it)
        shutil.rmtree(final)
    tensors, aliases = weights_state(model)
    with _full_disk_is_one_line(run_dir, final, step), atomic_dir(final) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={_ALIASES_KEY: json.dumps(aliases)})
        _write_state_and_meta(tmp, step, train_state, meta, (WEIGHTS, STATE), {})
    _rotate(run_dir, step, keep_last)
    return final


@contextlib.contextmanager
def _full_disk_is_one_line(run_dir: str | Path, final: Path, step: int):
    try:
        yield
    except Exception as e:  # the temporary folder is gone: nothing half-written
        if no_space_left(e):
            raise MoelabError(
                f"no space left on the device holding {final.parent}: checkpoint step {step} "
                f"was not written; {intact_note(run_dir)}"
            ) from None
        raise


def _write_state_and_meta(
    folder: Path,
    step: int,
    train_state: dict[str, Any],
    meta: dict[str, Any],
    hashed: tuple[str, ...],
    sharded: dict[str, Any],
) -> None:
    # Through a Python file: torch's own path writer reports a full disk only as
    # "unexpected pos ..."; this way the OSError (ENOSPC) is chained and recognised.
    with open(folder / STATE, "wb") as f:
        torch.save(train_state, f)
    files = {
        name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
        for name in hashed
    }
    record = {**meta, "step": step, "files": files} | ({SHARDED: sharded} if sharded else {})
    (folder / META).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _rotate(run_dir: str | Path, step: int, keep_last: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old.step != step:
            shutil.rmtree(old.path, ignore_errors=True)


def staging_dir(run_dir: str | Path, step: int) -> Path:
    """A new, empty hidden folder (removed at start-up if a save dies) in which the ranks of a
    distributed save build checkpoint ``step``: DCP shards into ``SHARDED``, then
    :func:`finish_sharded` on rank 0."""
    tmp = temp_beside(step_dir(run_dir, step))[1]
    tmp.mkdir()
    return tmp


def finish_sharded(
    run_dir: str | Path,
    staging: Path,
    step: int,
    train_state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int,
) -> Path:
    """Rank 0, once every rank's shards are in ``staging/SHARDED``: write ``state.pt`` (no
    optimizer state: it is in the shards) and ``meta.json`` (sha256 of state.pt and of DCP's
    metadata file, the size of every shard file: integrity without reading the shards again),
    move the folder into place and drop all but the newest ``keep_last`` checkpoints."""
    final = _final_dir(run_dir, step)
    try:
        with _full_disk_is_one_line(run_dir, final, step):
            shards = staging / SHARDED
            sharded = {
                f.name: {"bytes": f.stat().st_size}
                | ({"sha256": sha256_file(f)} if f.name == DCP_METADATA else {})
                for f in sorted(shards.iterdir())
                if f.is_file()
            }
            _write_state_and_meta(staging, step, train_state, meta, (STATE,), sharded)
            for name in (STATE, META):
                with open(staging / name, "rb") as f:
                    os.fsync(f.fileno())
            if final.exists():  # same step saved before (a resumed run re-reaching it)
                shutil.rmtree(final)
            os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    _rotate(run_dir, step, keep_last)
    return final


def intact_note(run_dir: str | Path) -> str:
    """Which checkpoint a failed write left as the one to resume from (named, not re-hashed:
    each was verified when written, and a later resume checks it again)."""
    found = list_checkpoints(run_dir)
    if not found:
        return "no checkpoint was saved yet; free space and run the same command again"
    newest = found[-1]
    return (
        f"the newest checkpoint, {newest.path.name} (step {newest.step}), is intact: free space "
        "and run the same command again to resume from it"
    )


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MoelabError(f"{path}: {META} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise MoelabError(f"{path}: {META} is not valid JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise MoelabError(f"{path}: {META} lacks the file checksums")
    return meta


def check_checkpoint(path: Path) -> str | None:
    """None if the checkpoint is complete and intact, else the reason it is not."""
    try:
        meta = read_meta(path)
    except MoelabError as e:
        return str(e).split(": ", 1)[-1]
    sharded = meta.get(SHARDED)
    if sharded is not None and not isinstance(sharded, dict):
        return f"{META}: {SHARDED} is not a mapping of shard files"
    # Written by several processes: shards instead of model.safetensors (which `moelab
    # consolidate` may add, recorded in files).
    names = [STATE] if sharded and WEIGHTS not in meta["files"] else [WEIGHTS, STATE]
    for name in names:
        want = meta["files"].get(name)
        f = path / name
        if not isinstance(want, dict):
            return f"{META} has no checksum for {name}"
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want.get("bytes"):
            return f"{name} has {size} bytes, expected {want.get('bytes')} (truncated?)"
        if sha256_file(f) != want.get("sha256"):
            return f"{name} fails its sha256 checksum (altered or corrupt)"
    if sharded:
        if DCP_METADATA not in sharded:
            return f"{META}: no record of {SHARDED}/{DCP_METADATA}"
        for name, want in sharded.items():
            f = path / SHARDED / name
            if not isinstance(want, dict) or not f.is_file():
                return f"{SHARDED}/{name} is missing"
            size = f.stat().st_size
            if size != want.get("bytes"):
                return f"{SHARDED}/{name} has {size} bytes, expected {want.get('bytes')}"
            if "sha256" in want and sha256_file(f) != want["sha256"]:
                return f"{SHARDED}/{name} fails its sha256 checksum (altered or corrupt)"
    return None


def is_sharded(path: Path) -> bool:
    """Whether checkpoint folder ``path`` holds its weights as DCP shards only (no
    model.safetensors): written by several processes and not consolidated."""
    return not (path / WEIGHTS).is_file() and (path / SHARDED / DCP_METADATA).is_file()


def newest_valid(
    run_dir: str | Path, step: int | None = None
) -> tuple[Checkpoint | None, list[tuple[Checkpoint, str]]]:
    """The newest intact checkpoint (or the one at ``step``) and the newer ones skipped, with
    the reason each was skipped."""
    skipped: list[tuple[Checkpoint, str]] = []
    candidates = list_checkpoints(run_dir)
    if step is not None:
        candidates = [c for c in candidates if c.step == step]
    for ckpt in reversed(candidates):
        reason = check_checkpoint(ckpt.path)
        if reason is None:
            return ckpt, skipped
        skipped.append((ckpt, reason))
    return None, skipped


def no_valid_checkpoint(
    run_dir: str | Path, step: int | None, skipped: list[tuple[Checkpoint, str]]
) -> str:
    """The words for :func:`newest_valid` finding nothing, with why each one was skipped."""
    which = f"at step {step}" if step is not None else "in it"
    detail = "; ".join(f"{c.path.name}: {r}" for c, r in skipped)
    return f"{run_dir}: no valid checkpoint {which}" + (f" ({detail})" if detail else "")


def load_weights(path: Path, model: nn.Module) -> None:
    """Load the weights of checkpoint folder ``path`` into ``model`` (strict): its
    ``model.safetensors``, or, in a checkpoint of several processes, its DCP shards (read in
    this one process, straight into the model's tensors)."""
    if is_sharded(path):
        from moelab.parallel.dcp import load_sharded

        load_sharded(path / SHARDED, model)
        return
    file = path / WEIGHTS
    try:
        with safe_open(str(file), framework="pt") as f:
            tensors = f.get_tensors()  # as safetensors.torch.load_file
            aliases = json.loads((f.metadata() or {}).get(_ALIASES_KEY, "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise MoelabError(f"{file}: cannot read weights ({e})") from None
    for name, target in aliases.items():
        if target in tensors:
            tensors[name] = tensors[target]
    mismatch = first_mismatch(model, tensors)
    if mismatch is None:
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            mismatch = str(e).strip().splitlines()[-1].strip()
    if mismatch is not None:
        raise MoelabError(
            f"{file}: weights do not fit the model in the run's config ({mismatch}); this "
            "checkpoint was made with another model config: delete it, or use the run it came from"
        )


def first_mismatch(model: nn.Module, tensors: dict[str, torch.Tensor]) -> str | None:
    """The first tensor that is missing, unexpected or of another shape, in words."""
    expected = model.state_dict()
    for name, t in expected.items():
        if name not in tensors:
            return f"{name} is missing"
        if tuple(tensors[name].shape) != tuple(t.shape):
            return (
                f"{name} has shape {list(tensors[name].shape)} in the checkpoint, "
                f"{list(t.shape)} in the model"
            )
    extra = sorted(set(tensors) - set(expected))
    return f"{extra[0]} is not in the model" if extra else None


def load_train_state(path: Path) -> dict[str, Any]:
    """``state.pt`` of checkpoint folder ``path``: tensors and plain data only. Messages never
    quote torch's text, which suggests ``weights_only=False`` (that would run the pickle)."""
    file = path / STATE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise MoelabError(
            f"{file} holds objects other than tensors and plain data (refused: loading it could "
            "run code); delete that checkpoint folder to resume from an older one"
        ) from None
    except Exception as e:  # noqa: BLE001 - any other failure to read means a bad file
        raise MoelabError(
            f"{file}: cannot read training state ({type(e).__name__}); delete that checkpoint "
            "folder to resume from an older one"
        ) from None
    needed = ("step", "optimizer", "rng")
    if state.get("no_optimizer_state") if isinstance(state, dict) else False:
        raise MoelabError(
            f"{file}: written by `moelab import` without optimizer or RNG state, so training "
            "cannot resume from it; fine-tune or evaluate the run, or train a new one"
        )
    if not isinstance(state, dict) or any(k not in state for k in needed):
        raise MoelabError(
            f"{file}: not a moelab training state (needs {', '.join(needed)}); delete that "
            "checkpoint folder to resume from an older one"
        )
    return state


def consolidate_checkpoint(
    run_dir: str | Path, step: int | None = None
) -> tuple[Path, dict[str, Any] | None]:
    """Give the newest valid checkpoint of ``run_dir`` (or the one at ``step``), if it is DCP
    shards only, a ``model.safetensors`` (streamed one tensor at a time, hashed while written)
    and record it in its ``meta.json``. Returns the folder and the file's record (None: it had
    one already)."""
    found, skipped = newest_valid(run_dir, step)
    if found is None:
        raise MoelabError(no_valid_checkpoint(run_dir, step, skipped))
    if not is_sharded(found.path):
        return found.path, None
    from moelab.parallel.dcp import consolidate

    record = consolidate(found.path / SHARDED, found.path / WEIGHTS)
    meta = read_meta(found.path)
    meta["files"][WEIGHTS] = record
    atomic_write_text(found.path / META, json.dumps(meta, indent=2) + "\n")
    return found.path, record
