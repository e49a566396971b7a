"""The catalogue: references in SQLite, patch vectors in FAISS, stored feature sequences."""
