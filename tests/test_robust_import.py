"""`moelab import` refuses bad input with one line and exit 2; --out is never half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from _robust import (
    copy_run,
    expect_user_error,
    run_cli,
    snapshot,
)


def _import(hf_dir: Path, out: Path) -> list:
    return ["import", hf_dir, "--out", out]


def test_positive_control(hf_export, tmp_path, capsys):
    before = snapshot(hf_export)
    rc, out, err = run_cli(capsys, _import(hf_export, tmp_path / "run"))
    assert rc == 0 and "logits match" in out, err
    assert snapshot(hf_export) == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_missing_or_foreign_folder(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine\n")
    for src in (tmp_path / "nope", tmp_path / "mine", tmp_path / "mine" / "notes.txt"):
        expect_user_error(
            capsys,
            _import(src, tmp_path / "run"),
            watch=[tmp_path],
            match=[r"config\.json", r"Hugging Face model folder"],
        )


def _damaged(hf_export: Path, dest: Path, damage: str) -> Path:
    shutil.copytree(hf_export, dest)
    cfg = json.loads((dest / "config.json").read_text())
    if damage == "config-garbage":
        (dest / "config.json").write_text("{ not json")
    elif damage == "config-unsupported":
        (dest / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    elif damage == "config-other-shape":  # weights from another config
        (dest / "config.json").write_text(json.dumps({**cfg, "d_model": cfg["d_model"] * 2}))
    elif damage == "config-wrong-type":
        (dest / "config.json").write_text(json.dumps({**cfg, "num_layers": "two"}))
    elif damage == "weights-truncated":
        w = dest / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif damage == "weights-missing":
        (dest / "model.safetensors").unlink()
    elif damage == "tokenizer-missing":
        (dest / "tokenizer.json").unlink()
    elif damage == "tokenizer-garbage":
        (dest / "tokenizer.json").write_text("{ nope")
    elif damage == "tokenizer-no-eot":
        tok = json.loads((dest / "tokenizer.json").read_text())
        tok["added_tokens"] = [t for t in tok["added_tokens"] if "endoftext" not in t["content"]]
        tok["model"]["vocab"].pop("<|endoftext|>", None)
        (dest / "tokenizer.json").write_text(json.dumps(tok))
    return dest


BUGS: dict[str, str] = {}  # damage id -> reason, for a known bug (strict xfail)
DAMAGE = [
    ("config-garbage", [r"config\.json"]),
    ("config-unsupported", [r"bert"]),
    ("config-other-shape", [r"weights|fit|size"]),
    ("config-wrong-type", [r"num_layers|config\.json"]),
    ("weights-truncated", [r"weights|safetensors"]),
    ("weights-missing", [r"weights|safetensors"]),
    ("tokenizer-missing", [r"tokenizer\.json", r"save_pretrained"]),
    ("tokenizer-garbage", [r"tokenizer\.json"]),
    ("tokenizer-no-eot", [r"end-of-document"]),
]


def _params():
    out = []
    for id_, match in DAMAGE:
        marks = [pytest.mark.xfail(strict=True, reason=BUGS[id_])] if id_ in BUGS else []
        out.append(pytest.param(id_, match, id=id_, marks=marks))
    return out


@pytest.mark.parametrize("damage, match", _params())
def test_damaged_model_folder(damage, match, hf_export, tmp_path, capsys):
    src = _damaged(hf_export, tmp_path / "hf", damage)
    expect_user_error(capsys, _import(src, tmp_path / "run"), watch=[tmp_path], match=match)


def test_out_that_is_taken(hf_export, finished_run, tmp_path, capsys):
    """A file, a folder of the user's and a folder holding a different run are all kept."""
    (tmp_path / "a_file").write_text("mine\n")
    copy_run(finished_run, tmp_path / "other_run")
    for out, match in [("a_file", r"not a folder"), ("other_run", r"not empty")]:
        expect_user_error(
            capsys, _import(hf_export, tmp_path / out), watch=[tmp_path, hf_export], match=[match]
        )


class SimulatedKill(BaseException):
    """Stands in for SIGKILL: not an Exception, so only ``finally`` blocks see it."""


def test_killed_import_leaves_no_out(hf_export, tmp_path, capsys, monkeypatch):
    """Killed after the checkpoint was written, during the logits check: --out does not
    appear (the run folder is built under a temporary name, renamed when complete)."""
    import moelab.interop.hf_import as hf_import

    def die(*args, **kwargs):
        raise SimulatedKill

    monkeypatch.setattr(hf_import, "max_logit_diff", die)
    with pytest.raises(SimulatedKill):
        run_cli(capsys, ["import", hf_export, "--out", tmp_path / "run"])
    assert list(tmp_path.iterdir()) == []


def test_out_that_cannot_be_created(hf_export, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder\n")
    expect_user_error(
        capsys,
        _import(hf_export, tmp_path / "a_file" / "run"),
        watch=[tmp_path, hf_export],
        match=[r"a_file"],
    )
