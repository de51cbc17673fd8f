"""`moelab consolidate RUN_DIR [--step N]`: a checkpoint written by several processes (DCP shards
only) gets one ``model.safetensors``, written one tensor at a time and recorded in its
``meta.json``. Nothing needs it (every reader loads the shards); it is for tools that want one
file."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `moelab train`")
    parser.add_argument("--step", type=int, help="checkpoint step (default newest)")


def run(args: argparse.Namespace) -> int:
    from moelab.train.checkpoint import consolidate_checkpoint

    path, written = consolidate_checkpoint(args.run_dir, args.step)
    if written is None:
        print(f"{path}: already one file ({path.name}/model.safetensors); nothing to do")
    else:
        print(f"wrote {path / 'model.safetensors'} ({written['bytes']:,} bytes)")
    return 0
