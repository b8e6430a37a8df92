"""The fast path: plain rows parsed straight to arrays, predicted on the raw or compiled model."""
