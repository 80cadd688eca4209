"""The Azure AI Search driver against the local emulator of the service's REST API (tests/support/azure_search).

No Azure service is reachable from here: the real SDK talks HTTP to an emulator process that validates every
request and response against Microsoft's published OpenAPI description (tests/support/azure_spec).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kb.filters import Comparison, Filter, Not
from stores.azure_search_filters import EXACT_INT
from stores.azure_search_store import AzureSearchStore
from stores.base import StoreContext
from tests.conformance.store_suite import StoreConformanceSuite, StoreFactory
from tests.support.azure_search_emulator import AzureSearchEmulator

_ids = itertools.count()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureSearchEmulator]:
    server = AzureSearchEmulator(tmp_path_factory.mktemp("azure-emulator")).start()
    yield server
    violations = server.violations()
    server.stop()
    assert violations == [], violations  # every request and response matched the published schemas


def connection(emulator: AzureSearchEmulator, **extra: Any) -> dict[str, Any]:
    return {"endpoint": emulator.url, "api_key": emulator.api_key, "index_prefix": "t-",
            "api_version": "2024-07-01", "retry_backoff_factor": 0.05, **extra}


def _big_int(flt: Filter | None) -> bool:
    if isinstance(flt, Comparison):
        values = flt.value if isinstance(flt.value, tuple) else (flt.value,)
        return any(isinstance(v, int) and not isinstance(v, bool) and abs(v) > EXACT_INT for v in values)
    if isinstance(flt, Not):
        return _big_int(flt.clause)
    return flt is not None and any(_big_int(c) for c in flt.clauses)


class TestAzureSearchConformance(StoreConformanceSuite):
    def may_refuse(self, flt: Any) -> bool:
        return _big_int(flt)  # integers Edm.Double cannot hold exactly; the property test draws none

    @pytest.fixture
    def store_factory(self, tmp_path: Path, emulator: AzureSearchEmulator) -> StoreFactory:
        kb_id = f"conf{next(_ids)}"
        return lambda: AzureSearchStore(StoreContext(kb_id, tmp_path, connection=connection(emulator)))
