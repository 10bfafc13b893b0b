"""movierec: LightGCN movie recommendations served over gRPC.

The root package holds only the contract shared by every layer (the model
bundle format, the versioned store, the error type, and the TLS and token
helpers both ends of the wire use, :mod:`movierec.security`); the layers live in
``movierec.trainer``, ``movierec.index``, ``movierec.server`` and
``movierec.clients``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("movierec")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
