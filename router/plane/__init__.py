"""The raw data plane on the public port: httptools connections, pooled upstreams, bytes."""
