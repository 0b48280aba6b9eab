"""The active-learning loop (``uqpot loop``): its config, its steps (train, sample, label, MD stability, NEB),
checks before it writes, resuming, and its replicates (one loop per seed)."""
