"""``moelab export RUN_DIR --to hf --out DIR``: a run's checkpoint as a Hugging Face model folder
(``config.json``, ``model.safetensors`` in the class's own layout by its ``save_pretrained``,
the tokenizer files, ``moelab_export.json``), loaded back with ``from_pretrained`` and checked
against moelab's logits (1e-4) before it appears; docs/interop.md (*Export*) is the one
account of the folder and the check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from moelab.errors import MoelabError
from moelab.eval.runs import weights_sha256
from moelab.interop.hf_base import SpecialIds
from moelab.interop.hf_classes import class_for_model
from moelab.interop.hf_common import (
    LOGIT_TOLERANCE,
    TOKENIZER,
    check_new_folder,
    hf_tokenizer,
    max_logit_diff,
    quiet_transformers,
    require_transformers,
)
from moelab.lock import locked_new_dir
from moelab.train import load_model, read_run_config

EXPORT_INFO = "moelab_export.json"


@dataclass
class ExportResult:
    out: Path
    hf_class: str
    step: int | None
    max_abs_logit_diff: float | None  # None when not verified


def _run_tokenizer(run_dir: Path, data_dir: str) -> Path:
    for candidate in (run_dir / TOKENIZER, Path(data_dir) / TOKENIZER):
        if candidate.is_file():
            return candidate
    raise MoelabError(f"{run_dir}: no {TOKENIZER} in the run or its data folder")


def build_hf_model(hf_config, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The transformers model holding ``state``, built without initialising weights twice."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        hf_model = AutoModelForCausalLM.from_config(hf_config)
    try:
        hf_model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise MoelabError(f"weights do not match {type(hf_model).__name__}: {first}") from None
    return hf_model


def export_hf(
    run_dir: str | Path, out: str | Path, step: int | None = None, verify: bool = True
) -> ExportResult:
    """Export the newest valid checkpoint of ``run_dir`` (or ``step``) to folder ``out``."""
    require_transformers("export")
    from transformers import AutoModelForCausalLM

    run_dir, out = Path(run_dir), Path(out)
    check_new_folder(out)
    cls = class_for_model(read_run_config(run_dir).model)  # refuse before any heavy work
    model, run_cfg, meta = load_model(run_dir, step=step, device="cpu")
    cfg = run_cfg.model
    tok_path = _run_tokenizer(run_dir, run_cfg.data.dir)
    with quiet_transformers():
        fast_tok, eot, pad = hf_tokenizer(tok_path, cfg.max_seq_len)
        hf_config = cls.make_config(cfg, SpecialIds(eot=eot, pad=pad))
        state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
        hf_model = build_hf_model(hf_config, cls.to_hf(state, cfg))
        with locked_new_dir(out, "export", check_new_folder) as tmp:
            hf_model.save_pretrained(tmp, safe_serialization=True)
            fast_tok.save_pretrained(tmp)
            diff: float | None = None
            if verify:
                reloaded = AutoModelForCausalLM.from_pretrained(
                    tmp, dtype=torch.float32, local_files_only=True
                )
                diff = max_logit_diff(model, reloaded)
                if not diff <= LOGIT_TOLERANCE:  # also catches NaN
                    raise MoelabError(
                        f"export check failed: {cls.name} logits differ from moelab's by {diff:.3g}"
                        f" (> {LOGIT_TOLERANCE}); nothing was written"
                    )
            info = {
                "hf_class": cls.name,
                "source_run": str(run_dir.resolve()),
                "step": meta.get("step"),
                "source_weights_sha256": weights_sha256(meta),
                "max_abs_logit_diff": diff,
                "moelab_model": run_cfg.model.name,
            }
            (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return ExportResult(out=out, hf_class=cls.name, step=meta.get("step"), max_abs_logit_diff=diff)
