"""Local orchestration: `mlcanary up`, the CLI's client of the admin API, Kubernetes rendering."""
