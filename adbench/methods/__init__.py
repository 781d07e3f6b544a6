"""Stage 3 of the DAG: which method a config names (registry), a run's identity and folder, the kernel pin,
and the nearest-neighbour search methods share."""
