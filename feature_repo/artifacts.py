"""Versioned artifact directories with a manifest and an atomic CURRENT pointer.

Layout: ``<root>/<version>/`` (files + manifest.json) and ``<root>/CURRENT`` (the live version's
name). A build writes into a hidden staging directory that is renamed into place only once it is
complete, and goes live only through ``publish`` (write a temp file, then ``os.replace``): a failed
or interrupted build never touches the live version. It lives in the bottom layer because
retrieval and ranking write artifacts and serving reads them.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from feature_repo.errors import ArtifactError

MANIFEST = "manifest.json"
POINTER = "CURRENT"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Build:
    """A version being written: put files under ``path`` and facts into ``manifest``."""

    path: Path
    version: str
    manifest: dict[str, Any]


class ArtifactStore:
    """The versions of one kind of artifact (e.g. ``models/retrieval``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @contextmanager
    def build(self, **manifest: Any) -> Iterator[Build]:
        """Stage a new version; it appears under its name only if the block succeeds."""
        self.root.mkdir(parents=True, exist_ok=True)
        version = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(2)
        staging = self.root / f".staging-{version}"
        staging.mkdir()
        b = Build(staging, version, dict(manifest))
        try:
            yield b
            files = {
                str(p.relative_to(staging)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                for p in sorted(staging.rglob("*")) if p.is_file()
            }
            b.manifest.update(version=version, created_at=datetime.now(timezone.utc).isoformat(), files=files)
            (staging / MANIFEST).write_text(json.dumps(b.manifest, indent=2, default=str))
            staging.rename(self.root / version)
            b.path = self.root / version
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def publish(self, version: str) -> None:
        """Make ``version`` live atomically (after checking that it is complete)."""
        self.verify(version)
        tmp = self.root / f".{POINTER}.{secrets.token_hex(4)}"
        tmp.write_text(version + "\n")
        os.replace(tmp, self.root / POINTER)

    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists())

    def current_version(self) -> str:
        pointer = self.root / POINTER
        if not pointer.exists():
            raise ArtifactError(f"no live version in {self.root} ({POINTER} is missing); run the job that builds it "
                                f"(`shoprec train` / `shoprec index`).")
        return pointer.read_text().strip()

    def current(self) -> Path:
        """Directory of the live version."""
        path = self.root / self.current_version()
        if not (path / MANIFEST).exists():
            raise ArtifactError(f"{self.root}/{POINTER} names {path.name}, which has no {MANIFEST}; "
                                f"publish a complete version.")
        return path

    def manifest(self, version: str | None = None) -> dict[str, Any]:
        path = self.root / (version or self.current_version()) / MANIFEST
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ArtifactError(f"cannot read {path}: {e}") from e

    def verify(self, version: str) -> None:
        """Raise ArtifactError unless every file listed in the manifest is there, unchanged."""
        manifest = self.manifest(version)
        for rel, facts in manifest.get("files", {}).items():
            path = self.root / version / rel
            if not path.exists() or _sha256(path) != facts["sha256"]:
                raise ArtifactError(f"{path} is missing or does not match its checksum in {MANIFEST}; rebuild the version.")

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` versions; the live one is always kept."""
        live = self.current_version() if (self.root / POINTER).exists() else None
        candidates = self.versions()[:-keep] if keep > 0 else self.versions()
        old = [v for v in candidates if v != live]
        for v in old:
            shutil.rmtree(self.root / v)
        return old
