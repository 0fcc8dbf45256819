"""Read a server's randomly accessed files once at load, so that requests do not wait for the disk.

The SQLite online store (a user's read touches a few of its pages, anywhere in a file of ~1 GB
on 100k users), the mapped FAISS index and the mapped item embeddings are read piecewise by
requests, on the server's event loop. After a reboot or a fresh copy their pages are not in the
kernel's page cache, and each first touch waits for the disk: reads of a cold online store took
0.7-3 ms of wall time instead of 0.07 ms, one of them 338 ms (docs/benchmarks.md, thirty-first
session). One sequential read of the files at load costs ~0.3 s of CPU a GB and leaves them
cached for every process of the machine. ``posix_fadvise(WILLNEED)`` and ``readahead(2)`` were
tried first: on this kernel both returned with a fraction of the file cached.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)
CHUNK = 8 << 20  # one reused buffer: no allocation per read
MEMORY_SHARE = 0.5  # read ahead only while the files fit in this share of the available memory


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def read_ahead(paths: list[Path], memory_share: float = MEMORY_SHARE) -> int:
    """Read each existing file in ``paths`` once, front to back; returns the bytes read.

    Skipped (0, with a log line) when the files take more than ``memory_share`` of the memory
    available: caching them would push out other pages, and requests then read from the disk
    as before. A file that cannot be read is skipped: its owner reports it on use."""
    files = [p for p in dict.fromkeys(paths) if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    available = available_memory()
    if available is not None and total > memory_share * available:
        log.info("not reading %d MiB of serving files ahead: more than %.0f%% of the %d MiB of available memory",
                 total >> 20, 100 * memory_share, available >> 20)
        return 0
    start, done = time.monotonic(), 0
    buffer = bytearray(CHUNK)
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            while n := os.readv(fd, [buffer]):
                done += n
        except OSError:
            pass
        finally:
            os.close(fd)
    log.info("read %d MiB of serving files ahead in %.2f s (%s)", done >> 20, time.monotonic() - start,
             ", ".join(p.name for p in files))
    return done
