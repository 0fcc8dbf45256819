"""Serving files read once at load (serving/page_cache.py), so that requests do not wait for the disk."""
from __future__ import annotations

import logging

from serving.page_cache import read_ahead


def test_read_ahead_reads_every_file_once_and_skips_missing_ones(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * (9 << 20))  # more than one buffer
    b.write_bytes(b"y" * 1000)
    assert read_ahead([a, b, a, tmp_path / "missing.db"]) == (9 << 20) + 1000


def test_read_ahead_skips_files_that_would_crowd_out_memory(tmp_path, caplog):
    big = tmp_path / "store.db"
    big.write_bytes(b"z" * 4096)
    with caplog.at_level(logging.INFO, logger="serving.page_cache"):
        assert read_ahead([big], memory_share=1e-12) == 0
    assert "not reading" in caplog.text and "available memory" in caplog.text


def test_a_server_reads_its_online_store_and_index_files_ahead(trained_workspace, caplog):
    from serving.recommender import Recommender

    with caplog.at_level(logging.INFO, logger="serving.page_cache"):
        rec = Recommender(trained_workspace)
    line = next(r.getMessage() for r in caplog.records if r.name == "serving.page_cache")
    assert all(name in line for name in ("online_store.db", "index.faiss", "item_embeddings.npy")), line
    assert [p.name for p in rec.models.mapped_files] == ["index.faiss", "item_embeddings.npy"]
    assert all(p.is_file() for p in rec.models.mapped_files)
