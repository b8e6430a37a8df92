"""Dataset generation, training, evaluation, MLflow logging and registration."""
