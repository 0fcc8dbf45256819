"""ArtifactStore: versions appear only when complete and go live only through publish."""
from __future__ import annotations

import hashlib
import json

import pytest

from feature_repo.artifacts import MANIFEST, POINTER, ArtifactStore
from feature_repo.errors import ArtifactError


def _build(store: ArtifactStore, payload: bytes = b"weights", **manifest) -> str:
    with store.build(kind="test", **manifest) as b:
        (b.path / "model.bin").write_bytes(payload)
        (b.path / "sub").mkdir()
        (b.path / "sub" / "ids.json").write_text("[1, 2]")
        b.manifest["metrics"] = {"recall": 0.5}
    return b.version


def test_build_publish_current(tmp_path):
    store = ArtifactStore(tmp_path / "models" / "retrieval")
    version = _build(store, b"abc")
    assert store.versions() == [version]
    store.publish(version)
    assert store.current_version() == version
    assert (store.root / POINTER).read_text().strip() == version
    live = store.current()
    assert live == store.root / version
    manifest = json.loads((live / MANIFEST).read_text())
    assert manifest["version"] == version and manifest["kind"] == "test"
    assert manifest["metrics"] == {"recall": 0.5}
    assert set(manifest["files"]) == {"model.bin", "sub/ids.json"}
    assert manifest["files"]["model.bin"] == {"bytes": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}
    assert store.manifest() == manifest
    # no staging leftovers
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []


def test_failed_build_leaves_nothing_and_keeps_current(tmp_path):
    store = ArtifactStore(tmp_path / "idx")
    good = _build(store)
    store.publish(good)
    with pytest.raises(RuntimeError, match="boom"):
        with store.build() as b:
            (b.path / "half.bin").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert store.versions() == [good]
    assert store.current_version() == good
    assert sorted(p.name for p in store.root.iterdir()) == sorted([good, POINTER])


def test_publish_of_tampered_version_raises_and_keeps_current(tmp_path):
    store = ArtifactStore(tmp_path / "idx")
    old = _build(store, b"old")
    store.publish(old)
    new = _build(store, b"new")
    (store.root / new / "model.bin").write_bytes(b"evil")
    with pytest.raises(ArtifactError, match="checksum"):
        store.publish(new)
    assert store.current_version() == old
    with pytest.raises(ArtifactError):
        store.publish("no-such-version")
    assert store.current_version() == old
    (store.root / new / "model.bin").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        store.verify(new)


def test_prune_keeps_the_live_version_even_if_older(tmp_path):
    store = ArtifactStore(tmp_path / "idx")
    v1, v2, v3 = (_build(store, bytes([i])) for i in range(3))
    assert store.versions() == [v1, v2, v3]
    store.publish(v1)
    removed = store.prune(keep=1)
    assert sorted(removed) == [v2]
    assert store.versions() == [v1, v3]
    assert store.current() == store.root / v1
    assert store.prune(keep=1) == []


def test_current_version_without_pointer_names_the_command(tmp_path):
    store = ArtifactStore(tmp_path / "idx")
    _build(store)
    with pytest.raises(ArtifactError, match=r"shoprec (train|index)"):
        store.current_version()
    with pytest.raises(ArtifactError):
        store.current()
    # prune without a live version still keeps the newest
    assert len(store.prune(keep=1)) == 0
