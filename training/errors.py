"""The one exception type training raises for problems a user can fix."""


class TrainingError(Exception):
    """A problem with the input or the registry, stated in one line for the user."""
