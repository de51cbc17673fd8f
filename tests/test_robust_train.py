"""`moelab train` refuses bad input with one line and exit 2, and touches nothing on disk."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from _robust import (
    DELETE,
    copy_run,
    expect_user_error,
    fill,
    run_cli,
    set_dotted,
    snapshot,
    tiny_run_config,
    unreadable_file,
    write_corpus,
    write_yaml,
)

# (id, {dotted key: value}, regexes the line must contain). Every case fails before training.
CONFIG_CASES = [
    ("unknown-train-key", {"train.learning_rate": 1e-3}, [r"train\.learning_rate", r"valid keys"]),
    ("unknown-model-key", {"model.n_expert": 4}, [r"model\.n_expert", r"valid keys"]),
    ("unknown-data-key", {"data": {"dir": "{data}", "weight": {}}}, [r"data\.weight"]),
    ("unknown-section", {"optimizer": {"lr": 1}}, [r"optimizer", r"valid sections"]),
    ("lr-wrong-type", {"train.lr": "fast"}, [r"train\.lr", r"number"]),
    ("layers-wrong-type", {"model.n_layers": "two"}, [r"model\.n_layers", r"integer"]),
    ("batch-float", {"train.batch_size": 3.5}, [r"train\.batch_size", r"integer"]),
    ("bool-for-int", {"train.seq_len": True}, [r"train\.seq_len"]),
    ("list-for-int", {"model.d_model": [32]}, [r"model\.d_model"]),
    ("model-wrong-type", {"model": 7}, [r"model"]),
    ("train-not-mapping", {"train": "fast"}, [r"train"]),
    ("negative-budget-steps", {"train.budget_steps": -4}, [r"budget_steps", r"> 0"]),
    (
        "negative-budget-tokens",
        {"train.budget_steps": DELETE, "train.budget_tokens": -1000},
        [r"budget_tokens", r"> 0"],
    ),
    (
        "negative-budget-flops",
        {"train.budget_steps": DELETE, "train.budget_flops": -1e12},
        [r"budget_flops", r"> 0"],
    ),
    ("nan-budget", {"train.budget_steps": DELETE, "train.budget_flops": ".nan"}, [r"budget"]),
    ("no-budget", {"train.budget_steps": DELETE}, [r"exactly one budget"]),
    ("two-budgets", {"train.budget_tokens": 1000}, [r"exactly one budget"]),
    ("top-k-above-experts", {"model.top_k": 5}, [r"model\.top_k", r"n_experts=4"]),
    ("top-k-zero", {"model.top_k": 0}, [r"model\.top_k"]),
    ("capacity-factor-zero", {"model.capacity_factor": 0}, [r"capacity_factor", r"> 0"]),
    ("capacity-factor-negative", {"model.capacity_factor": -1.0}, [r"capacity_factor"]),
    ("eval-capacity-zero", {"model.eval_capacity_factor": 0.0}, [r"eval_capacity_factor"]),
    ("capacity-factor-inf", {"model.capacity_factor": ".inf"}, [r"capacity_factor"]),
    ("negative-experts", {"model.n_experts": -2}, [r"n_experts", r">= 0"]),
    ("moe-every-too-big", {"model.moe_every": 9}, [r"moe_every"]),
    ("heads-not-dividing", {"model.n_heads": 3}, [r"n_heads", r"divisible"]),
    ("dropout-above-one", {"model.dropout": 1.5}, [r"dropout"]),
    ("vocab-below-specials", {"model.vocab_size": 1}, [r"vocab_size", r"remove the key"]),
    ("vocab-other-than-data", {"model.vocab_size": 5000}, [r"vocab_size", r"tokenizer"]),
    ("seq-len-above-max", {"train.seq_len": 64}, [r"seq_len", r"max_seq_len"]),
    ("seq-len-zero", {"train.seq_len": 0}, [r"seq_len", r">= 1"]),
    ("lr-zero", {"train.lr": 0}, [r"train\.lr", r"> 0"]),
    ("lr-negative", {"train.lr": -1e-3}, [r"train\.lr"]),
    ("grad-accum-not-dividing", {"train.grad_accum": 3}, [r"grad_accum", r"divisible"]),
    ("bad-schedule", {"train.schedule": "exponential"}, [r"schedule"]),
    ("bad-dtype", {"train.dtype": "fp8"}, [r"dtype"]),
    ("betas-out-of-range", {"train.betas": [0.9, 1.5]}, [r"betas"]),
    ("bad-device", {"train.device": "tpu"}, [r"device"]),
    ("unknown-preset", {"model.preset": "gpt-9000"}, [r"gpt-9000", r"moelab presets|did you"]),
    ("data-missing-folder", {"data": "{tmp}/no_such_data"}, [r"no_such_data", r"prepare"]),
    ("data-not-prepared", {"data": "{tmp}"}, [r"not a prepared data folder", r"prepare"]),
    ("data-weights-unknown", {"data": {"dir": "{data}", "weights": {"zeta": 1}}}, [r"zeta"]),
    ("data-weights-negative", {"data": {"dir": "{data}", "weights": {"alpha": -1}}}, [r"alpha"]),
    ("data-weights-all-zero", {"data": {"dir": "{data}", "weights": {"alpha": 0}}}, [r"zero"]),
    ("no-model", {"model": DELETE}, [r"model"]),
    ("no-train", {"train": DELETE}, [r"train"]),
]


def _cases(cases: list[tuple]) -> list:
    """pytest params; a case with a 4th element is a known bug (strict xfail, that reason)."""
    out = []
    for case in cases:
        marks = [pytest.mark.xfail(strict=True, reason=case[3])] if len(case) > 3 else []
        out.append(pytest.param(*case[1:3], id=case[0], marks=marks))
    return out


@pytest.mark.parametrize("changes, match", _cases(CONFIG_CASES))
def test_bad_config_is_refused_cleanly(changes, match, shared_data, tmp_path, capsys):
    cfg = tiny_run_config(shared_data)
    for key, value in changes.items():
        value = fill(value, tmp=tmp_path, data=shared_data)
        if isinstance(value, str) and value in (".nan", ".inf"):
            value = float(value[1:])
        set_dotted(cfg, key, value)
    write_yaml(tmp_path / "run.yaml", cfg)
    argv = ["train", tmp_path / "run.yaml", "--out", tmp_path / "run", "--no-progress"]
    expect_user_error(capsys, argv, watch=[tmp_path, shared_data], match=match)


# (id, --set arguments, regexes)
OVERRIDE_CASES = [
    ("set-without-equals", ["train.lr"], [r"KEY=VALUE"]),
    ("set-empty-key", ["=3"], [r"empty key"]),
    ("set-wrong-type", ["train.lr=fast"], [r"train\.lr"]),
    ("set-unknown-key", ["train.lrate=0.1"], [r"train\.lrate"]),
    ("set-top-k", ["model.top_k=9"], [r"top_k"]),
    ("set-capacity-zero", ["model.capacity_factor=0"], [r"capacity_factor"]),
    ("set-negative-budget", ["train.budget_steps=-1"], [r"budget_steps"]),
    ("set-into-scalar", ["train.lr.value=3"], [r"lr"]),
]


@pytest.mark.parametrize(
    "sets, match", [c[1:] for c in OVERRIDE_CASES], ids=[c[0] for c in OVERRIDE_CASES]
)
def test_bad_override_is_refused_cleanly(sets, match, shared_data, tmp_path, capsys):
    write_yaml(tmp_path / "run.yaml", tiny_run_config(shared_data))
    argv = ["train", tmp_path / "run.yaml", "--out", tmp_path / "run", "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    expect_user_error(capsys, argv, watch=[tmp_path, shared_data], match=match)


def test_bad_config_file_is_refused_cleanly(shared_data, tmp_path, capsys):
    out = ["--out", tmp_path / "run", "--no-progress"]
    files = {
        "missing.yaml": None,
        "garbage.yaml": b"model: [unclosed\ntrain: {\n",
        "latin1.yaml": "model: d\u00e9j\u00e0\n".encode("latin-1"),
        "list.yaml": b"- model\n- train\n",
        "binary.yaml": bytes(range(256)),
    }
    for name, content in files.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    unreadable_file(tmp_path, "unreadable.yaml")
    (tmp_path / "folder.yaml").mkdir()
    cases = {
        "missing.yaml": [r"not found", r"missing\.yaml"],
        "garbage.yaml": [r"garbage\.yaml", r"not valid YAML"],
        "latin1.yaml": [r"latin1\.yaml"],
        "list.yaml": [r"mapping"],
        "binary.yaml": [r"binary\.yaml"],
        "unreadable.yaml": [r"unreadable\.yaml"],
        "folder.yaml": [r"folder\.yaml"],
    }
    for name, match in cases.items():
        expect_user_error(
            capsys, ["train", tmp_path / name, *out], watch=[tmp_path, shared_data], match=match
        )


def test_bad_command_line_is_refused_cleanly(shared_data, tmp_path, capsys):
    prepared = shared_data
    watch = [tmp_path, prepared]
    base = ["train", "--out", tmp_path / "run", "--no-progress"]
    expect_user_error(capsys, base, watch=watch, match=[r"CONFIG\.yaml|--preset"])
    expect_user_error(
        capsys,
        [*base, "--preset", "nope-1b", "--data", prepared, "--steps", "2"],
        watch=watch,
        match=[r"nope-1b", r"moelab presets|did you mean"],
    )
    expect_user_error(
        capsys,
        [*base, "--preset", "moe-cpu-0.5m", "--data", prepared, "--steps", "-3"],
        watch=watch,
        match=[r"budget_steps"],
    )
    expect_user_error(
        capsys,
        [*base, "--preset", "moe-cpu-0.5m", "--data", prepared, "--budget-tokens", "-5"],
        watch=watch,
        match=[r"budget_tokens"],
    )
    expect_user_error(
        capsys,
        [*base, "--preset", "moe-cpu-0.5m", "--data", prepared, "--steps", "2", "--budget-flops"],
        watch=watch,
        match=[r"--budget-flops"],
    )


# ---------------------------------------------------------------------------------------------
# Damaged data


def _damaged_copy(prepared: Path, dest: Path, damage: str, tmp_path: Path) -> Path:
    shutil.copytree(prepared, dest)
    if damage == "truncated-shard":
        shard = dest / "alpha.train.tokens.bin"
        shard.write_bytes(shard.read_bytes()[:-10])
    elif damage in ("shard-other-tokenizer", "folder-other-tokenizer"):
        from moelab.data import prepare

        write_corpus(tmp_path / "other_src", 40, seed=1)
        other = tmp_path / "other_prepared"
        prepare(other, sources=[f"alpha={tmp_path / 'other_src'}/*.txt"], vocab_size=280)
        names = ["alpha.train.tokens.bin"]
        if damage == "folder-other-tokenizer":  # manifest and shards, but not the tokenizer
            names += [p.name for p in other.glob("alpha.*")] + ["manifest.json"]
        for name in names:
            shutil.copyfile(other / name, dest / name)
        shutil.rmtree(other)
    elif damage == "tokenizer-replaced":
        tok = json.loads((dest / "tokenizer.json").read_text())
        tok["model"]["vocab"] = dict(reversed(list(tok["model"]["vocab"].items())))
        (dest / "tokenizer.json").write_text(json.dumps(tok))
    elif damage == "manifest-missing":
        (dest / "manifest.json").unlink()
    elif damage == "manifest-garbage":
        (dest / "manifest.json").write_bytes(b"\xff\xfe not json")
    return dest


DATA_DAMAGE = [
    ("truncated-shard", [r"alpha\.train\.tokens\.bin", r"prepare again"]),
    ("shard-other-tokenizer", [r"alpha\.train\.tokens\.bin", r"prepare again"]),
    ("folder-other-tokenizer", [r"tokenizer\.json", r"prepare again"]),
    ("tokenizer-replaced", [r"tokenizer\.json", r"prepare again"]),
    ("manifest-missing", [r"manifest\.json", r"moelab prepare"]),
    ("manifest-garbage", [r"manifest\.json", r"prepare again"]),
]


@pytest.mark.parametrize("damage, match", DATA_DAMAGE, ids=[d[0] for d in DATA_DAMAGE])
def test_damaged_data_is_refused_cleanly(damage, match, shared_data, tmp_path, capsys):
    data = _damaged_copy(shared_data, tmp_path / "data", damage, tmp_path)
    write_yaml(tmp_path / "run.yaml", tiny_run_config(data))
    argv = ["train", tmp_path / "run.yaml", "--out", tmp_path / "run", "--no-progress"]
    expect_user_error(capsys, argv, watch=[tmp_path], match=match)


# ---------------------------------------------------------------------------------------------
# The output folder


def test_out_holding_a_different_run_is_kept(finished_run, shared_data, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    for key, value in [("train.lr", 5e-3), ("model.top_k", 1), ("train.seed", 7)]:
        cfg = set_dotted(tiny_run_config(shared_data), key, value)
        write_yaml(tmp_path / "other.yaml", cfg)
        expect_user_error(
            capsys,
            ["train", tmp_path / "other.yaml", "--out", run, "--no-progress"],
            watch=[tmp_path],
            match=[r"different config", key.replace(".", r"\."), r"new --out"],
        )


def test_out_holding_other_things_is_kept(shared_data, tmp_path, capsys):
    write_yaml(tmp_path / "run.yaml", tiny_run_config(shared_data))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("\\section{Results}\n")
    (tmp_path / "a_file").write_text("not a folder\n")
    for out, match in [("mine", r"not empty"), ("a_file", r"not a folder")]:
        expect_user_error(
            capsys,
            ["train", tmp_path / "run.yaml", "--out", tmp_path / out, "--no-progress"],
            watch=[tmp_path],
            match=[match],
        )


def test_out_with_a_corrupt_config_is_kept(finished_run, shared_data, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "config.yaml").write_text("model: {preset: [\n")
    write_yaml(tmp_path / "run.yaml", tiny_run_config(shared_data))
    expect_user_error(
        capsys,
        ["train", tmp_path / "run.yaml", "--out", run, "--no-progress"],
        watch=[tmp_path],
        match=[r"config\.yaml", r"YAML"],
    )


def _interrupted(finished_run: Path, dest: Path) -> Path:
    """The shared run as if killed after its step-2 checkpoint."""
    run = copy_run(finished_run, dest)
    (run / "done.json").unlink()
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    return run


def test_resume_with_only_a_truncated_checkpoint(finished_run, tmp_path, capsys):
    run = _interrupted(finished_run, tmp_path / "run")
    weights = run / "checkpoints" / "step_00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    expect_user_error(
        capsys,
        ["train", "--out", run, "--no-progress"],
        watch=[tmp_path],
        match=[r"no valid checkpoint", r"truncated", r"delete"],
    )


def _checkpoint_from(other_run: Path, run: Path) -> None:
    """Put ``other_run``'s step-4 checkpoint (meta.json and checksums included) into ``run``."""
    shutil.copytree(
        other_run / "checkpoints" / "step_00000004", run / "checkpoints" / "step_00000004"
    )


def test_resume_from_a_checkpoint_of_another_shape(finished_run, dense_run, tmp_path, capsys):
    run = _interrupted(finished_run, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "step_00000002")
    _checkpoint_from(dense_run, run)
    expect_user_error(
        capsys,
        ["train", "--out", run, "--no-progress"],
        watch=[tmp_path],
        match=[r"model\.safetensors", r"do not fit"],
    )


def test_resume_from_a_checkpoint_of_another_config(finished_run, shared_data, tmp_path, capsys):
    cfg = set_dotted(tiny_run_config(shared_data), "train.lr", 5e-3)
    write_yaml(tmp_path / "other.yaml", cfg)
    rc, _, err = run_cli(
        capsys, ["train", tmp_path / "other.yaml", "--out", tmp_path / "other", "--no-progress"]
    )
    assert rc == 0, err
    run = _interrupted(finished_run, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "step_00000002")
    _checkpoint_from(tmp_path / "other", run)
    expect_user_error(
        capsys,
        ["train", "--out", run, "--no-progress"],
        watch=[tmp_path / "run"],
        match=[r"config"],
    )


def test_resume_on_data_with_another_tokenizer(tmp_path, capsys):
    from moelab.data import prepare

    def prep(seed: int) -> None:
        src = write_corpus(tmp_path / f"src{seed}", 40, seed=seed)
        out = tmp_path / "data"
        if out.exists():
            shutil.rmtree(out)
        prepare(out, sources=[f"alpha={src}/*.txt"], vocab_size=300)

    prep(1)
    cfg = write_yaml(tmp_path / "run.yaml", tiny_run_config(tmp_path / "data", budget_steps=2))
    rc, _, err = run_cli(capsys, ["train", cfg, "--out", tmp_path / "run", "--no-progress"])
    assert rc == 0, err
    (tmp_path / "run" / "done.json").unlink()  # as if killed before the end
    prep(5)  # same path, same vocab size, other text: another tokenizer
    assert (tmp_path / "data" / "tokenizer.json").read_bytes() != (
        tmp_path / "run" / "tokenizer.json"
    ).read_bytes()
    expect_user_error(
        capsys,
        ["train", cfg, "--out", tmp_path / "run", "--no-progress"],
        watch=[tmp_path / "run"],
        match=[r"data", r"changed|tokenizer"],
    )


def test_finished_run_rerun_changes_nothing(finished_run, tmp_path, capsys):
    """Positive control: re-running a finished run changes no byte and no mtime in it."""
    run = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    rc, _, err = run_cli(capsys, ["train", "--out", run, "--no-progress"])
    assert rc == 0, err
    assert snapshot(run) == before


def test_config_unchanged_by_a_refused_override(finished_run, tmp_path, capsys):
    """Resuming a run with a result-changing --set is refused; the stored config stays."""
    run = copy_run(finished_run, tmp_path / "run")
    stored = yaml.safe_load((run / "config.yaml").read_text())
    expect_user_error(
        capsys,
        ["train", "--out", run, "--set", "train.lr=0.5", "--no-progress"],
        watch=[tmp_path],
        match=[r"different config", r"train\.lr"],
    )
    assert yaml.safe_load((run / "config.yaml").read_text()) == copy.deepcopy(stored)


def test_out_that_cannot_be_created(shared_data, tmp_path, capsys):
    write_yaml(tmp_path / "run.yaml", tiny_run_config(shared_data))
    (tmp_path / "a_file").write_text("not a folder\n")
    expect_user_error(
        capsys,
        ["train", tmp_path / "run.yaml", "--out", tmp_path / "a_file" / "run", "--no-progress"],
        watch=[tmp_path, shared_data],
        match=[r"a_file"],
    )
