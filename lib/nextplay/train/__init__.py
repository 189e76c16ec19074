"""Training: Petastorm loading, the epoch loop, launchers and checkpoints."""
