"""The built-in corpus: deterministic, capped, held-out packages disjoint from training."""

from __future__ import annotations

import platform

from moelab.data.builtin import HELDOUT_PACKAGES, builtin_corpus, is_heldout, stdlib_files


def test_builtin_corpus_is_deterministic_capped_and_disjoint():
    domains, info = builtin_corpus(max_bytes=150_000, max_doc_bytes=8192)
    again, _ = builtin_corpus(max_bytes=150_000, max_doc_bytes=8192)
    by_name = {d.name: d for d in domains}
    assert set(by_name) == {"code", "prose", "code_heldout", "prose_heldout"}
    assert [d.files for d in domains] == [d.files for d in again]
    assert info["python_version"] == platform.python_version()
    assert by_name["code"].role == by_name["prose"].role == "train"
    assert by_name["code_heldout"].role == "heldout"
    for d in domains:
        cap = 150_000 if d.role == "train" else 150_000 // 4
        # the cap is reached with the last document added, never overshot by more than one file
        assert d.text_bytes >= min(cap, 1) and d.text_bytes < cap + 2_000_000
        assert all(len(doc.encode()) <= 8192 for doc in d.docs)
    train_files = {f["path"] for n in ("code", "prose") for f in by_name[n].files}
    held_files = {f["path"] for n in ("code_heldout", "prose_heldout") for f in by_name[n].files}
    assert train_files and held_files and not train_files & held_files
    assert all(p.split("/")[0].removesuffix(".py") in HELDOUT_PACKAGES for p in held_files)
    assert "def " in "".join(by_name["code"].docs)


def test_file_order_is_fixed_and_skips_tests():
    files = stdlib_files()
    assert files == stdlib_files() and len(files) > 100
    assert not any(p.parts[0] == "test" or "tests" in p.parts for p in files)
    assert any(is_heldout(p) for p in files) and not all(is_heldout(p) for p in files)


def test_prepare_with_no_sources_uses_the_builtin_corpus(tmp_path):
    from moelab.data import PreparedData, prepare

    result = prepare(tmp_path / "b", builtin_max_bytes=120_000, vocab_size=300)
    data = PreparedData.open(result.path)
    assert data.train_domains == ["code", "prose"]
    assert data.heldout_domains == ["code_heldout", "prose_heldout"]
    assert result.manifest["builtin"]["python_version"] == platform.python_version()
    code_files = result.manifest["domains"]["code"]["sources"][0]["inputs"]
    assert code_files and all(len(f["sha256"]) == 64 for f in code_files)
    assert data.num_tokens("code", "train") > 10 * data.num_tokens("code", "val") > 0
    assert not prepare(tmp_path / "b", builtin_max_bytes=120_000, vocab_size=300).created
