"""Opening a run for evaluation: model, tokenizer, checkpoint identity and MoE capacity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moelab.data.tokenizer import load_tokenizer
from moelab.devices import pick_device
from moelab.errors import MoelabError
from moelab.flops import palm_flops_per_token
from moelab.train import load_model
from moelab.train.validation import moe_layers


@dataclass
class OpenedRun:
    run_dir: Path
    model: torch.nn.Module
    run_cfg: Any  # moelab.train.RunConfig
    meta: dict[str, Any]  # the checkpoint's meta.json
    tokenizer: Any  # tokenizers.Tokenizer

    @property
    def checkpoint(self) -> dict[str, Any]:
        """Which weights were evaluated: step and :func:`weights_sha256`."""
        return {"step": self.meta.get("step"), "sha256": weights_sha256(self.meta)}


def weights_sha256(meta: dict[str, Any]) -> str | None:
    """A checkpoint's identity from its meta.json: the SHA-256 of model.safetensors or, for a
    checkpoint of several processes (DCP shards only), of DCP's ``.metadata``, which names every
    shard's pieces."""
    weights = meta.get("files", {}).get("model.safetensors", {})
    return weights.get("sha256") or meta.get("sharded", {}).get(".metadata", {}).get("sha256")


def open_run(run_dir: str | Path, step: int | None = None, device: str | None = None) -> OpenedRun:
    """Load the newest valid checkpoint of ``run_dir`` (or ``step``) and the run's tokenizer."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MoelabError(f"run folder {run_dir} does not exist")
    model, run_cfg, meta = load_model(run_dir, step=step, device=pick_device(device, "device"))
    tok_path = run_dir / "tokenizer.json"
    if not tok_path.is_file():
        data_tok = Path(run_cfg.data.dir) / "tokenizer.json"
        if not data_tok.is_file():
            raise MoelabError(f"{run_dir}: no tokenizer.json in the run or its data folder")
        tok_path = data_tok
    return OpenedRun(run_dir, model, run_cfg, meta, load_tokenizer(tok_path))


def parse_capacity(value: Any, key: str = "capacity_factor") -> float | None:
    """A MoE capacity factor as a user gives it: a number > 0, or None / "dropless" / "none" /
    "null" for dropless (the default). ``key`` names the setting in the error line."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "dropless")):
        return None
    try:
        factor = float(value)
    except (TypeError, ValueError):
        raise MoelabError(f"{{key}} {value!r}: expected a number or 'dropless'", key) from None
    if not factor > 0:
        raise MoelabError(f"{{key}} must be > 0, got {factor}", key)
    return factor


def capacity_report(model: torch.nn.Module) -> dict[str, Any]:
    layers = moe_layers(model)
    if not layers:
        return {"moe": False}
    cf = layers[0].eval_capacity_factor
    return {"moe": True, "eval_capacity_factor": cf, "dropless": cf is None}


def forward_flops(model: torch.nn.Module, tokens: int, sequences: int) -> float | None:
    """Estimated forward FLOPs: a third of PaLM's 6N + 12 L T D per token (moelab.flops), with T
    the mean sequence length. An upper bound here: only scored positions reach the output
    projection."""
    cfg = getattr(model, "cfg", None) if model is not None else None
    if cfg is None or tokens <= 0:
        return None
    mean_len = max(1, round(tokens / max(sequences, 1)))
    return palm_flops_per_token(cfg, seq_len=mean_len) / 3.0 * tokens
