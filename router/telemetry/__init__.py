"""What the router counts: per-variant metrics (lock-free) and predictions read from answers."""
