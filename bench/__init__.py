"""The queue's benchmark: `python -m bench [PART ...]` (see bench/__main__.py)."""
