"""The trilay exception hierarchy (defined in :mod:`trilay.kernels.errors`, re-exported here)."""

from trilay.kernels.errors import *  # noqa: F401,F403
from trilay.kernels.errors import __all__  # noqa: F401
