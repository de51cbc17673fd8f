"""Result files (``RUN_DIR/eval/*.json``, written atomically) and the human tables."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

from moelab import __version__
from moelab.errors import MoelabError
from moelab.io import atomic_write_json

EVAL_DIR = "eval"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "x"


def result_name(result: dict[str, Any]) -> str:
    kind = result["kind"]
    if kind == "perplexity":
        paths = result.get("paths") or []
        if not paths:
            return "ppl.json"
        digest = hashlib.sha256("\0".join(paths).encode()).hexdigest()[:8]
        return f"ppl-{_slug(Path(paths[0]).stem)}-{digest}.json"
    if result.get("n_items") == result.get("n_items_total"):
        limit = ""
    elif result.get("limit_per"):  # BLiMP: the limit counts items per paradigm
        limit = f"-limit{result['limit']}per{_slug(result['limit_per'])}"
    else:
        limit = f"-limit{result['n_items']}"
    if kind == "priming":
        return f"priming-{_slug(result['task'])}-{result['shots']}shot{limit}.json"
    return f"finetune-{_slug(result['task'])}{limit}.json"


def check_eval_dir(run_dir: str | Path) -> Path:
    """``RUN_DIR/eval``, checked before any work so a long evaluation never ends in an error."""
    folder = Path(run_dir) / EVAL_DIR
    # A crafted run folder must not redirect writes: eval/ linked elsewhere (or dangling) would
    # put every result, and the temporary files before them, wherever the link points.
    if folder.is_symlink():
        target = folder.resolve()
        if not target.is_relative_to(Path(run_dir).resolve()):
            raise MoelabError(
                f"{folder} is a link to {target}, outside the run folder; moelab writes results "
                "only inside the run: replace the link by a folder"
            )
    if folder.is_symlink() and not folder.exists():  # dangling, inside the run
        raise MoelabError(
            f"{folder} is a link to {os.readlink(folder)}, which does not exist; moelab writes "
            "results only into a folder: replace the link by a folder"
        )
    if folder.exists() and not folder.is_dir():
        raise MoelabError(f"{folder} exists and is not a folder; move it away to store results")
    return folder


def write_result(run_dir: str | Path, result: dict[str, Any]) -> Path:
    """Stamp ``result`` (version, time) and write it to ``RUN_DIR/eval/<name>.json``."""
    result.setdefault("moelab_version", __version__)
    result.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path = check_eval_dir(run_dir) / result_name(result)
    try:
        atomic_write_json(path, result)
    except OSError as e:
        raise MoelabError(f"cannot write {path}: {e.strerror or e}") from None
    result["file"] = str(path)
    return path


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def perplexity_table(result: dict[str, Any]) -> str:
    rows = [
        [
            d["name"],
            d["role"],
            str(d["tokens"]),
            f"{d['loss']:.4f}",
            f"{d['perplexity']:.2f}",
            "-" if d["bits_per_byte"] is None else f"{d['bits_per_byte']:.4f}",
        ]
        for d in result["domains"]
    ]
    cap = result.get("capacity", {})
    moe = ""
    if cap.get("moe"):
        moe = "  MoE: " + (
            "dropless" if cap.get("dropless") else f"capacity factor {cap['eval_capacity_factor']}"
        )
    head = f"context {result['context']}, stride {result['stride']}{moe}"
    table = _table(["domain", "role", "tokens", "loss", "ppl", "bits/byte"], rows)
    return head + "\n" + table


def _interval(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def priming_rows(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        m = r["metrics"]
        cells = [r["task"], str(r["shots"]), str(len(r["seeds"])), str(r["n_items"])]
        cells.append(r["primary_mode"])
        cells.append(f"{_pct(r['accuracy'])} ± {_pct(r['accuracy_std'])}")
        cells.append(_interval(m[r["primary_mode"]]["ci95"]))
        cells.append(_pct(r["chance"]))
        cells.append(_pct(r.get("score")))
        cells.append(_interval(r.get("score_ci95")))
        for mode in ("sum", "mean", "char", "byte", "calibrated"):
            cells.append(_pct(m[mode]["mean"]) if mode in m else "-")
        rows.append(cells)
    header = ["task", "shots", "seeds", "items", "mode", "acc", "95% CI", "chance", "score"]
    header += ["95% CI", "sum", "mean", "char", "byte", "calib"]
    text = _table(header, rows) + (
        "\naccuracy in %, under the task's primary scoring mode (column mode); ± is the std over"
        " seeds; score: mean probability given to the correct candidate among the candidates"
        " (LAMBADA: greedy last word, score = probability of the word); sum..calib: accuracy"
        " under every mode"
    )
    for r in results:
        if r.get("groups"):
            text += "\n\n" + group_table(r)
    return text


def group_table(result: dict[str, Any]) -> str:
    """Accuracy and score per group (BLiMP: fields, then paradigms) next to the reference
    models' accuracies."""
    ref = result.get("reference") or {}
    models = list(ref)
    rows = []
    overall = {k: result.get(k) for k in ("accuracy", "accuracy_ci95", "n_items", "score")}
    overall["score_ci95"] = result.get("score_ci95")
    ordered = sorted(result["groups"].items(), key=lambda kv: (not kv[0].startswith("field:"), kv))
    for label, g in [("overall", overall), *ordered]:
        cells = [label, str(g["n_items"]), _pct(g["accuracy"]), _interval(g["accuracy_ci95"])]
        cells += [_pct(g["score"]), _interval(g["score_ci95"])]
        cells += [_pct(ref[m].get(label)) for m in models]
        rows.append(cells)
    header = ["group", "items", "acc", "95% CI", "score", "95% CI", *models]
    return f"{result['task']} ({result['primary_mode']} mode), accuracy in %\n" + _table(
        header, rows
    )


def finetune_table(result: dict[str, Any]) -> str:
    rows = [
        [
            f"{g['lr']:g}",
            _pct(g["heldout_accuracy"]),
            f"{g['final_train_loss']:.4f}",
            "*" if g["lr"] == result["best_lr"] else "",
        ]
        for g in result["grid"]
    ]
    table = _table(["lr", "held-out acc", "train loss", "best"], rows)
    return (
        f"{result['task']} ({result['head']} head): accuracy {_pct(result['accuracy'])} on "
        f"{result['split']} ({result['n_items']} items), chance {_pct(result['chance'])}\n" + table
    )
