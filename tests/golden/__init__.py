"""Golden outputs of other libraries, recorded once (see record.py)."""
