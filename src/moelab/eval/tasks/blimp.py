"""BLiMP (Warstadt et al., TACL 2020): 67 paradigms of grammatical / ungrammatical sentence pairs.

Scoring, files, selection, ``limit`` per paradigm and reference accuracies: docs/evaluation.md,
"BLiMP: grammatical vs ungrammatical sentences".
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from moelab.errors import MoelabError
from moelab.eval.tasks.files import HUB_PREFIX, HubRow, Row, hub_split, read_jsonl
from moelab.eval.tasks.items import Item, Task

NAME = "blimp"
FIELDS = ("syntax", "morphology", "semantics", "syntax_semantics")
# The official files spell one paradigm's field "syntax/semantics" (principle_A_case_2) and the
# other 13 "syntax_semantics"; the paper's field is the same.
_FIELD_SPELLING = {"syntax/semantics": "syntax_semantics", "syntax-semantics": "syntax_semantics"}
REFERENCE_FILE = "models_summary.jsonl.ref"
REFERENCE_MODELS = {"ngram": "5-gram", "lstm": "LSTM", "txl": "Transformer-XL", "gpt2": "GPT-2"}
HUB_DATASET = "nyu-mll/blimp"

# Every paradigm and its field, as in the official files (github:alexwarstadt/blimp @ 3e56b06):
# the hub loader needs them to pick configs without downloading all 67.
_BY_FIELD = {
    "syntax": (
        "adjunct_island animate_subject_passive animate_subject_trans causative complex_NP_island "
        "coordinate_structure_constraint_complex_left_branch "
        "coordinate_structure_constraint_object_extraction drop_argument ellipsis_n_bar_1 "
        "ellipsis_n_bar_2 inchoative intransitive left_branch_island_echo_question "
        "left_branch_island_simple_question passive_1 passive_2 sentential_subject_island "
        "transitive wh_island wh_questions_object_gap wh_questions_subject_gap "
        "wh_questions_subject_gap_long_distance wh_vs_that_no_gap wh_vs_that_no_gap_long_distance "
        "wh_vs_that_with_gap wh_vs_that_with_gap_long_distance"
    ),
    "morphology": (
        "anaphor_gender_agreement anaphor_number_agreement determiner_noun_agreement_1 "
        "determiner_noun_agreement_2 determiner_noun_agreement_irregular_1 "
        "determiner_noun_agreement_irregular_2 determiner_noun_agreement_with_adj_2 "
        "determiner_noun_agreement_with_adj_irregular_1 "
        "determiner_noun_agreement_with_adj_irregular_2 determiner_noun_agreement_with_adjective_1 "
        "distractor_agreement_relational_noun distractor_agreement_relative_clause "
        "irregular_past_participle_adjectives irregular_past_participle_verbs "
        "irregular_plural_subject_verb_agreement_1 irregular_plural_subject_verb_agreement_2 "
        "regular_plural_subject_verb_agreement_1 regular_plural_subject_verb_agreement_2"
    ),
    "semantics": (
        "existential_there_quantifiers_1 existential_there_quantifiers_2 "
        "matrix_question_npi_licensor_present npi_present_1 npi_present_2 "
        "only_npi_licensor_present sentential_negation_npi_licensor_present "
        "superlative_quantifiers_1 superlative_quantifiers_2"
    ),
    "syntax_semantics": (
        "existential_there_object_raising existential_there_subject_raising "
        "expletive_it_object_raising only_npi_scope principle_A_c_command principle_A_case_1 "
        "principle_A_case_2 principle_A_domain_1 principle_A_domain_2 principle_A_domain_3 "
        "principle_A_reconstruction sentential_negation_npi_scope tough_vs_raising_1 "
        "tough_vs_raising_2"
    ),
}
PARADIGMS: dict[str, str] = {
    uid: field for field, uids in _BY_FIELD.items() for uid in uids.split()
}


def normalise_field(value: str) -> str:
    return _FIELD_SPELLING.get(value, value)


def parse_selector(name: str, selector: str, paradigms: list[str]) -> tuple[set[str], set[str]]:
    """(fields, paradigm UIDs) chosen by ``selector``; both empty = everything. ``paradigms``
    are the UIDs available; a name that is neither one of them nor a field is an error."""
    fields: set[str] = set()
    uids: set[str] = set()
    terms = [t.strip() for t in selector.split(",")] if selector else []
    for term in terms:
        key, eq, value = term.partition("=")
        if not eq:
            key, value = "", term
        if key not in ("", "field", "paradigm") or not value:
            raise MoelabError(
                f"task {name!r}: cannot read {term!r}; write blimp:<paradigm UID>, "
                "blimp:<field>, blimp:paradigm=<UID> or blimp:field=<field> (comma-separated)"
            )
        if key in ("", "field") and normalise_field(value) in FIELDS:
            fields.add(normalise_field(value))
        elif key == "field":
            raise MoelabError(
                f"task {name!r}: unknown BLiMP field {value!r}; fields: {', '.join(FIELDS)}"
            )
        elif value in paradigms:
            uids.add(value)
        else:
            close = difflib.get_close_matches(value, [*paradigms, *FIELDS], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise MoelabError(
                f"task {name!r}: no BLiMP paradigm or field {value!r} ({len(paradigms)} "
                f"paradigms; fields: {', '.join(FIELDS)}){hint}"
            )
    return fields, uids


def pair_from_row(row: Row) -> tuple[Item, str, str]:
    """(item, field, paradigm UID) of one record in the official schema."""
    good = row.str("sentence_good")
    bad = row.str("sentence_bad")
    for key, text in (("sentence_good", good), ("sentence_bad", bad)):
        if not text.strip():
            raise row.error(key, "must not be empty")
    field = normalise_field(row.str("field"))
    if field not in FIELDS:
        raise row.error("field", f"expected one of {', '.join(FIELDS)}, got {field!r}")
    uid = row.str("UID")
    # No context and no delimiter: candidate j is ("", sentence_j); the scorer puts the
    # end-of-text token in front of an empty context.
    return Item(("",), (good, bad), 0, ""), field, uid


def _task(name: str, pairs: list[tuple[Item, str, str]], sources: list[str], ref) -> Task:
    return Task(
        name=name,
        kind="choice",
        items=[item for item, _, _ in pairs],
        split="test",
        neutral_prompt=None,  # whole sentences, no prompt to calibrate against
        finetune=None,
        sources=sources,
        primary_mode="sum",
        groups=[(f"field:{field}", f"paradigm:{uid}") for _, field, uid in pairs],
        reference=ref,
        limit_per="paradigm",
    )


def _chosen(fields: set[str], uids: set[str], field: str, uid: str) -> bool:
    return (not fields and not uids) or field in fields or uid in uids


def load_blimp(folder: Path, selector: str = "") -> Task:
    """The paradigm files of ``folder`` (``<UID>.jsonl``, sorted by name; pairs in file
    order), restricted by ``selector``."""
    folder = Path(folder)
    name = NAME + (f":{selector}" if selector else "")
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise MoelabError(f"task {name!r}: no paradigm files (<UID>.jsonl) in {folder}")
    fields, uids = parse_selector(name, selector, [f.stem for f in files])
    pairs: list[tuple[Item, str, str]] = []
    sources = []
    for path in files:
        if uids and path.stem not in uids and not fields:
            continue  # a paradigm-only selection reads only its files
        file_pairs = []
        for row in read_jsonl(path):
            item, field, uid = pair_from_row(row)
            if uid != path.stem:
                why = f"{uid!r} in a file named {path.name}; one paradigm per file, <UID>.jsonl"
                raise row.error("UID", why)
            file_pairs.append((item, field, uid))
        if not file_pairs:
            raise MoelabError(f"{path}: no pairs (expected one JSON object per line)")
        if any(_chosen(fields, uids, f, u) for _, f, u in file_pairs):
            pairs += [p for p in file_pairs if _chosen(fields, uids, p[1], p[2])]
            sources.append(str(path))
    if not pairs:
        raise MoelabError(f"task {name!r}: no pair in {folder} matches {selector!r}")
    ref = read_reference(folder / REFERENCE_FILE, pairs)
    return _task(name, pairs, sources, ref)


def read_reference(path: Path, pairs: list[tuple[Item, str, str]]) -> dict[str, dict[str, float]]:
    """The reference models' accuracies for the evaluated paradigms: per paradigm, the mean over
    each field's paradigms and "overall" (the mean over the paradigms, as the BLiMP paper
    averages). A group is left out when one of its paradigms has no reference row."""
    if not path.is_file():
        return {}
    per_uid: dict[str, dict[str, float]] = {}
    for row in read_jsonl(path):
        uid = row.str("UID")
        if uid == "overall":  # summary rows (per phenomenon and overall): recomputed below
            continue
        per_uid[uid] = {}
        for key in REFERENCE_MODELS:
            value = row.data.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise row.error(key, f"expected a number, got {json.dumps(value)}")
            per_uid[uid][key] = float(value)
    field_of = {uid: field for _, field, uid in pairs}
    members: dict[str, list[str]] = {"overall": list(field_of)}
    for uid, field in field_of.items():
        members.setdefault(f"field:{field}", []).append(uid)
        members[f"paradigm:{uid}"] = [uid]
    out: dict[str, dict[str, float]] = {}
    for key, label in REFERENCE_MODELS.items():
        values = {}
        for group, uids in members.items():
            if all(u in per_uid for u in uids):
                values[group] = sum(per_uid[u][key] for u in uids) / len(uids)
        if values:
            out[label] = values
    return out


def load_hub_blimp(selector: str = "") -> Task:
    """``hf:blimp[:selector]``: the chosen paradigms from the ``nyu-mll/blimp`` hub dataset
    (split "train", the only one; it holds the same 1000 pairs per paradigm as the files). No
    reference accuracies (they are not part of the dataset)."""
    name = HUB_PREFIX + NAME + (f":{selector}" if selector else "")
    fields, uids = parse_selector(name, selector, list(PARADIGMS))
    chosen = [u for u, f in PARADIGMS.items() if _chosen(fields, uids, f, u)]
    pairs: list[tuple[Item, str, str]] = []
    for uid in chosen:
        source = f"{HUB_DATASET}, {uid}"
        ds = hub_split(name, HUB_DATASET, uid, "train", source, "the paradigm files")
        for i, record in enumerate(ds):
            pairs.append(pair_from_record(record, f"{HUB_PREFIX}{HUB_DATASET} {uid} row {i}"))
    return _task(name, pairs, [f"{HUB_PREFIX}{HUB_DATASET}:{uid} train" for uid in chosen], {})


def pair_from_record(record: Any, where: str) -> tuple[Item, str, str]:
    """One hub record (the official fields; ``pair_id`` instead of ``pairID``)."""
    return pair_from_row(HubRow(where, dict(record)))
