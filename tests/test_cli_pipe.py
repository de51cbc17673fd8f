"""A reader that closes stdout early (`moelab presets --json | head`) ends the command quietly:
no BrokenPipeError traceback, exit code 128 + SIGPIPE as `cat` gives (issue 18 item 7). Checked
with a real pipe whose read end is closed before the command writes, so the write must fail."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "argv",
    [
        ["presets", "--json"],  # larger than stdout's buffer: fails inside the command
        ["presets", "--json", "dense-cpu-0.5m"],  # buffered: would fail at interpreter exit
    ],
)
def test_a_closed_pipe_ends_quietly(argv):
    proc = subprocess.Popen(
        [sys.executable, "-m", "moelab", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # like `| head` that has its lines, before moelab writes anything
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141
    assert err == ""
