"""Benchmarks: scripts that print figures and write a JSON report (never run by `make test`)."""
