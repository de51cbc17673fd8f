"""The one device picker: what ``auto`` means and how a device that is not here is refused.

Used by training (``train.device``), the launch of several processes, and (through ``key``) by
evaluation and generation, whose flag is ``--device``.
"""

from __future__ import annotations

import torch

from moelab.errors import MoelabError


def pick_device(name: str | None, key: str = "train.device") -> torch.device:
    """``None`` or ``"auto"``: CUDA when it is available, else the CPU; otherwise the torch
    device ``name`` (``cpu``, ``cuda``, ``cuda:1``). A refusal is one line naming ``key``,
    the setting the value came from (MoelabError's key: a command writes its flag there)."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        msg = f"{{key}}: {name!r} is not a torch device (cpu, cuda, cuda:1)"
        raise MoelabError(msg, key=key) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        msg = f"{{key}}: {name} requested but CUDA is not available; use {{key}} cpu"
        raise MoelabError(msg, key=key)
    return dev
