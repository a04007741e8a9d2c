"""abx-client: assign units locally with exactly the abx server's answers (docs/sdk.md)."""

from abx_client._hashing import HASH_SPEC_VERSION
from abx_client._snapshot import Assignment
from abx_client._version import __version__
from abx_client.aio import AsyncClient
from abx_client.client import Client, Prediction, RequestRejected

__all__ = [
    "HASH_SPEC_VERSION",
    "Assignment",
    "AsyncClient",
    "Client",
    "Prediction",
    "RequestRejected",
    "__version__",
]
