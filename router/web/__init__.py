"""The router's aiohttp app: what the raw plane hands over, the original endpoints, /health."""
