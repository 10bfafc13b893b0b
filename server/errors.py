"""Per-request failures and their wire form.

A :class:`RequestError` is a request the caller got wrong (or asked too
early); it never means the server is broken. Unary calls turn it into the
call's status with ``google.rpc`` error details; the stream puts the same
``google.rpc.Status`` into that one response and carries on, so both paths
describe an error identically and clients need not parse message text.

Whatever builds a message, what reaches the client is bounded
(:data:`MAX_MESSAGE_BYTES`: a trailer every client accepts, whatever a caller
sent) and names no absolute server path (:func:`client_safe`): a file's
location on the server is the operator's business, not the caller's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

# UTF-8 bytes of an error message sent to a client, at most (gRPC clients accept 8 KiB of metadata by default,
# and the message travels twice: grpc-message and the google.rpc.Status in grpc-status-details-bin).
MAX_MESSAGE_BYTES = 1000
# An absolute POSIX path not inside a word (so "ratings/times" is left alone).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/[^\s:'\",;()\[\]]+")


class RequestError(Exception):
    """One request cannot be answered; ``details`` are google.rpc error-detail messages.

    ``message`` is made :func:`client_safe` here, so no caller can forget it.
    """

    def __init__(self, code: grpc.StatusCode, message: str, details: Sequence[Message] = ()) -> None:
        message = client_safe(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = tuple(details)

    def to_status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details:
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
        return status


def client_safe(text: str) -> str:
    """``text`` with every absolute path cut to its last two parts (``.../v0003/manifest.json``) and cut to
    :data:`MAX_MESSAGE_BYTES` UTF-8 bytes: what a server may tell a client about its own failures."""
    text = _ABSOLUTE_PATH.sub(_tail, text)
    encoded = text.encode()
    if len(encoded) <= MAX_MESSAGE_BYTES:
        return text
    return encoded[: MAX_MESSAGE_BYTES - 3].decode(errors="ignore") + "..."


def _tail(match: re.Match[str]) -> str:
    parts = [part for part in match.group().split("/") if part]
    return "/".join(["...", *parts[-2:]])


def invalid_argument(field: str, message: str) -> RequestError:
    """INVALID_ARGUMENT with a BadRequest detail naming ``field`` (``filter.include_genres``: a nested one)."""
    message = client_safe(message)
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
    return RequestError(
        grpc.StatusCode.INVALID_ARGUMENT, message, [error_details_pb2.BadRequest(field_violations=[violation])]
    )


def not_found(resource_type: str, resource_id: int) -> RequestError:
    """NOT_FOUND with a ResourceInfo detail saying which user or item is unknown."""
    info = error_details_pb2.ResourceInfo(resource_type=resource_type, resource_name=str(resource_id))
    return RequestError(grpc.StatusCode.NOT_FOUND, f"unknown {resource_type} id {resource_id}", [info])


def resource_exhausted(subject: str, message: str) -> RequestError:
    """RESOURCE_EXHAUSTED with a QuotaFailure detail: the server is at a configured capacity; retry later."""
    violation = error_details_pb2.QuotaFailure.Violation(subject=subject, description=client_safe(message))
    return RequestError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, message, [error_details_pb2.QuotaFailure(violations=[violation])]
    )


def not_ready() -> RequestError:
    return RequestError(grpc.StatusCode.UNAVAILABLE, "the index is still loading; retry shortly")
