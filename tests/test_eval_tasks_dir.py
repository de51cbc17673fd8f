"""Where registered tasks are read from is an explicit setting (``tasks_dir`` / --tasks-dir, else
$MOELAB_TASKS_DIR; a study passes its eval.tasks_dir or data.root), never a folder guessed from
where moelab is installed or from the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from moelab.errors import MoelabError
from moelab.eval.tasks import ENV_TASKS_DIR, default_tasks_dir, get_task

FIXTURES = Path(__file__).parent / "fixtures"  # holds blimp/ as a tasks directory does


def test_no_setting_no_tasks_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_TASKS_DIR, raising=False)
    # The layout the package used to guess from: ../shared/data beside the working folder.
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "blimp").symlink_to(FIXTURES / "blimp")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert default_tasks_dir() is None
    with pytest.raises(MoelabError, match=rf"no tasks directory.*tasks_dir.*{ENV_TASKS_DIR}"):
        get_task("blimp")


def test_the_argument_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_TASKS_DIR, str(FIXTURES))
    assert default_tasks_dir() == FIXTURES
    from_env = get_task("blimp")
    assert get_task("blimp", FIXTURES).items == from_env.items and from_env.items
    with pytest.raises(MoelabError, match="not found"):
        get_task("blimp", tmp_path)  # the argument wins over the environment
