"""The FAISS driver: vectors in a FAISS index file, records and the keyword index in SQLite (see ``store``)."""
