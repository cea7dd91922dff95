"""The training loop: one process's steps, its data stream, losses, checkpoints and report."""
