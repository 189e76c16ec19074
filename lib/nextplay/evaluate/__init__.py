"""Offline next-item evaluation: rank metrics against all items, and the baselines they are read beside."""
