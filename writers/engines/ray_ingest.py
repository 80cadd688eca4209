"""Row ingestion whose embedding runs on a pool of Ray actors (``RayEngine.run_ingest``).

Reading, the row checks, chunking and every commit stay in this process with ``writers.ingest``'s own
code (row numbers, rejections, ids, the skip of chunks stored unchanged): they cost little next to the
model. Each commit's new chunks are split into calls of ``texts_per_embed_call`` texts, spread over the
actors (the model loaded once per actor) and gathered in order. A dead actor is restarted
(``max_restarts``) and its call re-run (``max_task_retries``); past that the job stops with
``ClusterError``, and the commits made so far stay.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kb_base.errors import ClusterError, KBError
from stores.base import Record
from writers.engines.ray_stages import EmbedTexts
from writers.ingest import IngestOptions, IngestReport, _Ingestion
from writers.target import KnowledgeBankTarget

if TYPE_CHECKING:
    from writers.engines.ray_engine import RayEngine


class RayIngestion(_Ingestion):
    def __init__(self, core: KnowledgeBankTarget, path: Path, options: IngestOptions, progress: bool,
                 on_commit: Callable[[IngestReport], None] | None, engine: RayEngine) -> None:
        super().__init__(core, path, options, progress, on_commit)
        self.engine = engine
        self.actors: list[Any] = []
        self.embed_seconds = 0.0

    def _pool(self) -> tuple[Any, list[Any]]:
        ray = self.engine.connect()
        if not self.actors:
            engine = self.engine
            remote = ray.remote(EmbedTexts).options(num_cpus=engine.embed_cpus, max_restarts=engine.max_restarts,
                                                    max_task_retries=engine.max_task_retries)
            factory = engine.model_factory(self.core)
            self.actors = [remote.remote(factory, engine.embed_cpus) for _ in range(engine.actor_count(ray))]
            engine.last_stats = {"actors": len(self.actors), "stages": {"embed": 0.0}}
        return ray, self.actors

    def _embed(self, fresh: list[Record]) -> None:
        ray, actors = self._pool()
        unique = list(dict.fromkeys(r.text for r in fresh))  # a text repeated in the commit is sent once
        size = self.engine.texts_per_embed_call
        calls = [unique[i: i + size] for i in range(0, len(unique), size)]
        started = time.perf_counter()
        try:
            # round robin, all calls in flight at once; ray.get keeps their order
            results = ray.get([actors[n % len(actors)].embed.remote(texts) for n, texts in enumerate(calls)])
        except KBError:
            raise
        except Exception as exc:  # an actor past its restarts, the cluster gone
            raise ClusterError(f"embedding on the Ray cluster failed after its retries ({type(exc).__name__}: "
                               f"{str(exc)[:2000]}); the commits made so far stay, a re-run skips them") from exc
        self.embed_seconds += time.perf_counter() - started
        self.engine.last_stats.setdefault("stages", {})["embed"] = self.embed_seconds
        rows = [np.frombuffer(data, dtype=np.float32).reshape(count, dimension)
                for data, count, dimension in results]
        matrix = np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)
        vector_of = dict(zip(unique, matrix, strict=True))
        for record in fresh:
            record.vector = vector_of[record.text]
        self.report.texts_embedded += len(unique)
        self.report.embedding_cache_hits += len(fresh) - len(unique)

    def run(self) -> IngestReport:
        try:
            return super().run()
        finally:
            if self.actors:
                ray = self.engine.connect()
                for actor in self.actors:
                    ray.kill(actor)
                self.actors = []
