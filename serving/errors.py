"""Serving errors, named after the event, and the one table that maps them to gRPC codes."""
from __future__ import annotations

import grpc

from feature_repo.errors import ArtifactError


class ServingError(Exception):
    """Base class of errors a request can end with."""


class InvalidArgument(ServingError):
    """A request field is missing, too long or out of range; the message names the field."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class UnknownItem(ServingError):
    """An item id the catalog does not contain, where one is required."""


class ModelNotLoaded(ServingError):
    """No live model/index version could be loaded; run the training jobs first."""


class StoreUnavailable(ServingError):
    """The online feature store cannot be reached."""


# The one mapping from error class to status code (first match wins, subclasses first).
STATUS_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownItem, grpc.StatusCode.NOT_FOUND),
    (ModelNotLoaded, grpc.StatusCode.FAILED_PRECONDITION),
    (ArtifactError, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status code and client-facing message; unexpected errors get a generic INTERNAL message."""
    for cls, code in STATUS_CODES:
        if isinstance(error, cls):
            return code, str(error)
    return grpc.StatusCode.INTERNAL, "internal error; the server log has the details"
