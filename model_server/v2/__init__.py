"""The Open Inference Protocol (V2) beside MLflow's: requests read, answers made, metadata."""
