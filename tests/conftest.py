"""Test configuration shared by every test module: the one-thread pin and the shared fixtures.

- ``MOELAB_TASKS_DIR`` is ``../shared/data`` (beside the checkout) unless set already.
- Every test runs with one torch intra-op thread. The models here are tiny: a second thread only
  adds synchronisation, and on a CPU shared with other work it makes each op wait for a
  descheduled thread (measured several times slower). Subprocesses get ``OMP_NUM_THREADS=1``
  from the tests that start them.
- The session fixtures below build the tiny prepared data, the trained runs (MoE and dense), the
  Hugging Face export and the micro-study once per session, through the real CLI (builders in
  ``_robust.py``), under pytest's session temp folder. They are shared read-only: a test that
  damages one copies it first (``copy_run``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import _eval_models
import _robust
import _train_data

# The task folders (docs/evaluation.md) of this repository's layout: moelab reads registered tasks
# only from an explicit setting, so the test configuration gives it (a value set outside wins).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if SHARED_DATA.is_dir():
    os.environ.setdefault("MOELAB_TASKS_DIR", str(SHARED_DATA))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_per_session():
    # Session-scoped too, so that session and module fixtures built before a test run pinned.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Per test as well: code under test may set its own thread count (a run's train.threads).
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory) -> Path:
    """Prepared data: training domain ``alpha``, held-out domain ``gamma``, vocabulary 300."""
    return _robust.shared_prepared(tmp_path_factory)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny MoE run on ``shared_data`` (checkpoints at steps 2 and 4)."""
    return _robust.shared_run(tmp_path_factory)


@pytest.fixture(scope="session")
def dense_run(tmp_path_factory) -> Path:
    """The dense twin of ``finished_run``."""
    return _robust.shared_run(tmp_path_factory, "robust_dense_run", moe=False)


@pytest.fixture
def unfinished(finished_run, tmp_path) -> Path:
    """A copy of ``finished_run`` as if killed after its last checkpoint (no done.json)."""
    run = _robust.copy_run(finished_run, tmp_path / "run")
    (run / "done.json").unlink()
    return run


@pytest.fixture(scope="session")
def hf_export(tmp_path_factory) -> Path:
    """``dense_run`` exported to a Hugging Face folder (XGLM)."""
    return _robust.shared_export(tmp_path_factory)


@pytest.fixture(scope="session")
def micro_study(tmp_path_factory) -> Path:
    """A finished micro-study (dense and MoE, four steps each); its config is ``<folder>.yaml``."""
    return _robust.shared_study(tmp_path_factory)


@pytest.fixture(scope="session")
def eval_run(tmp_path_factory) -> Path:
    """A tiny MoE run trained for 8 steps on its own text (``books``; held out ``news``)."""
    return _eval_models.train_eval_run(tmp_path_factory.mktemp("eval_run"))


@pytest.fixture(scope="module")
def tok():
    """The tiny test tokenizer (``_eval_models.tiny_tokenizer``), once per module."""
    return _eval_models.tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    """A tiny MoE for ``tok`` in eval mode, once per module (evaluations leave it as it was)."""
    return _eval_models.tiny_model(tok.get_vocab_size(), moe=True)


@pytest.fixture(scope="session")
def grammar_data(tmp_path_factory) -> Path:
    """Prepared data of the animal grammar (``_train_data``): domains alpha and beta, held-out
    gamma, vocabulary 320."""
    return _train_data.make_prepared(tmp_path_factory.mktemp("grammar_data"))
