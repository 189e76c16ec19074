"""Scoring: the Spark batch job writing `predictions` (`batch`) with the logged model (`nextplay.model.pyfunc`)."""
