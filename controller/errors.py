"""The exceptions the controller raises for problems an operator can act on."""


class ControllerError(Exception):
    """A problem stated in one line for the operator (a busy port, a child that died)."""


class InvalidChange(ControllerError):
    """The change asked for cannot be made as asked (answered 400); nothing was changed."""


class Superseded(ControllerError):
    """A later change (a rollback) replaced this one before it was made (answered 409)."""


class LabelsRefused(ControllerError):
    """Labels that cannot be taken as sent (answered with `status`); none of them was kept."""

    def __init__(self, status: int, code: str, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.status, self.code, self.reason = status, code, reason
        """`reason`: what `mlcanary_labels_refused_total` counts it under."""
