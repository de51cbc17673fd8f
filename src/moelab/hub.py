"""Loading a Hugging Face dataset without hanging when there is no network.

Shared by ``hf:`` text sources (moelab.data) and ``hf:`` evaluation tasks (moelab.eval). Without
network the hub is switched to offline mode for the one call, so a cached dataset still loads and
a missing one fails at once instead of retrying for tens of seconds.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from moelab.errors import MoelabError

UNREACHABLE = "huggingface.co is unreachable and it is not in the local cache"


def hub_reachable(timeout_s: float = 3.0) -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout_s):
            return True
    except OSError:
        return False


def offline_requested() -> bool:
    flags = (os.environ.get(v, "").upper() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(flag in ("1", "ON", "YES", "TRUE") for flag in flags)


@contextlib.contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Offline mode for this call only: the hub reads HF_HUB_OFFLINE once, at import, so the
    imported constants are switched and switched back afterwards."""
    modules = []
    for module_name in ("huggingface_hub.constants", "datasets.config") if offline else ():
        with contextlib.suppress(ImportError):  # import all before patching any
            modules.append(importlib.import_module(module_name))
    patched = [(module, module.HF_HUB_OFFLINE) for module in modules]
    for module in modules:
        module.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for module, value in patched:
            module.HF_HUB_OFFLINE = value


def load_hf_dataset(
    name: str,
    config: str | None,
    split: str,
    *,
    what: str,
    missing_package: str,
    fix: str = "",
    key: str | None = None,
) -> Any:
    """``datasets.load_dataset(name, config, split=split)`` or one MoelabError line.

    ``what`` starts every message (e.g. ``"news: Hugging Face dataset 'x'"``); ``missing_package``
    is the whole message when ``datasets`` is not installed; ``fix`` is appended to load failures;
    ``key``: the argument the messages name as ``{key}`` (:class:`MoelabError`).
    """
    offline = offline_requested() or not hub_reachable()
    with hub_offline(offline):
        try:
            import datasets
        except ImportError:
            raise MoelabError(missing_package, key) from None
        try:
            return datasets.load_dataset(name, config, split=split)
        except Exception as e:  # the library raises many types; all mean "could not load"
            why = (
                UNREACHABLE if offline else (str(e).splitlines()[0] if str(e) else type(e).__name__)
            )
            raise MoelabError(f"{what}: cannot load split {split!r}: {why}{fix}", key) from None
