"""Automated rollouts: progressive canary weights judged on errors, latency and predictions."""
