"""A folder sync whose extraction and embedding run on a Ray cluster (``RayEngine.run_sync``).

The driver (this process) does what the local sync does before and after the heavy work, with the same
code: it lists and diffs the folder (``_Sync.run``; unchanged files never leave it), and it commits whole
files per batch through ``_Sync._commit`` (the same deletes of changed and removed files' old chunks, the
same skip of chunks stored with the same content hash, the same sync records, screenshots and report).
In between, a Ray Data pipeline streams the files to process through extraction tasks
(``ray_stages.extract_files``) and an actor pool holding the embedding model (``ray_stages.EmbedFiles``);
finished files come back in whatever order they finish, each with its vectors.

Before shipping, the driver reads which chunks of the changed files are already stored, with their content
hashes and texts, so that the actors skip them: a chunk stored unchanged is neither embedded nor written
(a re-run after a kill between a commit and its records embeds nothing again), and a rewritten chunk whose
text is stored (an edit changes every chunk's file hash) takes its stored vector on the driver, where the
local sync takes it from the embedding cache: an edited file re-embeds only its edited texts.

Failures: a file that fails to extract comes back with its reason (the report lists it, as locally). A
dead worker or node: Ray re-runs its extraction tasks (``max_retries``) and restarts dead actors
(``max_restarts``, re-running their calls ``max_task_retries`` times); a file arriving twice is taken
once. Past those retries the job stops with ``ClusterError``; what was committed stays committed, and the
next sync finishes the work. The driver killed: the knowledge bank keeps its last commit.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from kb_base.errors import ClusterError, KBError
from kb_base.folders import ManagedFolder
from stores.base import Record
from writers.chunking import CHUNKS_KEY, HASH_KEY
from writers.document_chunks import document_id
from writers.engines.ray_stages import PLANNED, EmbedFiles, FolderSpec, extract_files, text_digest
from writers.sync import SyncOptions, SyncReport, _Done, _Sync
from writers.sync_records import FileRecord
from writers.target import KnowledgeBankTarget

if TYPE_CHECKING:
    from writers.engines.ray_engine import RayEngine

GET_BATCH = 1000  # ids per store read while planning


class RayFolderSync(_Sync):
    def __init__(self, core: KnowledgeBankTarget, folder: ManagedFolder, options: SyncOptions, progress: bool,
                 on_progress: Callable[[SyncReport], None] | None, engine: RayEngine) -> None:
        super().__init__(core, folder, options, progress, on_progress)
        self.engine = engine
        self.order: dict[str, int] = {}
        self.stored_ids: dict[str, list[str]] = {}  # per file's id prefix: its chunks in the store
        self.stages = {"extract": 0.0, "embed": 0.0, "write": 0.0}

    # --- planning -----------------------------------------------------------------------------

    def _stored(self, work: list[tuple[str, bool]], known: dict[str, FileRecord]) -> dict[str, dict[str, Any]]:
        """Per file to process, what the store holds of it, as ``_commit`` will find it: its chunk ids with their
        content hashes (unchanged chunks: not embedded, not written) and digests of their texts (a rewritten
        chunk whose text is unchanged takes its stored vector, as the local sync takes it from the cache)."""
        prefixes = {path: document_id(self.folder.id, path) for path, _ in work}
        first = [f"{prefix}#0" for prefix in prefixes.values()]
        ids = first + [i for path, _ in work if path in known for i in known[path].chunk_ids]
        stored = self._get(list(dict.fromkeys(ids)))
        more = []
        for prefix in prefixes.values():  # chunks a killed sync committed before recording them
            count = stored.get(f"{prefix}#0", (None, {}))[1].get(CHUNKS_KEY)
            if isinstance(count, int):
                more.extend(i for i in (f"{prefix}#{n}" for n in range(count)) if i not in stored)
        stored.update(self._get(more))
        by_prefix: dict[str, dict[str, Any]] = {}
        for chunk_id, (text, metadata) in stored.items():
            mine = by_prefix.setdefault(chunk_id.rpartition("#")[0], {"hashes": {}, "texts": []})
            if isinstance(metadata.get(HASH_KEY), str):
                mine["hashes"][chunk_id] = metadata[HASH_KEY]
            mine["texts"].append(text_digest(self._embedding_input(text, metadata)))
            self.stored_ids.setdefault(chunk_id.rpartition("#")[0], []).append(chunk_id)
        return {path: by_prefix.get(prefix, {}) for path, prefix in prefixes.items()}

    def _get(self, ids: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        for start in range(0, len(ids), GET_BATCH):
            found.update({r.id: (r.text, r.metadata) for r in self.core.driver.get(ids[start: start + GET_BATCH])})
        return found

    # --- the pipeline -------------------------------------------------------------------------

    def _pipeline(self, work: list[tuple[str, bool]], known: dict[str, FileRecord]) -> Iterator[dict[str, Any]]:
        """The finished files, as they come back from the cluster."""
        engine = self.engine
        ray = engine.connect()
        stored = self._stored(work, known)
        planned = pa.Table.from_pylist(
            [{"index": i, "path": path, "new": new, "stored": json.dumps(stored.get(path) or {})}
             for i, (path, new) in enumerate(work)], schema=PLANNED)
        # no more actors than batches to embed: an idle actor would only hold its CPUs and load the model
        actors = min(engine.actor_count(ray), -(-len(work) // engine.files_per_embed_batch))
        # one block per extraction task: the tasks spread over the nodes from the start
        blocks = [planned.slice(start, engine.files_per_task) for start in range(0, len(work), engine.files_per_task)]
        with warnings.catch_warnings():
            # retry and restart counts have no named parameter in Ray 2.60: they are still remote args
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            dataset = self._dataset(ray, blocks, actors)
        engine.last_stats = {"actors": actors, "extract_tasks": len(blocks), "stages": self.stages}
        try:
            for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                yield from table.to_pylist()
        except KBError:
            raise
        except Exception as exc:  # Ray's own errors: a task or actor past its retries, the cluster gone
            raise ClusterError(f"the Ray job of the sync of {self.core.id} failed after its retries "
                               f"({type(exc).__name__}: {str(exc)[:2000]}); what was committed stays, and the "
                               f"next sync finishes the work") from exc

    def _dataset(self, ray: Any, blocks: list[pa.Table], actors: int) -> Any:
        engine = self.engine
        return (
            ray.data.from_arrow(blocks)
            .map_batches(extract_files, batch_format="pyarrow", batch_size=engine.files_per_task,
                         num_cpus=engine.extract_cpus, max_retries=engine.max_retries,
                         fn_kwargs={"kb_id": self.core.id, "folder": FolderSpec.of(self.folder),
                                    "options": {**vars(self.options)}})
            .map_batches(EmbedFiles, batch_format="pyarrow", batch_size=engine.files_per_embed_batch,
                         compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=engine.embed_cpus,
                         max_restarts=engine.max_restarts, max_task_retries=engine.max_task_retries,
                         fn_constructor_kwargs={"model_factory": engine.model_factory(self.core),
                                                "threads": engine.embed_cpus,
                                                "embed_context": self.options.embed_context})
        )

    def _process(self, work: list[tuple[str, bool]], known: dict[str, FileRecord],
                 removed: list[FileRecord]) -> None:
        options = self.options
        self.order = {path: i for i, (path, _) in enumerate(work)}
        batch: list[_Done] = []
        batch_chunks = 0
        seen: set[str] = set()
        bar = tqdm(total=len(work), desc=f"sync {self.folder.name} on ray", unit=" files",
                   disable=not self.progress, dynamic_ncols=True)
        try:
            for row in self._pipeline(work, known) if work else iter(()):
                if row["path"] in seen:  # a re-run task's duplicate: every file is committed once
                    continue
                seen.add(row["path"])
                done = self._receive(row)
                self.report.files_processed += 1
                bar.update(1)
                bar.set_postfix(chunks=self.report.chunks_written + batch_chunks, empty=len(self.report.empty),
                                failed=len(self.report.failed), refresh=False)
                if done is None:
                    continue
                batch.append(done)
                batch_chunks += len(done.chunks)
                if len(batch) >= options.batch_files or batch_chunks >= options.batch_chunks:
                    self._commit(batch, known, removed)
                    batch, batch_chunks, removed = [], 0, []
            if batch or removed:
                self._commit(batch, known, removed)
        finally:
            bar.close()
            self._in_listing_order()

    def _receive(self, row: dict[str, Any]) -> _Done | None:
        """One file back from the cluster: its report entries, screenshots written here, its chunks with
        their vectors."""
        self.stages["extract"] += row["extract_seconds"]
        self.stages["embed"] += row["embed_seconds"]
        path = row["path"]
        part = json.loads(row["report"])
        for failure in part.pop("failed", []):
            self._fail(path, failure["reason"])
        for name, value in part.items():  # warnings, pages, screenshots_written, ... as the worker counted them
            current = getattr(self.report, name)
            setattr(self.report, name, current + value)
        if not row["ok"]:
            return None
        for name, data in zip(row["image_names"], row["image_data"], strict=True):
            self.images.upload_data(name, data)  # type: ignore[union-attr]  # screenshots on: ensured in __init__
        record = FileRecord(**json.loads(row["record"]))
        dimension = row["dimension"]
        vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(-1, dimension) if dimension else None
        chunks, position = [], 0
        for chunk_id, text, raw, has_vector in zip(record.chunk_ids, row["texts"], row["metadata"],
                                                   row["has_vector"], strict=True):
            vector = None
            if has_vector and vectors is not None:
                vector, position = vectors[position], position + 1
            chunks.append(Record(chunk_id, text, json.loads(raw), vector))
        self.report.texts_embedded += row["embedded"]
        self.report.embedding_cache_hits += sum(row["has_vector"]) - row["embedded"]
        return _Done(path, record, chunks, row["new"], empty=record.kind == "empty")  # as _Sync._empty made it

    def _embed(self, fresh: list[Record]) -> None:
        """The vectors came with the chunks, but for a rewritten chunk whose text is stored already (the actors
        skipped it): its stored vector is taken, counted as a cache hit as the local sync counts it. A chunk
        with neither (another writer deleted it meanwhile) is embedded here."""
        missing = [c for c in fresh if c.vector is None]
        if not missing:
            return
        ids = [i for prefix in dict.fromkeys(c.id.rpartition("#")[0] for c in missing)
               for i in self.stored_ids.get(prefix, [])]
        vectors = {self._embedding_input(r.text, r.metadata): r.vector for start in range(0, len(ids), GET_BATCH)
                   for r in self.core.driver.get(ids[start: start + GET_BATCH], with_vectors=True)
                   if r.vector is not None}
        for chunk in missing:
            chunk.vector = vectors.get(self._embedding_input(chunk.text, chunk.metadata))
        self.report.embedding_cache_hits += sum(1 for c in missing if c.vector is not None)
        left = [c for c in missing if c.vector is None]
        if left:
            super()._embed(left)

    def _commit(self, batch: list[_Done], known: dict[str, FileRecord], removed: list[FileRecord]) -> None:
        started = time.perf_counter()
        super()._commit(batch, known, removed)
        self.stages["write"] += time.perf_counter() - started

    def _in_listing_order(self) -> None:
        """The report lists files in the folder's order, as the local sync does, whatever order they came in."""
        def key(path: str) -> int:
            return self.order.get(path, -1)

        self.report.added.sort(key=key)
        self.report.updated.sort(key=key)
        self.report.failed.sort(key=lambda item: key(item["path"]))
        self.report.warnings.sort(key=lambda item: key(item["path"]))
