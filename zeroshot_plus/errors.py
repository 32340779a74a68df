"""Errors a user can cause. Each carries one sentence that names the offending input."""


class InputError(ValueError):
    """Bad input from the user: a path, a model name, a class list, an array shape."""


class ModelLoadError(InputError):
    """A model or its weights could not be built or loaded."""
