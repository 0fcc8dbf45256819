"""Where every job of one shoprec installation reads and writes.

A workspace is one directory (default ``./var``, or ``--workspace`` / ``$SHOPREC_HOME``)
so that tests and demos can run side by side in temp dirs without touching each other.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from feature_repo.errors import WorkspaceNotReady

DEFAULT_WORKSPACE = Path(__file__).resolve().parent.parent / "var"


def default_workspace() -> Path:
    """``$SHOPREC_HOME`` if set, else ``var/`` next to the source tree."""
    return Path(os.environ.get("SHOPREC_HOME", DEFAULT_WORKSPACE)).resolve()


@dataclass(frozen=True)
class Workspace:
    """The directory layout of one installation; creating it makes the directories."""

    root: Path

    @classmethod
    def at(cls, root: str | Path | None = None) -> "Workspace":
        ws = cls(Path(root).resolve() if root is not None else default_workspace())
        for d in (ws.raw_dir, ws.clean_dir, ws.features_dir, ws.feast_dir, ws.models_dir):
            d.mkdir(parents=True, exist_ok=True)
        return ws

    @property
    def raw_dir(self) -> Path:
        """Input tables as generated or imported (events, items, users)."""
        return self.root / "data" / "raw"

    @property
    def clean_dir(self) -> Path:
        """Tables that passed validation, plus ``quarantine.csv`` and ``validation.json``."""
        return self.root / "data" / "clean"

    @property
    def features_dir(self) -> Path:
        """Feature tables with event timestamps: the Feast offline store's files."""
        return self.root / "features"

    @property
    def feast_dir(self) -> Path:
        """Feast registry and sqlite online store."""
        return self.root / "feast"

    @property
    def models_dir(self) -> Path:
        """Versioned artifacts: ``models/<kind>/<version>/`` and ``models/<kind>/CURRENT``."""
        return self.root / "models"

    def require(self, path: Path, produced_by: str) -> Path:
        """Return ``path`` or explain which command creates it."""
        if not path.exists():
            raise WorkspaceNotReady(
                f"{path} does not exist yet; run `shoprec {produced_by}` "
                f"(workspace {self.root}) first."
            )
        return path
