"""build_engine."""
