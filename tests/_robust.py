"""Shared helpers for the robustness tests (tests/test_robust_*.py).

The contract every user-facing command must keep for bad input (docs/robustness.md):

- exit code 2,
- exactly one line on stderr, naming the problem (and the fix), with no ``Traceback``,
- no file changed, created or left half-written in any folder the test watches.

``expect_user_error`` checks all three in one call, running the CLI in process through
``moelab.cli.main`` (a subprocess per case would cost seconds of imports). Folders are compared by
:func:`snapshot`: every file and folder below a root (hidden ones included, so an orphaned
``.NAME.tmp-<pid>`` shows up) with its size, mtime and SHA-256.

The tiny prepared data, the trained runs (MoE and dense), the Hugging Face export and the
micro-study are built once per test session by the builders below, which conftest.py turns into
the session fixtures ``shared_data``, ``finished_run``, ``dense_run``, ``hf_export`` and
``micro_study``; they are shared read-only: a test that damages one copies it first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

from _train_data import tiny_config
from moelab.cli import main

Snapshot = dict[str, tuple[str, int, int, str]] | None


def snapshot(root: str | Path) -> Snapshot:
    """``{relative path: (kind, size, mtime_ns, sha256)}`` for everything below ``root``
    (``root`` itself included as ``"."``); None when ``root`` does not exist."""
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        return None
    out: dict[str, tuple[str, int, int, str]] = {}
    paths = [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]
    for p in paths:
        rel = "." if p == root else str(p.relative_to(root))
        st = p.lstat()
        if p.is_symlink():
            out[rel] = ("link", 0, st.st_mtime_ns, os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", 0, 0, "")  # a dir's mtime changes with any entry: entries compared
        elif p.is_file():
            try:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            except OSError:  # e.g. the deliberately unreadable file of a test
                digest = "unreadable"
            out[rel] = ("file", st.st_size, st.st_mtime_ns, digest)
        else:
            out[rel] = ("other", 0, st.st_mtime_ns, "")
    return out


def describe_changes(before: Snapshot, after: Snapshot) -> str:
    if before is None or after is None:
        return f"existed before: {before is not None}, exists after: {after is not None}" + (
            f" (now holds {sorted(after)[:8]})" if after else ""
        )
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added {added[:8]}, removed {removed[:8]}, changed {changed[:8]}"


def run_cli(capsys, argv: Sequence[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``moelab ARGV`` run in this process. argparse's own
    errors raise SystemExit(2) inside ``main``; that counts as exit code 2."""
    capsys.readouterr()  # drop anything printed before
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def writes_only_under(capsys, argv: Sequence[str], run: Path, under: str = "eval") -> str:
    """Run a command that should succeed on ``run`` and change files only under ``run/under``
    (leaving no temporary file); its stdout."""
    before = snapshot(run)
    rc, out, err = run_cli(capsys, argv)
    assert rc == 0, err
    after = snapshot(run)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed and all(k == under or k.startswith(f"{under}/") for k in changed), changed
    assert not any(".tmp-" in k for k in after)
    return out


def expect_user_error(
    capsys,
    argv: Sequence[str],
    *,
    watch: Iterable[str | Path] = (),
    match: Iterable[str] = (),
) -> str:
    """Run ``moelab ARGV`` and assert the bad-input contract; return the one stderr line.

    ``watch``: folders (or files) that must be exactly as before (a path that did not exist must
    still not exist). ``match``: regular expressions (case-insensitive) the line must contain,
    e.g. the offending path or key and a word of the fix."""
    watch = [Path(w) for w in watch]
    before = {w: snapshot(w) for w in watch}
    rc, out, err = run_cli(capsys, argv)
    shown = f"moelab {' '.join(map(str, argv))}\nstdout: {out!r}\nstderr: {err!r}"
    assert "Traceback" not in err and "Traceback" not in out, f"traceback:\n{shown}"
    assert rc == 2, f"exit code {rc}, expected 2:\n{shown}"
    lines = err.splitlines()
    assert len(lines) == 1, f"{len(lines)} lines on stderr, expected exactly 1:\n{shown}"
    line = lines[0]
    assert "error:" in line, f"stderr line does not say 'error:':\n{shown}"
    for pattern in match:
        assert re.search(pattern, line, re.IGNORECASE), f"{pattern!r} not in the line:\n{shown}"
    for w in watch:
        after = snapshot(w)
        assert after == before[w], f"{w} changed: {describe_changes(before[w], after)}\n{shown}"
    return line


DELETE = object()  # set_dotted: remove the key


def set_dotted(cfg: dict, dotted: str, value) -> dict:
    """``cfg`` with ``a.b.c`` set to ``value`` (missing sections made; ``DELETE`` removes it)."""
    node = cfg
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return cfg


def fill(value, **places):
    """``value`` (a string, or a mapping of them) with each ``{name}`` replaced by ``places[name]``
    (a case table names folders that exist only inside the test, e.g. ``{tmp}``)."""
    if isinstance(value, str):
        for name, place in places.items():
            value = value.replace("{" + name + "}", str(place))
        return value
    if isinstance(value, dict):
        return {k: fill(v, **places) for k, v in value.items()}
    return value


def unreadable_file(folder: Path, name: str, content: bytes = b"x\n") -> Path:
    """A file that exists but cannot be read. ``chmod 000`` does not stop root (tests here may
    run as root), so there the file is a symlink to ``/proc/self/mem``: a regular file whose read
    fails with EIO for every user (messages then name the link's target, not ``name``)."""
    path = folder / name
    if os.geteuid() != 0:
        path.write_bytes(content)
        path.chmod(0)
    else:
        path.symlink_to("/proc/self/mem")
    return path


# ---------------------------------------------------------------------------------------------
# Tiny shared data and run, built once per session


SENTENCES = [
    "the cat sleeps quietly near the river",
    "a dog barks loudly at the barn door",
    "the horse runs fast over the green hill",
    "one bird sings sweetly in the old garden",
    "the fish swims slowly under the bridge",
]


def write_corpus(folder: Path, n_docs: int, seed: int = 0) -> Path:
    """``n_docs`` small UTF-8 text files ``doc*.txt`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        words = [SENTENCES[(i * 7 + j * (seed + 3)) % len(SENTENCES)] for j in range(12)]
        (folder / f"doc{i:03d}.txt").write_text(". ".join(words) + ".\n", encoding="utf-8")
    return folder


def write_jsonl(path: Path, rows: list) -> Path:
    """A task file: one JSON document a line."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cached(base: Path, name: str, marker: str) -> Path | None:
    path = base / name
    return path if (path / marker).exists() else None


def shared_prepared(tmp_path_factory, name: str = "robust_prepared", vocab: int = 300) -> Path:
    """A prepared folder with one training domain ``alpha`` and one held-out domain ``gamma``."""
    from moelab.data import prepare

    base = tmp_path_factory.getbasetemp()
    found = _cached(base, name, "manifest.json")
    if found:
        return found
    src = base / f"{name}_src"
    write_corpus(src / "a", 40, seed=1)
    write_corpus(src / "c", 8, seed=2)
    out = base / name
    prepare(
        out,
        sources=[f"alpha={src / 'a'}/*.txt"],
        heldout=[f"gamma={src / 'c'}/*.txt"],
        vocab_size=vocab,
        val_fraction=0.1,
    )
    return out


def tiny_run_config(prepared: Path, *, moe: bool = True, **train) -> dict:
    """A run config small enough to train a few steps in about a second."""
    small = dict(budget_steps=4, seq_len=16, batch_size=4, lr=1e-3, warmup_steps=1)
    small.update(eval_tokens=64, eval_points=1, checkpoint_every=2, device="cpu")
    return tiny_config(prepared, moe=moe, width=32, context=16, **{**small, **train})


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def shared_run(tmp_path_factory, name: str = "robust_run", *, moe: bool = True) -> Path:
    """A finished tiny run (checkpoints at steps 2 and 4) trained through the real CLI."""
    base = tmp_path_factory.getbasetemp()
    found = _cached(base, name, "done.json")
    if found:
        return found
    prepared = shared_prepared(tmp_path_factory)
    cfg = write_yaml(base / f"{name}.yaml", tiny_run_config(prepared, moe=moe))
    rc = main(["train", str(cfg), "--out", str(base / name), "--no-progress"])
    assert rc == 0, f"training the shared tiny run failed with exit code {rc}"
    return base / name


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, symlinks=True)
    return dest


# ---------------------------------------------------------------------------------------------
# Damaging a copied run


def keep_only_newest_checkpoint(run: Path) -> Path:
    """Delete all checkpoints but the newest; returns the newest one's folder."""
    steps = sorted((run / "checkpoints").glob("step_*"))
    for old in steps[:-1]:
        shutil.rmtree(old)
    return steps[-1]


def truncate_weights_keeping_checksums(run: Path) -> None:
    """Cut the newest (only) checkpoint's model.safetensors in half and rewrite meta.json's
    size and sha256 to match, so only the safetensors reader can notice."""
    step = keep_only_newest_checkpoint(run)
    weights = step / "model.safetensors"
    data = weights.read_bytes()[: weights.stat().st_size // 2]
    weights.write_bytes(data)
    meta = json.loads((step / "meta.json").read_text())
    meta["files"]["model.safetensors"] = {
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    (step / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def swap_in_checkpoints(run: Path, other_run: Path) -> None:
    """Replace ``run``'s checkpoints by ``other_run``'s (meta.json and checksums included)."""
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(other_run / "checkpoints", run / "checkpoints")


def shared_export(tmp_path_factory, name: str = "robust_hf") -> Path:
    """The shared dense run exported to a Hugging Face folder (XGLM) through the real CLI."""
    base = tmp_path_factory.getbasetemp()
    found = _cached(base, name, "config.json")
    if found:
        return found
    run = shared_run(tmp_path_factory, "robust_dense_run", moe=False)
    rc = main(["export", str(run), "--out", str(base / name), "--no-verify"])
    assert rc == 0, f"exporting the shared dense run failed with exit code {rc}"
    return base / name


# ---------------------------------------------------------------------------------------------
# A micro-study: two runs (dense and MoE) of four steps on the shared tiny data


TASK_ROWS = [
    {"context": "the cat", "choices": ["sleeps quietly", "barks loudly"], "label": 0},
    {"context": "a dog", "choices": ["sleeps quietly", "barks loudly"], "label": 1},
    {"context": "the horse", "choices": ["runs fast", "sings sweetly"], "label": 0},
]


def micro_study_config(tmp_path_factory) -> dict:
    """The micro-study's config (data: the shared prepared folder; one generic zero-shot
    task; perplexity on 64 tokens; no bootstrap; no throughput measurement)."""
    base = tmp_path_factory.getbasetemp()
    task = base / "robust_task.jsonl"
    if not task.is_file():
        write_jsonl(task, TASK_ROWS)
    run = tiny_run_config(shared_prepared(tmp_path_factory), moe=False, eval_points=2)
    run["model"]["moe_every"] = 2
    return {
        "name": "micro",
        "data": {"prepared": run.pop("data")},
        "base": run,
        "grid": {"model.n_experts": [0, 4]},
        "eval": {"ppl": True, "ppl_max_tokens": 64, "zero_shot": [str(task)], "limit": 3},
        "fit": {"bootstrap": 0},
        "measure_throughput": False,
        "threads": 1,  # tiny models on a shared CPU: one thread is several times faster
    }


def shared_study(tmp_path_factory, name: str = "robust_study") -> Path:
    """A finished, uninterrupted micro-study (``moelab study`` through the CLI), built once;
    its config file is ``<returned folder>.yaml``."""
    base = tmp_path_factory.getbasetemp()
    found = _cached(base, name, "report.html")
    if found:
        return found
    cfg = write_yaml(base / f"{name}.yaml", micro_study_config(tmp_path_factory))
    rc = main(["study", str(cfg), "--out", str(base / name)])
    assert rc == 0, f"the shared micro-study failed with exit code {rc}"
    return base / name


WALL_TIME_COLUMNS = ("train_wall_s", "eval_wall_s")


def results_table(study_dir: Path, config: Path) -> dict:
    """results.json without wall times (the only numbers allowed to differ between runs), with
    the study folder's and its config file's paths (which the metadata may quote, e.g. the
    command line) replaced by placeholders."""
    text = (study_dir / "results.json").read_text(encoding="utf-8")
    for path, placeholder in ((config, "<CONFIG>"), (study_dir, "<STUDY>")):
        text = text.replace(json.dumps(str(path))[1:-1], placeholder)
    data = json.loads(text)
    data["rows"] = [
        {k: v for k, v in row.items() if k not in WALL_TIME_COLUMNS} for row in data["rows"]
    ]
    data["columns"] = [c for c in data["columns"] if c not in WALL_TIME_COLUMNS]
    return data


def results_csv_without_wall_times(study_dir: Path) -> list[list[str]]:
    import csv

    with open(study_dir / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    keep = [i for i, c in enumerate(rows[0]) if c not in WALL_TIME_COLUMNS]
    return [[r[i] for i in keep] for r in rows]
