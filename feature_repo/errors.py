"""Errors of the data layer, named after the event; messages say what was expected and the fix."""
from __future__ import annotations


class ShoprecDataError(Exception):
    """Base class of every error raised by the data layer."""


class ContractError(ShoprecDataError):
    """A table does not follow the data contract as a whole (e.g. a required column is missing).

    Row-level problems are not errors: those rows are quarantined with a reason instead.
    """


class WorkspaceNotReady(ShoprecDataError):
    """A job needs the output of an earlier job that has not run in this workspace."""


class ArtifactError(ShoprecDataError):
    """A versioned artifact is missing, incomplete or fails its checksum."""


class ConfigError(ShoprecDataError):
    """A setting has a value shoprec cannot use; the message names the setting and the fix."""
