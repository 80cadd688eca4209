"""Knowledge banks by name or id, the same way for the embedded and the REST client (CLI, tools)."""

from __future__ import annotations

from typing import Any

from kb_base.errors import AmbiguousNameError, NotFoundError


def find_knowledge_bank(project: Any, ref: str) -> Any:
    """The handle of the knowledge bank whose id or name is ``ref``.

    Names are unique in a project, but a name can equal another knowledge bank's id: then ``ref`` names two
    knowledge banks and is an ``AmbiguousNameError`` that lists both ids, so the caller can pick one.
    """
    matches = {i.id: i for i in project.list_knowledge_banks() if ref in (i.id, i.name)}
    if len(matches) == 1:
        return next(iter(matches.values())).to_knowledge_bank()
    if matches:
        ids = ", ".join(sorted(matches))
        raise AmbiguousNameError(f"{ref!r} names {len(matches)} knowledge banks in project {project.project_key!r} "
                                 f"(as an id and as a name); give one of their ids: {ids}")
    raise NotFoundError(f"no knowledge bank with id or name {ref!r} in project {project.project_key!r}")
