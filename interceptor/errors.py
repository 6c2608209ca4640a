"""The one exception every interceptor module raises for a user-facing refusal."""


class InterceptorError(Exception):
    """A clear reason why an operation cannot proceed, naming what is missing and the fix."""
