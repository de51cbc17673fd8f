"""The study's data: prepare the configured sources (or the built-in corpus) once, in DIR/data.

``moelab.data.prepare`` is idempotent (it fingerprints inputs and settings), so a rerun of the
study finds the folder ready and a changed data section is refused instead of silently mixed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from moelab.errors import MoelabError
from moelab.study.plan.config import StudyConfig


def prepare_study_data(cfg: StudyConfig, out: Path, echo: Callable[[str], None]) -> Path:
    from moelab.data import PreparedData, prepare
    from moelab.data.prepare import PrepareSettings

    d = cfg.data
    if d.prepared:  # then ``out`` is that folder (sweep.prepared_dir)
        if not (out / "manifest.json").is_file():
            raise MoelabError(
                f"data.prepared: {out} is not a prepared data folder; run `moelab prepare` "
                "or leave data.prepared empty so the study prepares its sources"
            )
        PreparedData.open(out)
        return out
    sources = [f"{name}={d.resolve(loc)}" for name, loc in d.sources.items()]
    heldout = [f"{name}={d.resolve(loc)}" for name, loc in d.heldout.items()]
    # prepare()'s settings but the vocabulary (data.vocab_size), and two of its arguments
    known = {f.name for f in fields(PrepareSettings)} - {"vocab_size"} | {"workers", "tokenizer"}
    unknown = sorted(set(d.options) - known)
    if unknown:
        raise MoelabError(
            f"unknown config key data.options.{unknown[0]}; valid keys: {', '.join(sorted(known))}"
        )
    what = "the built-in corpus" if not sources else f"{len(sources)} training sources"
    echo(f"preparing data ({what}, {len(heldout)} held-out sources, vocab {d.vocab_size}) in {out}")
    result = prepare(out, sources, heldout, builtin=d.builtin, vocab_size=d.vocab_size, **d.options)
    echo(f"data ready: {result.path}" + ("" if result.created else " (already prepared)"))
    return Path(result.path)
