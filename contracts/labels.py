"""Late labels' bounds, shared by the router (which forwards `POST /feedback`) and the controller.

Both refuse a batch over them before reading it, so that nobody, signed in or not, makes either
parse more than this.
"""

from __future__ import annotations

MAX_LABELS = 10_000
"""Labels in one batch at most."""
MAX_LABELS_BYTES = 4 * 1024 * 1024
"""A batch's body at most: 10,000 labels of a few rows each, with room to spare."""
