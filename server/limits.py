"""What one request may ask for: bounds the work a single caller can cause.

Kept apart from the engine (no numpy/faiss import) so ``recctl serve --help``
can show the defaults without loading the serving stack. These limits also
size the server's receive limit (:mod:`movierec.server.admission`): a message
larger than the largest valid request could be is refused before it is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_K = 1000
DEFAULT_MAX_EXCLUDE = 10_000
# Genre names one filter list may carry (never more than the catalog has genres: MovieLens has 18-20).
DEFAULT_MAX_FILTER_GENRES = 64
# Characters of a request_id (echoed in the answer): a UUID is 36.
DEFAULT_MAX_REQUEST_ID = 128

# Server capacity (enforced by movierec.server.admission), here so `recctl serve --help` shows the defaults
# without importing gRPC. Calls in progress at once, streams included (grpc.aio answers RESOURCE_EXHAUSTED beyond):
DEFAULT_MAX_CONCURRENT_RPCS = 256
# RecommendStream calls open at once: well under the call cap, so streams never starve unary calls; and few
# enough that streams flooding k=1000 requests leave the event loop to other callers between their batches
# (bulk work has RecommendBatch; more streams: more --workers).
DEFAULT_MAX_STREAMS = 16
# Per stream and direction: bytes of requests read but not yet answered, and of answers not yet sent.
DEFAULT_STREAM_BUFFER_BYTES = 256 * 1024
# Request metadata (headers) a call may carry: a bearer token and tracing headers fit many times over.
DEFAULT_MAX_METADATA_BYTES = 16 * 1024


@dataclass(frozen=True)
class Limits:
    max_k: int = DEFAULT_MAX_K
    max_exclude_item_ids: int = DEFAULT_MAX_EXCLUDE
    max_filter_genres: int = DEFAULT_MAX_FILTER_GENRES
    max_request_id_length: int = DEFAULT_MAX_REQUEST_ID

    def __post_init__(self) -> None:
        if self.max_k < 1 or self.max_exclude_item_ids < 0:
            raise ValueError("max_k must be >= 1 and max_exclude_item_ids >= 0")
        if self.max_filter_genres < 0 or self.max_request_id_length < 0:
            raise ValueError("max_filter_genres and max_request_id_length must be >= 0")
