"""The config loader: typed dataclasses from plain data, dotted overrides, clear errors."""

from dataclasses import dataclass, field

import pytest

from moelab.config import ModelConfig, apply_overrides, from_dict, load_yaml
from moelab.errors import MoelabError


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    factor: float | None = 1.0


def test_from_dict_builds_nested_and_coerces_numbers():
    cfg = from_dict(Outer, {"inner": {"lr": "3e-4", "steps": 5.0}, "tags": ["a"], "factor": None})
    assert cfg.inner.lr == pytest.approx(3e-4)  # PyYAML reads 3e-4 as a string
    assert cfg.inner.steps == 5 and isinstance(cfg.inner.steps, int)
    assert cfg.tags == ["a"] and cfg.factor is None


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"inner": {"lrr": 1}}, "unknown config key inner.lrr"),
        ({"inner": {"steps": 1.5}}, "inner.steps: expected an integer"),
        ({"inner": {"lr": "fast"}}, "inner.lr: expected a number"),
        ({"tags": "a"}, "tags: expected a list"),
        ({"inner": 3}, "inner: expected a mapping"),
        ({"name": True}, "name: expected a string"),
    ],
)
def test_from_dict_names_the_bad_key(data, fragment):
    with pytest.raises(MoelabError, match=fragment):
        from_dict(Outer, data)


def test_apply_overrides_parses_yaml_scalars_and_nests():
    out = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=null", "d.e=[1, 2]", "f=hi"])
    assert out == {"a": {"b": 2, "c": None}, "d": {"e": [1, 2]}, "f": "hi"}


@pytest.mark.parametrize("bad", ["novalue", "=3", "a.b.c=1"])
def test_apply_overrides_rejects_malformed(bad):
    with pytest.raises(MoelabError):
        apply_overrides({"a": {"b": 1}}, [bad])


def test_load_yaml_errors(tmp_path):
    with pytest.raises(MoelabError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(MoelabError, match="not valid YAML"):
        load_yaml(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(MoelabError, match="mapping"):
        load_yaml(listy)


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"n_heads": 5}, "model.n_heads"),
        ({"n_experts": 4, "top_k": 5}, "model.top_k"),
        ({"n_experts": 4, "capacity_factor": 0.0}, "model.capacity_factor"),
        ({"arch": "rnn"}, "model.arch"),
        ({"dropout": 1.5}, "model.dropout"),
        ({"n_experts": -1}, "model.n_experts"),
    ],
)
def test_model_config_validation(change, fragment):
    with pytest.raises(MoelabError, match=fragment):
        ModelConfig(**change).validate()


def test_moe_layer_ids_follow_the_paper():
    cfg = ModelConfig(n_layers=6, n_experts=4, moe_every=2)
    assert cfg.moe_layer_ids() == [1, 3, 5]  # 1-based layers 2, 4, 6
    assert ModelConfig(n_layers=3, n_experts=4, moe_every=1).moe_layer_ids() == [0, 1, 2]
    assert ModelConfig(n_experts=0).moe_layer_ids() == []
