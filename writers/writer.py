"""The knowledge bank writer: a context manager that commits its whole block at once.

Semantics (the reference API's, made precise):
- entering takes the knowledge bank's single writer lock (waiting up to
  ``timeout`` seconds, then WriterBusyError) and opens a store transaction;
- documents added inside the block are validated against the metadata
  schema and embedded (through the embedding cache) as they are added; a
  write that fails raises at once and adds nothing;
- leaving the block normally commits everything atomically and durably;
  leaving it with an exception commits nothing;
- however the block ends, a commit that fails included, the writer lock, the
  store's connections and the staging files are released before ``__exit__``
  returns or raises: the next writer gets the lock at once, even while the
  caller keeps the exception (and with it this writer) alive;
- readers keep seeing the previous commit until the new one lands.
``folder_path`` is a private staging folder for the writer's files; the
store's own staging (the new index) happens there too and it is removed on
exit.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStore

from kb_base.disk import disk_full_error, is_disk_full
from kb_base.errors import KBError, StoreError, WriterClosedError
from stores.base import StoreTransaction, release_after_failure
from writers.formatter import MetadataFormatter
from writers.target import KnowledgeBankTarget

log = logging.getLogger(__name__)


class KnowledgeBankWriter:
    def __init__(self, core: KnowledgeBankTarget, timeout: float = 30.0) -> None:
        self.core = core
        self.timeout = timeout
        self._tx: StoreTransaction | None = None
        self._folder = core.folder / "staging" / f"writer-{uuid.uuid4().hex}"
        self._started = 0.0

    @property
    def folder_path(self) -> str:
        return str(self._folder)

    def __enter__(self) -> KnowledgeBankWriter:
        tx: StoreTransaction | None = None
        try:
            tx = self.core.driver.begin(timeout=self.timeout)
            self._folder.mkdir(parents=True, exist_ok=True)
        except BaseException as failure:
            if tx is not None:  # no __exit__ follows a failed __enter__: release the lock here
                release_after_failure(tx, failure)
            what = f"opening a writer on knowledge bank {self.core.id}"
            if isinstance(failure, Exception) and is_disk_full(failure):
                raise disk_full_error(failure, what) from failure
            if isinstance(failure, OSError | sqlite3.Error) and not isinstance(failure, KBError):
                raise StoreError(f"{what} failed: {failure}") from failure
            raise
        self._tx = tx
        self._started = time.monotonic()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        tx, self._tx = self._tx, None
        try:
            if tx is None:
                return
            if exc_type is None:
                try:
                    tx.commit()
                except BaseException as failure:
                    # the store's commit released the lock already; this is the guarantee for any driver: the
                    # next writer must not wait for this exception (and the transaction it keeps) to be collected
                    release_after_failure(tx, failure)
                    log.warning("knowledge bank %s: commit failed, writer released (%s: %s)", self.core.id,
                                type(failure).__name__, failure)
                    raise
                log.info("knowledge bank %s: writer committed after %.2fs", self.core.id,
                         time.monotonic() - self._started)
            else:
                tx.rollback()
                log.warning("knowledge bank %s: writer rolled back, nothing committed (%s: %s)",
                            self.core.id, exc_type.__name__, exc)
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)

    @property
    def transaction(self) -> StoreTransaction:
        if self._tx is None:
            raise WriterClosedError(
                f"the writer of knowledge bank {self.core.id} is not open: use it inside `with core.get_writer() as w:`"
            )
        return self._tx

    def clear(self) -> None:
        """Remove every document (takes effect with the commit, like everything else)."""
        self.transaction.clear()

    def get_metadata_formatter(self) -> MetadataFormatter:
        return MetadataFormatter()

    def as_langchain_vectorstore(self, **kwargs: Any) -> VectorStore:
        return self.core.langchain_vectorstore(self.transaction, **kwargs)

    def add_documents(self, documents: list[Document], ids: list[str] | None = None) -> list[str]:
        return self.as_langchain_vectorstore().add_documents(documents, ids=ids) if ids else \
            self.as_langchain_vectorstore().add_documents(documents)

    def delete(self, ids: list[str]) -> int:
        return self.core.delete_documents(ids, tx=self.transaction)

    def staging_path(self, name: str) -> Path:
        return self._folder / name
