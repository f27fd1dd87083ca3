"""The catalog's numbered schema migrations (alembic script directory: `env.py`, `versions/NNNN_*.py`)."""
