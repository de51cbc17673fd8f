"""`moelab report`: rebuild a study's table, fits, plots and report from its finished runs."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("dir", metavar="DIR", help="the --out folder of a `moelab study` run")


def run(args) -> int:
    from moelab.study.report import build_report

    build_report(args.dir)
    return 0
