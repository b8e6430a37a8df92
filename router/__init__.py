"""The router: the weighted, sticky, health-aware reverse proxy in front of the model servers."""
