"""Engines of folder sync and row ingestion, as the public API offers them (``kb.RayEngine``, ``kb.LocalEngine``).

    report = core.sync_folder("/mnt/shared/docs", extraction="structured", engine=kb.RayEngine(address="auto"))

The machinery is in ``writers.engines``; this layer adds what only it knows: how each kind of embedding
model travels to a Ray actor (the local model as its variant, an OpenAI-compatible endpoint as its
settings, so that every actor opens its own connection).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from kb.embeddings import LocalMiniLMModel, OpenAICompatibleModel
from kb_base.errors import InvalidInputError
from writers.engines import Engine, LocalEngine
from writers.engines.ray_engine import RayEngine as _RayEngineBase
from writers.target import KnowledgeBankTarget

__all__ = ["Engine", "LocalEngine", "RayEngine", "engine_for"]


class RayEngine(_RayEngineBase):
    __doc__ = _RayEngineBase.__doc__

    def model_factory(self, core: KnowledgeBankTarget) -> Callable[[], Any]:
        model = core.embedder().model
        if isinstance(model, LocalMiniLMModel):
            return partial(LocalMiniLMModel, int8=model.int8)
        if isinstance(model, OpenAICompatibleModel):
            # its HTTP client cannot travel; its settings can (the API key included: keep the cluster private)
            return partial(OpenAICompatibleModel, model.id, model.url.removesuffix("/embeddings"), model._secret,
                           model.model, batch_size=model.batch_size, timeout=model._http.timeout.read or 30.0,
                           max_retries=model.max_retries, dimensions=model.requested_dimensions)
        return super().model_factory(core)  # an in-process custom model travels as it is, if Ray can ship it


def engine_for(ray_address: str | None) -> Engine:
    """The engine a command line flag or a service setting names: ``None`` or ``""`` runs here."""
    if ray_address is None or ray_address == "":
        return LocalEngine()
    if not isinstance(ray_address, str):
        raise InvalidInputError(f"a Ray address is a string ('auto', 'local', host:port or ray://host:port), "
                                f"got {ray_address!r}")
    return RayEngine(address=ray_address)
