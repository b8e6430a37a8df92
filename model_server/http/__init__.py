"""The native engine's HTTP side: the aiohttp app, its errors, metrics and micro-batching."""
