"""Scoring: the logged pyfunc model (`pyfunc`) and the Spark batch job writing `predictions` (`batch`)."""
