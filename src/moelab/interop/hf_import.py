"""``moelab import HF_DIR --out RUN_DIR``: a Hugging Face model folder (a class moelab computes
exactly, :mod:`moelab.interop.hf_classes`, with a ``tokenizer.json``) as a moelab run folder
holding what ``moelab train`` would leave, its logits checked against transformers' (1e-4)
before it appears; docs/interop.md (*Import*) is the one account of the folder and the check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from moelab.data.tokenizer import load_tokenizer, special_ids
from moelab.errors import MoelabError
from moelab.interop.hf_classes import class_for_hf_config
from moelab.interop.hf_common import (
    HF_CONFIG,
    LOGIT_TOLERANCE,
    TOKENIZER,
    check_new_folder,
    max_logit_diff,
    quiet_transformers,
    require_transformers,
)
from moelab.lock import locked_new_dir
from moelab.model import build_model
from moelab.train import checkpoint as ckpt_io
from moelab.train.config import DataSection, RunConfig, TrainConfig
from moelab.train.loading import load_model
from moelab.train.rundir import CONFIG


@dataclass
class ImportResult:
    out: Path
    hf_class: str
    max_abs_logit_diff: float | None  # None when not verified


def write_run_files(
    folder: Path, model: torch.nn.Module, run_cfg, tokenizer_json: bytes, meta: dict
) -> None:
    """What the trainer leaves in a run folder, for a model that was not trained here:
    ``config.yaml``, ``tokenizer.json`` and checkpoint ``meta["step"]`` (trainer format)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(run_cfg.to_yaml(), encoding="utf-8")
    (folder / TOKENIZER).write_bytes(tokenizer_json)
    step = int(meta["step"])
    state = {"step": step, "tokens": meta.get("tokens", 0), "no_optimizer_state": True}
    ckpt_io.save_checkpoint(folder, step, model, state, meta, keep_last=1)


def _load_hf(hf_dir: Path):
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        hf_config = AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - e.g. huggingface_hub's strict-dataclass errors
        text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        detail = text[:200] or type(e).__name__
        raise MoelabError(f"{hf_dir}: cannot read {HF_CONFIG} ({detail}); fix that file") from None
    cls = class_for_hf_config(hf_config)
    cfg = cls.read_config(hf_config)
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            hf_dir, dtype=torch.float32, local_files_only=True
        )
    except SafetensorError:
        raise MoelabError(
            f"{hf_dir}: cannot load the {cls.name} weights (a .safetensors file is truncated or "
            "corrupt); save the model again"
        ) from None
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MoelabError(f"{hf_dir}: cannot load the {cls.name} weights ({first})") from None
    return cls, cfg, hf_model.eval()


def import_hf(hf_dir: str | Path, out: str | Path, verify: bool = True) -> ImportResult:
    """Import the model folder ``hf_dir`` into a new moelab run folder ``out``."""
    require_transformers("import")
    hf_dir, out = Path(hf_dir), Path(out)
    if not (hf_dir / HF_CONFIG).is_file():
        raise MoelabError(f"{hf_dir}: no {HF_CONFIG}; give a Hugging Face model folder")
    check_new_folder(out)
    tok_path = hf_dir / TOKENIZER
    if not tok_path.is_file():
        raise MoelabError(
            f"{hf_dir}: no {TOKENIZER}; save the model's fast tokenizer there "
            "(tokenizer.save_pretrained) and retry"
        )
    special_ids(load_tokenizer(tok_path), where=str(tok_path))  # refuse early without an EOT

    with quiet_transformers():
        cls, cfg, hf_model = _load_hf(hf_dir)
        state = cls.from_hf({k: v.detach() for k, v in hf_model.state_dict().items()}, cfg)
    tied = hf_model.get_output_embeddings().weight
    if not torch.equal(tied, hf_model.get_input_embeddings().weight):
        raise MoelabError(f"{hf_dir}: lm_head differs from the embedding; moelab ties them")
    model = build_model(cfg, seed=0)
    try:
        model.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise MoelabError(f"{hf_dir}: weights do not fit the {cls.name} config ({first})") from None

    train = TrainConfig(budget_steps=1, seq_len=min(256, cfg.max_seq_len)).validate()
    run_cfg = RunConfig(
        model=cfg,
        data=DataSection(dir=str(hf_dir.resolve())),
        train=train,
        notes=[
            f"imported from {hf_dir.resolve()} ({cls.name}) by moelab import",
            "data.dir is the source model folder: prepare data and set data.dir to train on",
        ],
    )
    meta = {
        "step": 0,
        "tokens": 0,
        "flops": 0.0,
        "config_hash": run_cfg.config_hash(),
        "model": cfg.name,
        "train_loss": None,
        "val_loss": None,
        "imported_from": str(hf_dir.resolve()),
        "hf_class": cls.name,
    }
    diff: float | None = None
    with locked_new_dir(out, "import", check_new_folder) as tmp:
        write_run_files(tmp, model, run_cfg, tok_path.read_bytes(), meta)
        if verify:
            # Check what a user will load: the run folder through the trainer's own loader.
            loaded, _, _ = load_model(tmp)
            with quiet_transformers():
                diff = max_logit_diff(loaded, hf_model)
            if not diff <= LOGIT_TOLERANCE:
                raise MoelabError(
                    f"import check failed: moelab logits differ from {cls.name}'s by {diff:.3g}"
                    f" (> {LOGIT_TOLERANCE}); nothing was written"
                )
    return ImportResult(out=out, hf_class=cls.name, max_abs_logit_diff=diff)
