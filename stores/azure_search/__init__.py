"""The Azure AI Search driver: one index per knowledge bank, hybrid and semantic ranking in the service."""
