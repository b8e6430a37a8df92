"""Control plane: admin API, promotion and rollback, rollouts, and the model-server runtime."""
