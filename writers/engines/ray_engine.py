"""The Ray engine: extraction as CPU tasks and embedding in an actor pool on a Ray cluster, commits here.

``RayEngine(address="auto")`` connects to a running cluster (``ray start --head`` on one machine,
``ray start --address=<head>:6379`` on the others), or ``address="local"`` starts one inside this process.
A folder sync (``writers.engines.ray_sync``) runs on Ray Data: the files to process (listed and diffed
here) are extracted and chunked by tasks, embedded by an actor pool that loads the model once per actor,
and come back here, where the knowledge bank's writer commits whole files per batch exactly as the local
sync does. Row ingestion (``writers.engines.ray_ingest``) reads and checks rows here and embeds them on
an actor pool.

What the workers need: the same kb version importable, the folder at the same path (a shared mount), and
the embedding model (the local model's package, or network access to the OpenAI-compatible endpoint).
Ray is the optional extra ``kb[ray]``; without it every entry point raises ``MissingExtraError`` saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kb_base.errors import ClusterError, InvalidInputError
from kb_base.folders import ManagedFolder
from writers.engines.ray_ingest import RayIngestion
from writers.engines.ray_stages import INSTALL_HINT, require_ray
from writers.engines.ray_sync import RayFolderSync
from writers.ingest import IngestOptions, IngestReport
from writers.sync import SyncOptions, SyncReport
from writers.target import KnowledgeBankTarget

log = logging.getLogger(__name__)

__all__ = ["INSTALL_HINT", "RayEngine", "require_ray"]

class _OwnProgressBar(logging.Filter):
    """Ray Data says its progress bars are off; they are on purpose (the job's own bar counts files)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Progress bars disabled" not in record.getMessage()


@dataclass
class RayEngine:
    """Where and how wide a job runs on Ray; every retry and restart count is explicit, none is Ray's default.

    ``embed_actors``: the actor pool's size (default: one per node alive when the job starts);
    ``embed_cpus``: CPUs each actor reserves (and the model's threads); ``extract_cpus``: CPUs per
    extraction task; ``files_per_task`` / ``files_per_embed_batch``: files per extraction task and per
    actor call; ``max_retries``: how often a failed extraction task (a dead worker or node) is re-run;
    ``max_restarts`` / ``max_task_retries``: how often a dead embedding actor is restarted and its call
    re-run; ``runtime_env``: Ray's runtime environment for the job (e.g. ``{"env_vars": {...}}``).
    """

    address: str | None = "auto"
    embed_actors: int | None = None
    embed_cpus: float = 1.0
    extract_cpus: float = 1.0
    files_per_task: int = 2
    files_per_embed_batch: int = 4
    texts_per_embed_call: int = 256  # row ingestion: texts per actor call
    max_retries: int = 3
    max_restarts: int = 3
    max_task_retries: int = 3
    runtime_env: dict[str, Any] | None = None
    name: str = field(default="ray", init=False, repr=False)
    # figures of the last job (seconds per stage, actors used), for benchmarks and logs
    last_stats: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("files_per_task", "files_per_embed_batch", "texts_per_embed_call"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"RayEngine {name} must be an integer >= 1, got {value!r}")
        for name in ("max_retries", "max_restarts", "max_task_retries"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidInputError(f"RayEngine {name} must be an integer >= 0, got {value!r}")
        if self.embed_actors is not None and (not isinstance(self.embed_actors, int) or self.embed_actors < 1):
            raise InvalidInputError(f"RayEngine embed_actors must be an integer >= 1, got {self.embed_actors!r}")
        for name in ("embed_cpus", "extract_cpus"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise InvalidInputError(f"RayEngine {name} must be a positive number, got {value!r}")
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise InvalidInputError(f"RayEngine address must be 'auto', 'local', host:port or ray://host:port, "
                                    f"got {self.address!r}")
        require_ray()  # without the extra, say how to install it now rather than when the job starts

    # --- the cluster --------------------------------------------------------------------------

    def connect(self) -> Any:
        """Connect this process to the cluster (once; a process already connected keeps its connection)."""
        ray = require_ray()
        if not ray.is_initialized():
            options: dict[str, Any] = {"logging_level": logging.WARNING, "runtime_env": self.runtime_env,
                                       "log_to_driver": True}
            local = self.address in (None, "local")
            try:
                ray.init(**options) if local else ray.init(address=self.address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterError(f"cannot connect to the Ray cluster at {self.address!r}: {exc}; start one with "
                                   f"`ray start --head` or give its address (host:port or ray://host:10001)") from exc
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the job shows one bar of its own for the whole cluster
        context.print_on_execution_start = False
        context.verbose_stats_logs = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a line per dataset run on the terminal
        data_log = logging.getLogger("ray.data._internal.progress")  # where Ray Data says it
        if not any(isinstance(f, _OwnProgressBar) for f in data_log.filters):
            data_log.addFilter(_OwnProgressBar())
        return ray

    def actor_count(self, ray: Any) -> int:
        """The embedding actors: as asked, else one per node that leaves CPUs for the extraction tasks.

        Actors hold their CPUs for the whole job: a pool that leaves none for extraction would wait forever,
        so that is refused up front."""
        cpus = float(ray.cluster_resources().get("CPU", 0))
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        actors = self.embed_actors or max(1, min(nodes, int((cpus - self.extract_cpus) // self.embed_cpus)))
        if actors * self.embed_cpus + self.extract_cpus > cpus + 1e-9:
            raise InvalidInputError(f"the Ray cluster has {cpus:g} CPUs: {actors} embedding actors of "
                                    f"{self.embed_cpus:g} CPUs leave none for an extraction task of "
                                    f"{self.extract_cpus:g}; lower "
                                    f"embed_actors, embed_cpus or extract_cpus, or add nodes")
        return actors

    def model_factory(self, core: KnowledgeBankTarget) -> Callable[[], Any]:
        """What an actor calls once to load the knowledge bank's model (``embed(texts) -> array``).

        Here the model object itself travels; ``kb.RayEngine`` ships a recipe instead for models that hold
        connections (an OpenAI-compatible endpoint)."""
        model = core.embedder().model
        return lambda: model

    # --- jobs ---------------------------------------------------------------------------------

    def run_sync(self, core: KnowledgeBankTarget, folder: ManagedFolder, options: SyncOptions, progress: bool,
                 on_progress: Callable[[SyncReport], None] | None) -> SyncReport:
        return RayFolderSync(core, folder, options, progress, on_progress, self).run()

    def run_ingest(self, core: KnowledgeBankTarget, path: Path, options: IngestOptions, progress: bool,
                   on_commit: Callable[[IngestReport], None] | None) -> IngestReport:
        return RayIngestion(core, path, options, progress, on_commit, self).run()
