"""`moelab report`: rebuild a study's table, fits, plots and report from its finished runs."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("dir", metavar="DIR", help="the --out folder of a `moelab study` run")
    parser.add_argument(
        "--readme-snippet",
        action="store_true",
        help="after rebuilding, print DIR/readme_snippet.md (command, wall time, runs table, "
        "headline speedups with intervals and labels, measured bounds, seed spread, BLiMP) for "
        "the README to paste verbatim; the usual status line goes to stderr",
    )


def run(args) -> int:
    import sys
    from pathlib import Path

    from moelab.study.analysis.report import SNIPPET, build_report

    if not args.readme_snippet:
        build_report(args.dir)
        return 0
    build_report(args.dir, echo=lambda line: print(line, file=sys.stderr))
    sys.stdout.write((Path(args.dir) / SNIPPET).read_text(encoding="utf-8"))
    return 0
