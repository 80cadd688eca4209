"""kb's base types, the floor every other layer stands on: errors, filters, search requests and results,
documents, input checks, managed folders, and the small helpers they need (a full disk, events, JSON).

Imports nothing of kb's (``tests/test_layering.py``); users reach these through ``kb`` and ``kb.errors``.
"""
