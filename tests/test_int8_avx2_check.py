"""benchmarks/int8_avx2_check.py without an emulator: its sample, its figures, and its refusal without QEMU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import int8_avx2_check
from benchmarks.embedding import SCIFACT


def test_without_qemu_it_says_how_to_install_it_and_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no qemu-x86_64 on it
    assert int8_avx2_check.main(["--out", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert "qemu-x86_64" in err and "apt-get install qemu-user" in err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason="SciFact is not on this machine")
def test_the_sample_holds_the_longest_abstracts_and_a_spread_of_the_rest() -> None:
    chosen = int8_avx2_check.sample(SCIFACT, 10, 3)
    docs = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    lengths = sorted((len(f"{d['title']} {d['text']}") for d in docs), reverse=True)
    assert len(chosen["abstracts"]) == len(set(chosen["abstract_ids"])) == 10 and len(chosen["queries"]) == 3
    assert [len(t) for t in chosen["abstracts"][:5]] == lengths[:5]
    assert max(len(t) for t in chosen["abstracts"][5:]) <= lengths[4]


def test_compare_reports_the_worst_row_and_the_largest_difference() -> None:
    a = np.eye(3, dtype=np.float32)
    b = a.copy()
    b[1] = [0.0, 0.6, 0.8]
    row = int8_avx2_check.compare(a, b)
    assert row["min_cosine"] == pytest.approx(0.6) and row["mean_cosine"] == pytest.approx(2.6 / 3, abs=1e-6)
    assert row["max_abs_diff"] == pytest.approx(0.8) and row["identical_rows"] == 2
