"""The model server: exactly one model version over MLflow's scoring protocol, immutable."""
