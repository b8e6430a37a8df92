"""Data plane: the weighted, sticky, health-aware reverse proxy (built in a later issue)."""
