"""The trilay exception hierarchy: the tensor and circuit errors are defined in
:mod:`trilay.kernels.errors` and re-exported here; the errors only the engine and the frontends
raise (files, options) are defined here."""

import errno

from trilay.kernels.errors import *  # noqa: F401,F403
from trilay.kernels.errors import TrilayError
from trilay.kernels.errors import __all__ as _kernel_errors


class MissingFileError(TrilayError, FileNotFoundError):
    """A file a loader was given does not exist (or is a directory). Every trilay loader raises
    it, so ``except FileNotFoundError`` and ``except TrilayError`` both catch a missing file."""

    def __init__(self, path: str, detail: str = "no such file"):
        # OSError's (errno, strerror, filename) form: str() is "[Errno 2] <detail>: '<path>'"
        super().__init__(errno.ENOENT, detail, path)
        self.path = path


class OptionError(TrilayError, ValueError):
    """An option (a keyword argument choosing a behaviour, such as ``reduction=``) has a value
    that is not one of its choices or not of its type."""


__all__ = [*_kernel_errors, "MissingFileError", "OptionError"]
