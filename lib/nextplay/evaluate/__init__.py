"""Offline next-item evaluation: the model beside the baselines on the test split, and the promotion gate."""
