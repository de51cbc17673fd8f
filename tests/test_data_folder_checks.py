"""A crafted prepared folder cannot make moelab read outside it or index past the vocabulary
(issue 19, item 7): manifest file names resolve inside the folder, token ids are range-checked
at open (with the checksums, or on a split's first read when unverified), and the manifest's
vocab_size must be its tokenizer's."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from _robust import (
    copy_run,
    expect_user_error,
    run_cli,
)
from moelab.data import PreparedData
from moelab.errors import MoelabError


@pytest.fixture(scope="module")
def run(finished_run, tmp_path_factory) -> Path:
    """A copy of the shared run: successful evaluations write RUN/eval, and the shared run is
    read-only for every robustness test (one copies it and puts a file at RUN/eval)."""
    return copy_run(finished_run, tmp_path_factory.mktemp("run") / "run")


def crafted(prepared: Path, dest: Path, edit) -> Path:
    """A copy of the prepared folder whose manifest ``edit(manifest, folder)`` changed."""
    folder = dest / "crafted"
    shutil.copytree(prepared, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest, folder)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def val_tokens(manifest: dict) -> dict:
    return manifest["domains"]["gamma"]["splits"]["val"]["files"]["tokens"]


def point_outside(manifest: dict, folder: Path) -> None:
    """The held-out tokens file renamed to ../outside/secret.bin, a file of the same size."""
    rec = val_tokens(manifest)
    outside = folder.parent / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"S" * rec["bytes"])
    rec["name"] = "../outside/secret.bin"


def test_manifest_names_outside_the_folder_are_refused(shared_data, run, tmp_path, capsys):
    folder = crafted(shared_data, tmp_path, point_outside)
    for verify in (False, True):
        with pytest.raises(MoelabError, match=r"'\.\./outside/secret\.bin'.*not a plain file"):
            PreparedData.open(folder, verify=verify)
    expect_user_error(
        capsys,
        ["eval", run, "--ppl", folder],
        watch=[tmp_path, run],
        match=[r"outside/secret\.bin", r"refusing to read outside"],
    )


def test_a_shard_linked_outside_the_folder_is_refused(shared_data, tmp_path):
    def link_out(manifest, folder):
        name = val_tokens(manifest)["name"]
        outside = folder.parent / "elsewhere.bin"
        shutil.move(folder / name, outside)
        (folder / name).symlink_to(outside)

    folder = crafted(shared_data, tmp_path, link_out)
    with pytest.raises(MoelabError, match=r"link to .*elsewhere\.bin, outside the folder"):
        PreparedData.open(folder, verify=False)


def put_id(manifest: dict, folder: Path, token_id: int = 60_000) -> None:
    """One token id of the held-out split set to ``token_id``; size and checksum kept
    consistent, so only the range check can notice."""
    rec = val_tokens(manifest)
    path = folder / rec["name"]
    ids = np.fromfile(path, dtype=manifest["dtype"])
    ids[3] = token_id
    ids.tofile(path)
    rec["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()


def test_token_ids_beyond_the_vocabulary_are_refused(shared_data, run, tmp_path, capsys):
    """Before: `eval --ppl FOLDER` died with an IndexError traceback in the embedding."""
    folder = crafted(shared_data, tmp_path, put_id)
    with pytest.raises(MoelabError, match=r"token id 60000, outside the tokenizer's 300 ids"):
        PreparedData.open(folder)  # verified: found in the checksum pass
    data = PreparedData.open(folder, verify=False)  # unverified: found on the split's first read
    data.tokens("alpha", "val")  # untouched split: fine
    with pytest.raises(MoelabError, match=r"gamma\.val\.tokens\.bin holds token id 60000"):
        data.tokens("gamma", "val")
    expect_user_error(
        capsys, ["eval", run, "--ppl", folder], watch=[tmp_path, run], match=[r"token id 60000"]
    )
    # the largest legal id passes
    ok = crafted(shared_data, tmp_path / "ok", lambda m, f: put_id(m, f, 299))
    PreparedData.open(ok).tokens("gamma", "val")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["tokenizer"].update(vocab_size=10**12), r"vocab_size 1000000000000 does not"),
        (lambda m: m["tokenizer"].update(vocab_size=301), r"vocab_size 301 is not its .* 300"),
        (lambda m: m.update(dtype="float64"), r"dtype 'float64'"),
        (lambda m: m.update(domains=["alpha"]), r"'domains' is not an object"),
        (lambda m: m["domains"]["gamma"].update(splits={"test": {}}), r"gamma.*splits among"),
        (lambda m: val_tokens(m).update(name=None), r"None.*not a plain file name"),
        (lambda m: val_tokens(m).update(bytes="12"), r"integer 'bytes'"),
        (
            lambda m: m["domains"]["gamma"]["splits"]["val"].update(tokens=7),
            r"7 tokens of uint16 are not \d+ bytes",
        ),
    ],
    ids=[
        "vocab-huge",
        "vocab-mismatch",
        "dtype",
        "domains-list",
        "split-name",
        "name-null",
        "bytes-string",
        "tokens-vs-bytes",
    ],
)
def test_malformed_manifests_are_one_line(shared_data, tmp_path, capsys, edit, message):
    folder = crafted(shared_data, tmp_path, lambda m, f: edit(m))
    with pytest.raises(MoelabError, match=message):
        PreparedData.open(folder, verify=False)


def test_the_untouched_folder_still_opens_and_evaluates(shared_data, run, capsys):
    data = PreparedData.open(shared_data)
    assert data.tokens("gamma", "val").max() < data.vocab_size
    rc, out, err = run_cli(capsys, ["eval", run, "--ppl", shared_data, "--max-tokens", "32"])
    assert rc == 0, err
