"""``train.threads``: the CPU threads torch uses while a run trains (1 by default, null: torch's
own choice), restored afterwards; validated like the rest of the config."""

from __future__ import annotations

import pytest
import torch

from _train_data import make_prepared, tiny_config
from moelab.errors import MoelabError
from moelab.train import Trainer, load_run_config


class _Watching(Trainer):
    """Records torch's thread count during every forward pass of the real training."""

    seen: set[int]

    def build_model(self):
        model = super().build_model()
        self.seen = set()
        model.register_forward_hook(lambda *_: self.seen.add(torch.get_num_threads()))
        return model


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("threads, want", [(None, 2), (1, 1), (3, 3)])
def test_threads_hold_during_the_run_and_are_restored(prepared, tmp_path, threads, want):
    raw = tiny_config(prepared, budget_steps=2, batch_size=2, seq_len=16, device="cpu")
    if threads != 1:  # 1 is the default
        raw["train"]["threads"] = threads
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        trainer = _Watching(load_run_config(raw), tmp_path / "run", progress=False)
        trainer.run()
        assert trainer.seen == {want}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_bad_threads_is_one_line(prepared):
    raw = tiny_config(prepared, budget_steps=2)
    raw["train"]["threads"] = 0
    with pytest.raises(MoelabError, match=r"^train.threads: must be >= 1 or null"):
        load_run_config(raw)
