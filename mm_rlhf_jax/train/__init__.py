"""Training: state, optimizer, one pure step per algorithm, the host loop, checkpoints."""
