"""A history checker for concurrent writers on one knowledge bank (issue 28's consistency tests).

The writers follow tests/support/fenced_writer.py's convention: generation G's writer adds documents
``<writer>-<G>-<k>`` and replaces ``shared``, all with metadata {"gen": G, "writer": <writer>}, and announces
``intent G <ids>`` before writing and ``acked G`` after its commit. A *read* is (committed generation C, the
documents a reader saw at C: id -> metadata). The checker holds that:

- each read sees exactly one committed generation: for every g <= C the documents of exactly one writer's
  intent for g, all of them; nothing of any generation above C; ``shared`` as generation C wrote it;
- one writer per generation across all reads (never two commits of one generation);
- generations only move forward along one reader's reads;
- every acknowledged write is visible, as written, in every read at or after its generation.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class History:
    intents: dict[tuple[str, int], set[str]] = field(default_factory=dict)  # (writer, G) -> ids without 'shared'
    acked: set[tuple[str, int]] = field(default_factory=set)
    reads: list[tuple[int, dict[str, dict[str, Any]]]] = field(default_factory=list)  # one reader, in order
    committed_by: dict[int, str] = field(default_factory=dict)

    def writer_output(self, name: str, lines: list[str]) -> None:
        """Take a writer's stdout lines (``intent``/``acked``)."""
        for line in lines:
            word, _, rest = line.partition(" ")
            if word == "intent":
                generation, ids = rest.split(" ", 1)
                self.intents[(name, int(generation))] = {i for i in json.loads(ids) if i != "shared"}
            elif word == "acked":
                self.acked.add((name, int(rest.split()[0])))

    def check(self) -> int:
        """Assert the rules over every read; returns the highest committed generation seen."""
        last = 0
        for number, (committed, docs) in enumerate(self.reads):
            where = f"read {number} (generation {committed})"
            assert committed >= last, f"{where}: generations went backwards ({last} -> {committed})"
            last = committed
            self._check_read(committed, docs, where)
        for writer, generation in sorted(self.acked, key=lambda a: a[1]):
            assert last >= generation, f"acknowledged generation {generation} ({writer}) never became visible"
            assert self.committed_by.get(generation) == writer, \
                f"acknowledged write of {writer} at generation {generation} lost: " \
                f"{self.committed_by.get(generation)} committed there"
        return last

    def _check_read(self, committed: int, docs: dict[str, dict[str, Any]], where: str) -> None:
        groups: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for doc_id, meta in docs.items():
            assert meta["gen"] <= committed, f"{where}: {doc_id} of uncommitted generation {meta['gen']} visible"
            if doc_id != "shared":
                groups[meta["gen"]][meta["writer"]].add(doc_id)
        if committed:
            assert "shared" in docs and docs["shared"]["gen"] == committed, \
                f"{where}: 'shared' is {docs.get('shared')}, not generation {committed}'s"
        for generation in range(1, committed + 1):
            writers = groups.get(generation, {})
            assert len(writers) == 1, f"{where}: generation {generation} shows writers {sorted(writers)}"
            (writer, ids), = writers.items()
            assert self.committed_by.setdefault(generation, writer) == writer, \
                f"{where}: generation {generation} committed by {writer} here, {self.committed_by[generation]} before"
            expected = self.intents.get((writer, generation))
            assert expected is not None, f"{where}: generation {generation} by {writer}, who never announced it"
            assert ids == expected, f"{where}: generation {generation} partly visible: {sorted(ids)} of " \
                                    f"{sorted(expected)}"
        assert set(groups) <= set(range(1, committed + 1)), f"{where}: stray generations {sorted(groups)}"
        for writer, generation in self.acked:
            if generation <= committed:
                assert self.committed_by.get(generation) == writer, \
                    f"{where}: acknowledged write of {writer} at {generation} lost"
