"""Checkpoints: one folder per step, written atomically, verified by checksums on load.

``RUN_DIR/checkpoints/step_XXXXXXXX/`` holds

- ``model.safetensors``: the weights (tied weights stored once; aliases in the file metadata),
- ``state.pt``: optimizer state, step, tokens, RNG states, data position (tensors and plain
  Python only: loaded with ``torch.load(weights_only=True)``),
- ``meta.json``: step, tokens, FLOPs, config hash, and size + sha256 of the two files.

The folder is built under a temporary name and renamed into place, so a crash leaves either the
complete checkpoint or none. A checkpoint damaged later (truncated, edited) fails its checksum
and is skipped in favour of the newest valid one.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from moelab.errors import MoelabError
from moelab.io import atomic_dir, no_space_left

CHECKPOINTS = "checkpoints"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
META = "meta.json"
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


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


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    train_state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep_last``."""
    final = step_dir(run_dir, step)
    if final.is_symlink():  # a crafted folder: never delete or write through a link
        raise MoelabError(
            f"{final} is a link to {os.readlink(final)}; moelab writes checkpoints only into "
            "the run folder: remove the link and run the same command again"
        )
    if final.exists():  # same step saved before (e.g. a resumed run re-reaching it)
        shutil.rmtree(final)
    tensors, aliases = weights_state(model)
    try:
        with atomic_dir(final) as tmp:
            save_file(tensors, str(tmp / WEIGHTS), metadata={_ALIASES_KEY: json.dumps(aliases)})
            # Through a Python file: torch's own path writer reports a full disk only as
            # "unexpected pos ..."; this way the OSError (ENOSPC) is chained and recognised.
            with open(tmp / STATE, "wb") as f:
                torch.save(train_state, f)
            files = {
                name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                for name in (WEIGHTS, STATE)
            }
            (tmp / META).write_text(
                json.dumps({**meta, "step": step, "files": files}, indent=2) + "\n",
                encoding="utf-8",
            )
    except Exception as e:  # the temporary folder is gone (atomic_dir): nothing half-written
        if no_space_left(e):
            raise MoelabError(
                f"no space left on the device holding {final.parent}: checkpoint step {step} "
                f"was not written; {intact_note(run_dir)}"
            ) from None
        raise
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old.step != step:
            shutil.rmtree(old.path, ignore_errors=True)
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
    for name in (WEIGHTS, STATE):
        want = meta["files"].get(name)
        f = path / name
        if not isinstance(want, dict):
            return f"{META} has no checksum for {name}"
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want.get("bytes"):
            return f"{name} has {size} bytes, expected {want.get('bytes')} (truncated?)"
        if _sha256(f) != want.get("sha256"):
            return f"{name} fails its sha256 checksum (altered or corrupt)"
    return None


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


def load_weights(path: Path, model: nn.Module) -> None:
    """Load ``model.safetensors`` from checkpoint folder ``path`` into ``model`` (strict)."""
    file = path / WEIGHTS
    try:
        tensors = load_file(str(file))
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
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
