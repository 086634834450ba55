"""Golden journals (tests/golden/v<version>_*.json) pin each fold version: every record folded with
``apply`` must get exactly the verdict and state hash saved with it, and the final states
must match byte for byte. A semantic change of the fold shows up here as a diff;
regenerate with ``python tests/golden/make_golden.py`` only for an intended change."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from kernel_support import record_from_plain, verdict_to_plain

from aosk.kernel import encode_state, fold_with_verdicts

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
FILES = sorted(GOLDEN.glob("v[0-9]*_*.json"))


def test_golden_journals_exist() -> None:
    assert len([f for f in FILES if f.name.startswith("v1_")]) >= 4
    assert any(f.name.startswith("v2_") for f in FILES)
    assert any(f.name.startswith("v3_") for f in FILES)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_golden_journal_folds_to_the_saved_verdicts_and_states(path: Path) -> None:
    doc = json.loads(path.read_text())
    records = [record_from_plain(r) for r in doc["records"]]
    slots, verdicts = fold_with_verdicts(records)
    diffs = []
    for i, (r, v) in enumerate(zip(doc["records"], verdicts, strict=True)):
        got = verdict_to_plain(v)
        if got != r["expect"]:
            changed = {k: (r["expect"][k], got[k]) for k in got if got[k] != r["expect"].get(k)}
            diffs.append(f"record {i} ({r['key']} @ {r['partition']}:{r['offset']}): {changed}")
    assert not diffs, "verdicts changed:\n" + "\n".join(diffs[:20]) + f"\n({len(diffs)} in all; {doc['regenerate']})"
    assert sorted(slots) == sorted(doc["final"])
    for key, want in doc["final"].items():
        b = encode_state(slots[key].state)
        assert json.loads(b) == want["state"], f"final state of {key} changed"
        assert hashlib.sha256(b).hexdigest() == want["state_hash"]
