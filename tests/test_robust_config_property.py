"""The config loader on random input either loads or raises MoelabError, never anything else.

Covered: ``from_dict`` + ``validate`` for ``ModelConfig`` and the trainer's ``TrainConfig``,
``run_config_from_dict`` (the whole run config, without opening data), ``apply_overrides`` with
random ``KEY=VALUE`` strings, and ``load_yaml`` on random file bytes. Inputs mix the real field
names with random ones and values of every JSON/YAML type (NaN, infinities and huge integers
included). Crashes the sweep found (since fixed) are kept below as regression tests.
"""

from __future__ import annotations

import dataclasses
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from moelab.config import ModelConfig, apply_overrides, from_dict, load_yaml
from moelab.errors import MoelabError
from moelab.train.config import DataSection, TrainConfig, load_run_config, run_config_from_dict

# Subnormal floats are left out: they add nothing here, and hypothesis refuses to draw them
# whenever something in the process has turned on flush-to-zero (torch.set_flush_denormal).
SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,  # the same examples every run: a red test is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

MODEL_FIELDS = [f.name for f in dataclasses.fields(ModelConfig)]
TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
DATA_FIELDS = [f.name for f in dataclasses.fields(DataSection)]
PRESETS = ["dense-cpu-0.5m", "moe-cpu-0.5m", "paper-moe-15b", "MOE-CPU-0.5M", "nope", ""]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False),
    st.text(max_size=12),
    st.sampled_from(["0", "1e-3", "3e-4", "nan", "-inf", "null", "true", "paper", "modern"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=8,
)


def mapping(field_names: list[str]) -> st.SearchStrategy[dict]:
    """Mostly real field names (so validation is reached), sometimes unknown ones."""
    key = st.one_of(st.sampled_from(field_names), st.text(max_size=10))
    return st.dictionaries(key, values, max_size=8)


def _model_values() -> st.SearchStrategy:
    # Plausible numbers too, so that many examples get past the type checks into validate().
    return st.one_of(values, st.integers(-3, 70), st.floats(-1.0, 3.0, allow_subnormal=False))


def loads_or_refuses(fn, *args, **kwargs):
    """Call ``fn``; a MoelabError is a fine answer, any other exception fails the test."""
    try:
        return fn(*args, **kwargs)
    except MoelabError as e:
        assert str(e), "an empty error message"
        return None


@SETTINGS
@given(st.dictionaries(st.sampled_from(MODEL_FIELDS), _model_values(), max_size=10))
@example({"top_k": 5, "n_experts": 4})
@example({"capacity_factor": 0, "n_experts": 4})
@example({"n_heads": 0})
@example({"d_model": float("nan")})
@example({"capacity_factor": float("nan"), "n_experts": 2})
def test_model_config(data):
    cfg = loads_or_refuses(from_dict, ModelConfig, data, "model")
    if cfg is not None:
        loads_or_refuses(cfg.validate)


@SETTINGS
@given(mapping(MODEL_FIELDS))
def test_model_config_unknown_keys(data):
    cfg = loads_or_refuses(from_dict, ModelConfig, data, "model")
    if cfg is not None:
        loads_or_refuses(cfg.validate)


@SETTINGS
@given(st.dictionaries(st.sampled_from(TRAIN_FIELDS), _model_values(), max_size=10))
@example({"budget_steps": -4})
@example({"budget_flops": float("nan")})
@example({"budget_tokens": 10, "batch_size": 0})
@example({"budget_steps": 1, "betas": [0.9]})
@example({"budget_steps": 1, "grad_accum": 0})
def test_train_config(data):
    cfg = loads_or_refuses(from_dict, TrainConfig, data, "train")
    if cfg is not None:
        loads_or_refuses(cfg.validate)


run_configs = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(
            st.sampled_from(PRESETS),
            values,
            st.dictionaries(
                st.sampled_from([*MODEL_FIELDS, "preset"]),
                st.one_of(_model_values(), st.sampled_from(PRESETS)),
                max_size=6,
            ),
        ),
        "data": st.one_of(st.text(max_size=8), values, mapping(DATA_FIELDS)),
        "train": st.one_of(values, mapping(TRAIN_FIELDS)),
    },
)


@SETTINGS
@given(st.one_of(run_configs, values))
@example({"model": "moe-cpu-0.5m", "data": "x", "train": {"budget_steps": 3}})
@example({"model": {"preset": 3}, "data": "x", "train": {"budget_steps": 3}})
@example({"model": "moe-cpu-0.5m", "data": {"dir": "x", "weights": {"a": -1}}, "train": {}})
def test_run_config(raw):
    loads_or_refuses(run_config_from_dict, raw, check_data=False)


override_keys = st.one_of(
    st.sampled_from([f"model.{f}" for f in MODEL_FIELDS] + [f"train.{f}" for f in TRAIN_FIELDS]),
    st.sampled_from(["model", "data", "data.dir", "train", "train.lr.x", "x.y.z", "", "."]),
    st.text(alphabet=string.ascii_lowercase + "._=", max_size=12),
)
override_values = st.one_of(
    st.text(max_size=16),
    st.sampled_from(["3e-4", "-1", "0", "[1, 2]", "{a: 1}", "null", "~", "'x'", "[", "{"]),
)


@SETTINGS
@given(st.lists(st.one_of(st.tuples(override_keys, override_values), st.text()), max_size=4))
@example([("train.lr", "fast")])
@example([("model", "1"), ("model.n_layers", "2")])
def test_overrides(items):
    base = {"model": "moe-cpu-0.5m", "data": "somewhere", "train": {"budget_steps": 3}}
    overrides = [i if isinstance(i, str) else f"{i[0]}={i[1]}" for i in items]
    loads_or_refuses(apply_overrides, base, overrides)
    loads_or_refuses(load_run_config, base, overrides, check_data=False)


@SETTINGS
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
@example(b"model: [unclosed")
@example(b"\xff\xfe\x00m")
@example(b"- a\n- b\n")
def test_load_yaml_bytes(tmp_path, content):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    loads_or_refuses(load_yaml, path)


# ---------------------------------------------------------------------------------------------
# Regressions: PyYAML raises ValueError/RecursionError/AttributeError, which are not
# yaml.YAMLError, for these scalars; the loader must still answer with a MoelabError.

YAML_CRASHERS = [
    ("bad-date", "2001-13-01"),
    ("bad-day", "2001-02-30"),
    ("float-tag", "!!float abc"),
    ("int-tag", "!!int 0x"),
    ("timestamp-tag", "!!timestamp x"),
    ("deep-nesting", "[" * 1200),
]


@pytest.mark.parametrize("value", [v for _, v in YAML_CRASHERS], ids=[i for i, _ in YAML_CRASHERS])
def test_override_yaml_crashers(value):
    loads_or_refuses(apply_overrides, {"train": {}}, [f"train.lr={value}"])


@pytest.mark.parametrize("value", [v for _, v in YAML_CRASHERS], ids=[i for i, _ in YAML_CRASHERS])
def test_load_yaml_crashers(value, tmp_path):
    (tmp_path / "c.yaml").write_text(f"train:\n  lr: {value}\n")
    loads_or_refuses(load_yaml, tmp_path / "c.yaml")


def test_unknown_key_with_a_newline_is_one_line():
    with pytest.raises(MoelabError) as e:
        from_dict(ModelConfig, {"n_layers\nx": 2}, "model")
    assert "\n" not in str(e.value)


def test_cli_override_crasher_is_one_line(tmp_path, capsys):
    """The same bug seen from the command line: `moelab train --set train.lr=2001-13-01`."""
    from _robust import expect_user_error

    argv = ["train", "--preset", "moe-cpu-0.5m", "--data", tmp_path, "--steps", "1"]
    expect_user_error(
        capsys,
        [*argv, "--out", tmp_path / "run", "--set", "train.lr=2001-13-01"],
        watch=[tmp_path],
        match=[r"train\.lr"],
    )
