"""The proxy's rules for both planes: choose, exchange, settle, retry, eject, shadow, ids."""
