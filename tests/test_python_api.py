"""The notebook API: docs/python-api.md's code runs as written (prepare -> train -> eval ->
study, tiny sizes), and every name ``moelab.eval`` and ``moelab.study`` export resolves."""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def page_code() -> str:
    """The page's python blocks, in order, as one program."""
    blocks = re.findall(r"^```python\n(.*?)^```$", PAGE.read_text(encoding="utf-8"), re.M | re.S)
    assert len(blocks) == 4, "one block per step: prepare, train, eval, study"
    return "\n".join(blocks)


@pytest.mark.parametrize("package", ["moelab.eval", "moelab.study"])
def test_exports_resolve(package):
    mod = importlib.import_module(package)
    assert mod.__all__ == sorted(mod.__all__) and mod.__all__
    assert set(mod.__all__) <= set(dir(mod))  # a notebook's completion offers them
    for name in mod.__all__:
        obj = getattr(mod, name)
        assert callable(obj), (package, name)
        assert obj.__module__.startswith(package), (package, name, obj.__module__)
    with pytest.raises(AttributeError):
        _ = mod.no_such_name


def test_the_page_imports_only_public_names():
    for package, names in re.findall(r"^from (moelab[\w.]*) import (.+)$", page_code(), re.M):
        mod = importlib.import_module(package)
        for name in (n.strip() for n in names.split(",")):
            assert name in getattr(mod, "__all__", ()), f"{package}.{name} is not exported"


@pytest.mark.slow
def test_the_page_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "python_api_page"}
    exec(compile(page_code(), str(PAGE), "exec"), ns)
    work = tmp_path / "notebook"

    assert ns["prepared"].train_domains == ["stories"]
    assert ns["summary"]["steps"] == 12 and (work / "run" / "done.json").is_file()
    domains = {d["name"]: d for d in ns["ppl"]["domains"]}
    assert set(domains) == {"stories", "notes"}
    assert domains["stories"]["role"] != domains["notes"]["role"]  # in-domain vs held out
    assert all(math.isfinite(d["loss"]) and d["loss"] > 0 for d in domains.values())
    assert list((work / "run" / "eval").glob("*.json"))  # write_result kept it
    assert 0.0 <= ns["zero_shot"]["accuracy"] <= 1.0 and ns["zero_shot"]["n_items"] == 6

    finals = [r for r in ns["table"] if r["final"]]
    assert len(finals) == 2 and len({r["family"] for r in finals}) == 2  # dense and MoE
    assert all(math.isfinite(r["loss_in_domain"]) for r in finals)
    assert Path(ns["report"]).name == "report.md" and Path(ns["report"]).is_file()
    out = capsys.readouterr().out
    assert "stories" in out and "report.md" in out  # the page's prints ran
