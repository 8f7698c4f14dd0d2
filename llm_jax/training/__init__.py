"""Training: state, optimizer, losses, pure steps, checkpoints, and the loop."""
