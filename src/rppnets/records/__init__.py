"""The run folder's format, one floor below training (which writes it) and analysis (which reads it)."""
