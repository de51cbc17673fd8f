"""Export and import: a killed one's temporary folder is removed by the next (issue 19 item 14),
weights are as readable as every other file (item 18), and a missing transformers package is
one line with the install hint (item 15)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from _robust import (
    run_cli,
    snapshot,
)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.slow
def test_killed_export_leaves_a_temporary_folder_the_next_export_removes(
    dense_run, tmp_path, capsys
):
    run = dense_run
    out = tmp_path / "hf"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moelab", "export", str(run), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    leftover = tmp_path / f".hf.tmp-{proc.pid}"
    try:
        deadline = time.monotonic() + 120
        while not leftover.is_dir() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)  # while it writes or verifies the export
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert leftover.is_dir() and not out.exists()  # what a killed export leaves

    rc, stdout, err = run_cli(capsys, ["export", str(run), "--out", str(out), "--no-verify"])
    assert rc == 0, err
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    assert _mode(out / "model.safetensors") == 0o666 & ~_umask()


def test_import_removes_a_killed_imports_temporary_folder(hf_export, tmp_path, capsys):
    hf = hf_export
    out = tmp_path / "run"
    leftover = tmp_path / ".run.tmp-999999"  # a killed import's half-made run folder
    (leftover / "checkpoints").mkdir(parents=True)
    (leftover / "config.yaml").write_text("model: {}\n")
    rc, _, err = run_cli(capsys, ["import", str(hf), "--out", str(out), "--no-verify"])
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_checkpoint_weights_are_as_readable_as_the_other_files(finished_run):
    run = finished_run
    step = sorted((run / "checkpoints").glob("step_*"))[-1]
    want = 0o666 & ~_umask()
    assert {p.name: _mode(p) for p in step.iterdir()} == {
        "model.safetensors": want,
        "state.pt": want,
        "meta.json": want,
    }


@pytest.mark.parametrize("command", ["export", "import"])
def test_without_transformers_one_line_with_the_install_hint(request, tmp_path, command):
    pytest.importorskip("transformers")  # the simulation below needs it installed to mean much
    src = request.getfixturevalue("dense_run" if command == "export" else "hf_export")
    before = snapshot(tmp_path)
    # As if transformers were not installed: None in sys.modules makes its import fail.
    code = (
        "import sys; sys.modules['transformers'] = None; from moelab.cli import main; "
        f"sys.exit(main([{command!r}, {str(src)!r}, '--out', {str(tmp_path / 'o')!r}]))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [
        f"error: moelab {command} needs the 'transformers' package: pip install 'moelab[hf]'"
    ]
    assert snapshot(tmp_path) == before
