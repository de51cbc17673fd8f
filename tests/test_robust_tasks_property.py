"""The generic JSONL task loader on random input either loads or raises MoelabError.

Random files are built three ways: records close to the schema (the real field names with values
of every JSON type), arbitrary JSON lines, and arbitrary UTF-8 text. A loaded task must also be
well formed (labels in range, at least one item). Crashes found by the sweep are pinned below as
regression tests.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from moelab.errors import MoelabError
from moelab.eval.tasks.generic import load_generic

# Subnormal floats are left out: they add nothing here, and hypothesis refuses to draw them
# whenever something in the process has turned on flush-to-zero (torch.set_flush_denormal).
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.integers(),
    st.floats(allow_nan=False, allow_subnormal=False),
    st.text(max_size=10),
    st.sampled_from(["0", "1", "-1", " 2 ", "", " ", "yes", "١"]),  # last: Arabic-Indic one
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
schema_values = st.one_of(
    json_values,
    st.lists(st.text(max_size=8), min_size=0, max_size=4),  # choices / contexts
)
FIELDS = ["context", "contexts", "choices", "continuation", "label"]
records = st.dictionaries(st.sampled_from(FIELDS), schema_values, max_size=5)
near_schema = st.one_of(
    st.builds(
        lambda ctx, ch, lab: {"context": ctx, "choices": ch, "label": lab},
        st.text(max_size=10),
        st.lists(st.text(max_size=6), max_size=4),
        json_scalars,
    ),
    st.builds(
        lambda ctxs, cont, lab: {"contexts": ctxs, "continuation": cont, "label": lab},
        st.lists(st.text(max_size=6), max_size=4),
        st.text(max_size=6),
        json_scalars,
    ),
    st.builds(lambda c, t: {"context": c, "continuation": t}, st.text(max_size=8), json_scalars),
    records,
)


def _lines(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


files = st.one_of(
    st.lists(near_schema, max_size=5).map(_lines),
    st.lists(json_values, max_size=4).map(_lines),
    st.text(max_size=120),
)


def _check_loads_or_refuses(path) -> None:
    try:
        task = load_generic(path)
    except MoelabError as e:
        assert str(e), "an empty error message"
        return
    assert task.items, "a task without items loaded"
    for item in task.items:
        assert 0 <= item.label < item.n_candidates


@SETTINGS
@given(files)
@example('{"context": "a", "choices": ["x", "y"], "label": 1}\n')
@example('{"context": "a", "choices": ["x", "y"], "label": 2}\n')
@example('{"context": "a", "choices": ["x"], "label": 0}\n')
@example('{"contexts": ["a", "b"], "continuation": "c", "label": "1"}\n')
@example('{"context": "a", "continuation": "  "}\n')
@example(
    '{"context": "a", "choices": ["x", "y"], "label": 0}\n{"context": "b", "continuation": "z"}\n'
)
@example("[1, 2]\n")
@example("{not json}\n")
@example("")
def test_task_file(tmp_path, text):
    path = tmp_path / "task.jsonl"
    path.write_text(text, encoding="utf-8")
    _check_loads_or_refuses(path)


@SETTINGS
@given(st.lists(near_schema, min_size=1, max_size=3), st.lists(near_schema, max_size=3))
def test_task_with_train_file(tmp_path, rows, train_rows):
    """NAME.train.jsonl next to NAME.jsonl is read as the shots' source: same contract."""
    (tmp_path / "task.jsonl").write_text(_lines(rows), encoding="utf-8")
    (tmp_path / "task.train.jsonl").write_text(_lines(train_rows), encoding="utf-8")
    _check_loads_or_refuses(tmp_path / "task.jsonl")


# ---------------------------------------------------------------------------------------------
# Crashes found by the sweep (fixed since; kept as regression tests).


@pytest.mark.parametrize(
    "raw",
    [
        '{"context": "d\u00e9j\u00e0", "continuation": "vu"}\n'.encode("latin-1"),
        '{"context": "a", "continuation": "b"}\n'.encode("utf-16"),
        b"\xff\xfe\xfd\n",
    ],
    ids=["latin-1", "utf-16", "binary"],
)
def test_task_file_in_another_encoding(tmp_path, raw):
    """Not UTF-8: one clear error (not UnicodeDecodeError)."""
    (tmp_path / "task.jsonl").write_bytes(raw)
    _check_loads_or_refuses(tmp_path / "task.jsonl")


def test_label_of_superscript_digits(tmp_path):
    """'\u00b2' passes str.isdigit() but not int(): must still be a MoelabError."""
    row = {"context": "a", "choices": ["x", "y"], "label": "\u00b2"}
    (tmp_path / "task.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    _check_loads_or_refuses(tmp_path / "task.jsonl")
