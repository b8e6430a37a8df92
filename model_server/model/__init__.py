"""The model itself: resolved once, loaded with MLflow, warmed, scored on MLflow's own path."""
