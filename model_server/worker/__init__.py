"""MLflow's path in a child process, so that the serving process need not hold MLflow."""
