"""What crosses between the parts: the routing file, metric names, and the payloads on the wire.

The router, the model server and the controller all import this package; it imports none of
them (only `common`), so each side reads with the same model the other side wrote with.
"""
