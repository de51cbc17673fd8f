"""Study config, grid expansion, the plan printer and bad-config handling (no training here)."""

from __future__ import annotations

import json

import pytest
import yaml

from moelab.cli import main
from moelab.errors import MoelabError
from moelab.study.plan.config import StudyConfig, load_study, task_label
from moelab.study.plan.estimate import make_plan
from moelab.study.plan.grid import expand_grid
from moelab.study.plan.layout import RunState, eval_key, run_state
from study_helpers import mini_study


def _cfg(grid: dict, **extra) -> StudyConfig:
    data = {"base": {"model": "dense-cpu-0.5m", "train": {"budget_tokens": 4096}}, "grid": grid}
    data.update(extra)
    return load_study_from(data)


def load_study_from(data: dict) -> StudyConfig:
    from moelab.config import from_dict

    return from_dict(StudyConfig, data).validate()


def test_grid_is_the_cartesian_product_with_stable_names():
    cfg = _cfg(
        {"model": ["dense-cpu-0.5m", "moe-cpu-0.5m"], "train.lr": [1e-3, 2e-3], "seed": [1, 2]}
    )
    specs = expand_grid(cfg)
    assert len(specs) == 8
    names = [s.name for s in specs]
    assert len(set(names)) == 8
    assert names[0] == "dense-cpu-0.5m__lr=0.001__seed=1"
    last = specs[-1].run_config
    assert last["model"] == "moe-cpu-0.5m"
    assert last["train"] == {"budget_tokens": 4096, "lr": 2e-3, "seed": 2}  # seed -> train.seed
    assert expand_grid(cfg)[3].name == names[3]  # deterministic


def test_model_subkeys_and_routing_keys_split_families():
    cfg = _cfg(
        {"model.capacity_factor": [1.0, 2.0]},
        base={"model": "moe-cpu-0.5m", "train": {"budget_tokens": 4096}},
    )
    specs = expand_grid(cfg)
    assert specs[0].run_config["model"] == {"preset": "moe-cpu-0.5m", "capacity_factor": 1.0}
    assert [s.family_suffix for s in specs] == ["-cf=1", "-cf=2"]
    plan = make_plan(specs, data_dir=None, vocab_size=512, flops_per_second=1e10, measure=False)
    assert [p.family for p in plan] == ["moe8-top2-cf=1", "moe8-top2-cf=2"]
    assert plan[0].model.vocab_size == 512 and plan[0].model.capacity_factor == 1.0


def test_plan_numbers_follow_the_trainer_budget():
    cfg = _cfg({"model": ["dense-cpu-0.5m", "moe-cpu-0.5m"]})
    plan = make_plan(
        expand_grid(cfg), data_dir=None, vocab_size=2048, flops_per_second=1e10, measure=False
    )
    for p in plan:
        assert p.tokens == p.steps * 32 * 256 and p.steps == 1  # 4096 tokens < one batch
        assert p.train_flops == pytest.approx(p.flops_per_token * p.tokens)
        assert p.est_seconds == pytest.approx(p.train_flops / 1e10)
    assert plan[1].params.total > plan[1].params.active > plan[0].params.active


def test_default_study_fits_the_cpu_budget():
    """The paper's architecture and layout, three sizes per family (so the dense fit brackets
    the MoE's qualities), annealed points from cooldown branches, replicates of the smallest
    pair, BLiMP zero-shot where its files exist."""
    cfg = load_study(None)
    plan = make_plan(
        expand_grid(cfg),
        data_dir=None,
        vocab_size=cfg.data.vocab_size,
        flops_per_second=cfg.flops_per_second,
        measure=False,
    )
    total = sum(p.spent_flops for p in plan)
    assert 5e13 <= total <= 2e14
    assert cfg.data.vocab_size <= 4096
    assert {p.family for p in plan} == {"dense", "moe8-top2"}
    assert {p.run_config.model.arch for p in plan} == {"paper"}
    assert {p.run_config.model.init for p in plan} == {"fairseq"}
    assert {p.run_config.model.moe_every for p in plan if p.run_config.model.is_moe} == {2}
    for family in ("dense", "moe8-top2"):
        sizes = {p.preset for p in plan if p.family == family}
        assert len(sizes) >= 3
    assert cfg.fit.frontier == "annealed" and cfg.workers == 2 and cfg.threads == 1
    from moelab.train.budget import cooldowns_of, resolve_budget

    for p in plan:
        budget = resolve_budget(p.run_config)
        annealed = [c.end_step for c in cooldowns_of(p.run_config, budget)] + [budget.total_steps]
        kept = [s for s in annealed if s >= cfg.fit.min_run_fraction * budget.total_steps]
        assert len(kept) >= 3  # per run: the final point and two cooldown ends
    seeds = {}
    for p in plan:
        seeds.setdefault(p.preset, set()).add(p.run_config.train.seed)
    assert seeds["dense-cpu-0.25m"] == seeds["moe-cpu-0.25m"] == {1, 2}
    assert "blimp" in cfg.eval.zero_shot and "blimp" in cfg.eval.optional


def test_overrides_and_task_labels():
    cfg = load_study(None, ["eval.limit=50", "grid.seed=[1,2]", "replicates={}", "name=x"])
    assert cfg.eval.limit == 50 and cfg.grid["seed"] == [1, 2] and cfg.name == "x"
    with pytest.raises(MoelabError, match="replicates: the grid already varies the seed"):
        load_study(None, ["grid.seed=[1,2]"])
    assert task_label("/a/b/my_task.jsonl") == "my_task" and task_label("piqa") == "piqa"


def test_run_state_and_eval_key(tmp_path):
    cfg = load_study(None)
    key = eval_key(cfg.eval)
    assert run_state(tmp_path / "none", key) is RunState.NEW
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("x")
    assert run_state(tmp_path / "r", key) is RunState.INTERRUPTED
    (tmp_path / "r" / "done.json").write_text("{}")
    assert run_state(tmp_path / "r", key) is RunState.TRAINED
    (tmp_path / "r" / "study_eval.json").write_text(json.dumps({"eval_key": key}))
    assert run_state(tmp_path / "r", key) is RunState.FINISHED
    assert eval_key(load_study(None, ["eval.limit=3"]).eval) != key


def test_plan_cli_prints_every_run_and_trains_nothing(tmp_path, capsys):
    cfg = mini_study(tmp_path, with_tasks=False)
    # the shipped studies time each model for the plan (a real step of each, seconds here)
    cfg.write_text(cfg.read_text().replace("measure_throughput: false", "measure_throughput: true"))
    out = tmp_path / "out"
    assert main(["study", str(cfg), "--out", str(out), "--plan"]) == 0
    text = capsys.readouterr().out
    for name in ("tiny-dense-a", "tiny-moe-a", "tiny-dense-b", "tiny-moe-b"):
        assert name in text
    for column in ("params", "active", "tokens", "tok/param", "FLOPs", "est. time"):
        assert column in text
    assert "4 runs" in text and "training FLOPs" in text
    assert not (out / "runs").exists()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("grid: {train.lr: 0.1}\nbase: {model: dense-cpu-0.5m}\n", "grid.train.lr"),
        ("grid: {model: [dense-cpu-0.5m]}\nfit: {frontier: best}\n", "fit.frontier"),
        ("grid: {model: [dense-cpu-0.5m]}\nevals: {}\n", "unknown config key evals"),
        ("grid: [1, 2]\n", "grid"),
        ("base: {train: {budget_tokens: 10}}\n", "base.model"),
        ("grid: {model: [dense-cpu-0.5m]}\neval: {limit: 0}\n", "eval.limit"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_study_config_is_one_line_exit_2(tmp_path, capsys, content, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    rc = main(["study", str(path), "--out", str(tmp_path / "out"), "--plan"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err


def test_unknown_preset_and_missing_file_are_user_errors(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {"grid": {"model": ["dense-cpu-nope"]}, "base": {"train": {"budget_tokens": 100}}}
        )
    )
    assert main(["study", str(path), "--out", str(tmp_path / "o"), "--plan"]) == 2
    assert "dense-cpu-nope" in capsys.readouterr().err
    assert main(["study", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_load_study_rejects_wrong_types():
    with pytest.raises(MoelabError, match="eval.shots"):
        load_study(None, ["eval.shots=many"])


def test_shipped_default_yaml_mirrors_the_builtin_default():
    from pathlib import Path

    from moelab.study.plan.config import study_to_dict

    shipped = Path(__file__).resolve().parents[1] / "configs" / "study" / "default.yaml"
    assert study_to_dict(load_study(shipped)) == study_to_dict(load_study(None))


def test_shipped_cpu_study_plans():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "study" / "cpu.yaml"
    cfg = load_study(path)
    assert len(cfg.eval.finetune) >= 2 and cfg.eval.zero_shot and cfg.eval.few_shot
    assert len(cfg.data.heldout) >= 3
    plan = make_plan(
        expand_grid(cfg),
        data_dir=None,
        vocab_size=cfg.data.vocab_size,
        flops_per_second=cfg.flops_per_second,
        measure=False,
    )
    assert {p.family for p in plan} == {"dense", "moe8-top2"}
    assert cfg.fit.frontier == "annealed" and "blimp" in cfg.eval.zero_shot


def test_shipped_modern_study_asks_the_default_question_of_the_modern_architecture():
    from pathlib import Path

    from moelab.study.plan.config import study_to_dict

    path = Path(__file__).resolve().parents[1] / "configs" / "study" / "modern.yaml"
    modern, default = study_to_dict(load_study(path)), study_to_dict(load_study(None))
    plan = make_plan(
        expand_grid(load_study(path)),
        data_dir=None,
        vocab_size=2048,
        flops_per_second=1e11,
        measure=False,
    )
    assert {p.family for p in plan} == {"modern-dense", "modern-moe8-top2-every2"}
    assert {p.run_config.model.moe_every for p in plan if p.run_config.model.is_moe} == {2}
    # the same study but for the architecture (and its learning rate)
    for key in ("eval", "fit", "workers", "threads", "data"):
        assert modern[key] == default[key], key
    differs = {
        k
        for k in default["base"]["train"]
        if default["base"]["train"][k] != modern["base"]["train"][k]
    }
    assert differs <= {"lr"}


def test_per_model_settings_and_replicates():
    cfg = load_study(None)
    specs = {s.name: s for s in expand_grid(cfg)}
    assert specs["dense-cpu-1m"].run_config["train"]["lr"] == 6.0e-3
    assert specs["moe-cpu-0.25m__seed=2"].run_config["train"]["lr"] == 1.0e-2
    assert specs["moe-cpu-0.25m__seed=2"].run_config["train"]["seed"] == 2
    assert specs["moe-cpu-0.25m__seed=2"].values["seed"] == 2
    with pytest.raises(MoelabError, match="per_model: dense-cpu-8m not in grid.model"):
        expand_grid(load_study(None, ["per_model.dense-cpu-8m={train.lr: 0.001}"]))
    with pytest.raises(MoelabError, match="replicates.models: moe-cpu-8m not in grid.model"):
        expand_grid(load_study(None, ["replicates.models=[moe-cpu-8m]"]))


def test_replicate_seed_equal_to_the_base_seed_is_refused():
    with pytest.raises(MoelabError, match="replicates.seeds: 2 is already the seed of"):
        expand_grid(load_study(None, ["base.train.seed=2"]))
    specs = expand_grid(load_study(None, ["base.train.seed=11", "replicates.seeds=[12]"]))
    assert sorted({s.run_config["train"]["seed"] for s in specs}) == [11, 12]


def test_frontier_defaults_to_annealed_when_the_runs_fork_cooldowns(tmp_path):
    base = {"model": "dense-cpu-0.5m", "train": {"budget_tokens": 1000}}
    plain = StudyConfig(base=base).validate()
    assert plain.fit.frontier == "envelope"
    wsd = {"model": "dense-cpu-0.5m", "train": {"schedule": "wsd", "cooldowns": 2}}
    assert StudyConfig(base=wsd).validate().fit.frontier == "annealed"
    from moelab.study.plan.config import job_threads

    assert StudyConfig(base=wsd, workers=2).validate().threads == job_threads(2)


def test_shipped_small_cpu_study_plans():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "study" / "cpu-small.yaml"
    cfg = load_study(path)
    plan = make_plan(
        expand_grid(cfg), data_dir=None, vocab_size=4096, flops_per_second=1e11, measure=False
    )
    assert {p.family for p in plan} == {"dense", "moe8-top2"}
    assert len({p.preset for p in plan}) == 6 and cfg.workers == 2
    assert "blimp" in cfg.eval.zero_shot and cfg.eval.few_shot and not cfg.eval.finetune


def test_shipped_design_study_compares_four_families_at_matched_compute():
    from pathlib import Path

    from moelab.study.analysis.speedup import pair_families
    from moelab.study.plan.config import study_to_dict

    path = Path(__file__).resolve().parents[1] / "configs" / "study" / "designs.yaml"
    cfg = load_study(path)
    plan = make_plan(
        expand_grid(cfg), data_dir=None, vocab_size=2048, flops_per_second=1e11, measure=False
    )
    paper, shared = "moe8-top2", "moe31-top7-g4-shared1"
    sigmoid = shared + "-sigmoid-bias"
    families = list(dict.fromkeys(p.family for p in plan))
    assert families == ["dense", paper, shared, sigmoid]
    # every MoE family against dense: one speedup each
    assert pair_families(families) == ("dense", {f: "dense" for f in families[1:]})
    # matched compute: at each size every MoE design costs what the paper's MoE costs
    flops: dict[tuple[str, int], set[float]] = {}
    for p in plan:
        if p.family != "dense":
            size = p.name.split("__")[0].split("-")[2]
            flops.setdefault((size, p.run_config.train.seed), set()).add(p.train_flops)
    assert len(flops) == 3 + 2 * 2 and all(len(v) == 1 for v in flops.values())
    # the written-out 0.25M designs are the presets' layout at that size
    by_name = {p.name: p.run_config.model for p in plan}
    small = by_name["moe-cpu-0.25m-g4-sigmoid"]
    assert small.expert_width * 4 == small.d_ffn and small.balance == "bias"
    assert (small.n_experts, small.top_k, small.n_shared_experts) == (31, 7, 1)
    # the default study's question otherwise
    designs, default = study_to_dict(cfg), study_to_dict(load_study(None))
    for key in ("eval", "fit", "workers", "threads", "data"):
        assert designs[key] == default[key], key
    assert designs["base"] == default["base"]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"grid": {"model": "dense-cpu-0.5m"}}, "grid.model: expected a non-empty list"),
        ({"workers": "2"}, "workers: must be an integer"),
        ({"flops_per_second": float("inf")}, "flops_per_second: expected a finite number"),
        ({"per_model": {"x": "lr"}}, "per_model.x: expected a mapping"),
    ],
)
def test_validate_checks_types_of_a_config_built_in_python(kwargs, needle):
    with pytest.raises(MoelabError, match=needle):
        StudyConfig(base={"model": "dense-cpu-0.5m"}, **kwargs).validate()
