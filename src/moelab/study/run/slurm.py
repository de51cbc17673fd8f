"""``moelab study ... --emit slurm DIR``: the study as a Slurm job array.

Three files in DIR:

- ``array.sbatch``: one array task per run of the plan; task i runs ``moelab study STUDY.yaml
  --out S --only RUN_i``, which trains that run with ``moelab train`` (under torchrun when it
  trains on several processes) and evaluates it (study/run/task.py);
- ``report.sbatch``: ``moelab report S``;
- ``submit.sh``: submits the array, then the report job with ``--dependency=afterany`` on it
  (it runs when every task has ended, and refuses in one line if a run is unfinished).

Resuming is the study's: resubmitting skips finished and diverged runs and resumes interrupted
ones from their newest checkpoint. Every path is absolute and the interpreter is this one, so
the scripts work from any folder of a node that sees the same filesystem.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from moelab.errors import MoelabError
from moelab.io import atomic_write_text
from moelab.study.plan.estimate import PlannedRun


def _q(x: object) -> str:
    return shlex.quote(str(x))


def array_script(
    plan: list[PlannedRun], study_dir: Path, dest: Path, *, name: str, procs: int, extra: list[str]
) -> str:
    py = _q(sys.executable)
    lines = [
        "#!/bin/bash",
        f"# moelab study {name}: one Slurm array task per run ({len(plan)} runs), each trains",
        f"# and evaluates its run in {study_dir}. Submit with {dest / 'submit.sh'}; resubmitting",
        "# resumes (finished runs return at once, interrupted ones resume from a checkpoint).",
        f"#SBATCH --job-name=moelab-{name}",
        f"#SBATCH --array=0-{len(plan) - 1}",
        f"#SBATCH --output={dest / 'logs'}/%x-%A_%a.out",
        "#SBATCH --ntasks=1",
        "#SBATCH --open-mode=append",
        f"#SBATCH --gres=gpu:{procs}",
        "# (a CPU-only cluster: delete the --gres line; --sbatch adds lines such as --time=...)",
        *[f"#SBATCH {opt}" for opt in extra],
        "set -euo pipefail",
        "",
        "RUNS=(",
        *[f"  {_q(p.name)}" for p in plan],
        ")",
        ': "${SLURM_ARRAY_TASK_ID:?run with sbatch, or set SLURM_ARRAY_TASK_ID to a run index}"',
        "if (( SLURM_ARRAY_TASK_ID < 0 || SLURM_ARRAY_TASK_ID >= ${#RUNS[@]} )); then",
        '  echo "SLURM_ARRAY_TASK_ID=$SLURM_ARRAY_TASK_ID:" \\',
        '       "this array has runs 0-$((${#RUNS[@]} - 1))" >&2',
        "  exit 2",
        "fi",
        'RUN="${RUNS[$SLURM_ARRAY_TASK_ID]}"',
        "# relative paths in the study file resolve where the study was written",
        f"cd {_q(Path.cwd())}",
        "# train (moelab train; under torchrun with --procs-per-run > 1) and evaluate this run",
        f"exec {py} -m moelab study {_q(study_dir / 'study.yaml')} --out {_q(study_dir)} "
        f'--only "$RUN" --procs-per-run {procs}',
        "",
    ]
    return "\n".join(lines)


def report_script(study_dir: Path, dest: Path, *, name: str, extra: list[str]) -> str:
    sbatch = "".join(f"#SBATCH {opt}\n" for opt in extra)
    return f"""#!/bin/bash
# moelab study {name}: results table, fits and report once every run has ended
#SBATCH --job-name=moelab-{name}-report
#SBATCH --output={dest / "logs"}/%x-%j.out
#SBATCH --ntasks=1
{sbatch}set -euo pipefail
exec {_q(sys.executable)} -m moelab report {_q(study_dir)}
"""


def submit_script(dest: Path) -> str:
    return f"""#!/bin/bash
# Submit the study's array, then its report job after every array task has ended.
set -euo pipefail
job=$(sbatch --parsable {_q(dest / "array.sbatch")})
job="${{job%%;*}}"  # "ID;CLUSTER" on a multi-cluster setup
sbatch --dependency=afterany:$job {_q(dest / "report.sbatch")}
echo "array job $job submitted; the report follows it"
"""


def emit_slurm(
    plan: list[PlannedRun],
    study_dir: Path,
    dest: str | Path,
    *,
    name: str,
    procs: int = 1,
    extra: list[str] | None = None,
) -> list[Path]:
    """Write the three scripts (and DIR/logs/) and return their paths."""
    dest = Path(dest).absolute()
    study_dir = study_dir.absolute()
    if dest.exists() and not dest.is_dir():
        raise MoelabError(f"--emit slurm {dest}: exists and is not a folder")
    try:
        (dest / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MoelabError(f"--emit slurm {dest}: cannot create the folder ({e.strerror})") from None
    extra = list(extra or [])
    files = {
        "array.sbatch": array_script(plan, study_dir, dest, name=name, procs=procs, extra=extra),
        "report.sbatch": report_script(study_dir, dest, name=name, extra=extra),
        "submit.sh": submit_script(dest),
    }
    for fname, text in files.items():
        atomic_write_text(dest / fname, text)
        os.chmod(dest / fname, 0o755)
    return [dest / fname for fname in files]
