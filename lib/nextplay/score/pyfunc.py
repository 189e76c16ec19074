"""The entry point that models logged before 2026-12-01 name in their models-from-code file
(`from nextplay.score.pyfunc import NextTrackModel`): kept so that they still load through MLflow.
New models name `nextplay.serving` (its docstring says why)."""
from nextplay.serving import NextTrackModel

__all__ = ["NextTrackModel"]
