"""Serves exactly one model version over MLflow's scoring protocol (built in a later issue)."""
