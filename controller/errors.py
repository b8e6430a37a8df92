"""The exception the controller raises for problems an operator can act on."""


class ControllerError(Exception):
    """A problem stated in one line for the operator (a busy port, a child that died)."""
