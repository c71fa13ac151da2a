"""Energy sources: each reads one kind of hardware counter and knows nothing else."""
