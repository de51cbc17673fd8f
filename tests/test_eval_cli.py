"""`moelab eval` and `moelab finetune` run in-process through moelab.cli.main."""

from __future__ import annotations

import json

import pytest

from moelab.cli import main


def _task(tmp_path, name="even", n=6, train=0):
    def rows(k, off):
        return "".join(
            json.dumps(
                {
                    "context": f"the cat {i + off} sat",
                    "choices": ["on the mat", "in the tree"],
                    "label": (i + off) % 2,
                }
            )
            + "\n"
            for i in range(k)
        )

    path = tmp_path / f"{name}.jsonl"
    path.write_text(rows(n, 0), encoding="utf-8")
    if train:
        (tmp_path / f"{name}.train.jsonl").write_text(rows(train, 100), encoding="utf-8")
    return path


@pytest.mark.slow
def test_eval_ppl_and_task_json(eval_run, tmp_path, capsys):
    run = eval_run
    task = _task(tmp_path)
    code = main(
        [
            "eval",
            str(run),
            "--ppl",
            "--task",
            str(task),
            "--shots",
            "1",
            "--seeds",
            "2",
            "--limit",
            "4",
            "--json",
            "--show-prompt",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out)  # exactly one JSON document on stdout
    ppl, primed = doc["results"]
    assert ppl["kind"] == "perplexity" and {d["role"] for d in ppl["domains"]} == {
        "in-domain",
        "out-of-domain",
    }
    assert primed["task"] == "even" and primed["shots"] == 1 and primed["seeds"] == [0, 1]
    assert primed["n_items"] == 4 and primed["chance"] == 0.5
    assert len(primed["example_prompts"]["candidates"]) == 2
    assert primed["checkpoint"]["sha256"] and primed["capacity"]["dropless"] is True
    for r in doc["results"]:
        on_disk = json.loads(open(r["file"], encoding="utf-8").read())
        assert on_disk["kind"] == r["kind"]
    assert (run / "eval" / "ppl.json").is_file()
    assert (run / "eval" / "priming-even-1shot-limit4.json").is_file()


def test_eval_human_table_and_prompt(eval_run, tmp_path, capsys):
    run = eval_run
    task = _task(tmp_path, "tbl")
    assert main(["eval", str(run), "--task", str(task), "--show-prompt", "--separator", " | "]) == 0
    out = capsys.readouterr().out
    assert "[candidate 1] continuation: ' in the tree'" in out
    assert "tbl" in out and "chance" in out and "wrote " in out


def test_eval_errors_are_one_line_exit_2(eval_run, tmp_path, capsys):
    run = eval_run
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "choices": ["x", "y"], "label": 5}\n', encoding="utf-8")
    assert main(["eval", str(run), "--task", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'line 1: field "label"' in err
    assert main(["eval", str(run)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "none"), "--ppl"]) == 2
    assert main(["eval", str(run), "--task", "piqa", "--tasks-dir", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_cli_choice_head(eval_run, tmp_path, capsys):
    run = eval_run
    task = _task(tmp_path, "ft", n=4, train=10)
    code = main(
        [
            "finetune",
            str(run),
            "--task",
            str(task),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--lrs",
            "1e-4,1e-3",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["head"] == "choice" and result["n_items"] == 4 and result["n_train"] == 9
    assert [g["lr"] for g in result["grid"]] == [1e-4, 1e-3]
    assert result["best_lr"] in (1e-4, 1e-3) and 0.0 <= result["accuracy"] <= 1.0
    assert (run / "eval" / "finetune-ft.json").is_file()
    assert main(["finetune", str(run), "--task", str(task), "--lrs", "fast"]) == 2


def test_eval_fewshot_sampling_flag(eval_run, tmp_path, capsys):
    run = eval_run
    task = _task(tmp_path, "samp", n=6, train=8)
    args = ["eval", str(run), "--task", str(task), "--shots", "2", "--seeds", "2", "--json"]
    assert main([*args, "--fewshot-sampling", "per_run"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["fewshot_sampling"] == "per_run" and result["primary_mode"] == "mean"
    assert 0.0 <= result["score"] <= 1.0 and result["score_chance"] == 0.5
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["fewshot_sampling"] == "per_item"


@pytest.mark.slow
def test_eval_registered_lambada_scores_greedy(eval_run, tmp_path, capsys):
    # A registered last-word task once got the registry's default mode "mean" and every
    # `moelab eval --task lambada` stopped with "'mean' is not one of its modes (greedy)".
    folder = tmp_path / "tasks" / "lambada"
    folder.mkdir(parents=True)
    texts = ["the cat sat on the mat", "the dog ran in the park", "a bird sang in the tree"]
    (folder / "lambada_openai.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8"
    )
    argv = ["eval", str(eval_run), "--task", "lambada", "--tasks-dir", str(tmp_path / "tasks")]
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (result,) = json.loads(captured.out)["results"]
    assert result["task"] == "lambada" and result["primary_mode"] == "greedy"
    assert result["n_items"] == 3 and 0.0 <= result["accuracy"] <= 1.0
