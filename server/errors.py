"""Per-request failures and their wire form.

A :class:`RequestError` is a request the caller got wrong (or asked too
early); it never means the server is broken. Unary calls turn it into the
call's status with ``google.rpc`` error details; the stream puts the same
``google.rpc.Status`` into that one response and carries on, so both paths
describe an error identically and clients need not parse message text.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2


class RequestError(Exception):
    """One request cannot be answered; ``details`` are google.rpc error-detail messages."""

    def __init__(self, code: grpc.StatusCode, message: str, details: Sequence[Message] = ()) -> None:
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


def invalid_argument(field: str, message: str) -> RequestError:
    """INVALID_ARGUMENT with a BadRequest detail naming ``field``."""
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
    return RequestError(
        grpc.StatusCode.INVALID_ARGUMENT, message, [error_details_pb2.BadRequest(field_violations=[violation])]
    )


def not_found(resource_type: str, resource_id: int) -> RequestError:
    """NOT_FOUND with a ResourceInfo detail saying which user or item is unknown."""
    info = error_details_pb2.ResourceInfo(resource_type=resource_type, resource_name=str(resource_id))
    return RequestError(grpc.StatusCode.NOT_FOUND, f"unknown {resource_type} id {resource_id}", [info])


def not_ready() -> RequestError:
    return RequestError(grpc.StatusCode.UNAVAILABLE, "the index is still loading; retry shortly")
