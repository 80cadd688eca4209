"""The Elasticsearch driver: kNN and BM25 in one index per knowledge bank, atomic through generations."""
