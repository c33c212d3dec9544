"""The NumPy training engine: ops compiled from the IR, losses, optimizers, trainer."""
