"""Training machinery: optimiser and schedule, checkpoints, logging and the loop itself."""
