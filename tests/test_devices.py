"""moelab.devices.pick_device: the one device picker (training, launch, evaluation)."""

from __future__ import annotations

import pytest
import torch

from moelab.devices import pick_device
from moelab.errors import MoelabError


def test_auto_and_named_devices():
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto") == pick_device(None) == torch.device(here)
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    "name, key, message",
    [
        (
            "tpu",
            "train.device",
            r"^train\.device: 'tpu' is not a torch device \(cpu, cuda, cuda:1\)$",
        ),
        ("cuda:x", "--device", r"^--device: 'cuda:x' is not a torch device"),
        pytest.param(
            "cuda:1",
            "--device",
            r"^--device: cuda:1 requested but CUDA is not available; use --device cpu$",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here"),
        ),
    ],
)
def test_a_device_that_is_not_here_is_one_line_naming_the_setting(name, key, message):
    with pytest.raises(MoelabError, match=message):
        pick_device(name, key=key)


def test_a_command_names_its_flag():
    with pytest.raises(MoelabError) as e:
        pick_device("tpu", key="device")
    assert e.value.worded("--device") == "--device: 'tpu' is not a torch device (cpu, cuda, cuda:1)"
