#!/usr/bin/env python3
"""Which B-tree each page written to a SQLite WAL belongs to: frames per commit and their share, by table or
index, from a copy of the database and its WAL taken together while `serve` runs (`bench/wal-pages.sh`).

    bench/wal-pages.py COPY_DIR [COPY_DIR ...]   # each holding serve.db and serve.db-wal, copied together

The database copy is opened with its WAL, so that `dbstat` names each page as it was at the copy. Pages that
belong to no B-tree are the free list's and the pointer maps of incremental vacuum; page 1 holds the header.
Only the frames of the WAL's current generation are counted (those since its last restart). Needs Python's
sqlite3 built with the dbstat table (Debian's is). Figures depend on the run; nothing here is a test.
"""
import collections
import shutil
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path

FRAME_HEADER = 24


def frames(wal: bytes):
    """(page number, commit?) of each valid frame of the WAL's current generation."""
    if len(wal) < 32:
        return []
    _magic, _version, page_size, _ckpt, salt1, salt2 = struct.unpack(">IIIIII", wal[:24])
    out, at = [], 32
    while at + FRAME_HEADER + page_size <= len(wal):
        page, db_size, s1, s2 = struct.unpack(">IIII", wal[at:at + 16])
        if (s1, s2) != (salt1, salt2):
            break
        out.append((page, db_size != 0))
        at += FRAME_HEADER + page_size
    return out


def owners(copy: Path):
    """Page number → what it belongs to, from a private copy of the database and its WAL."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "serve.db"
        shutil.copy(copy / "serve.db", db)
        shutil.copy(copy / "serve.db-wal", Path(tmp) / "serve.db-wal")
        c = sqlite3.connect(db)
        named = {}
        for name, page, kind in c.execute("SELECT name, pageno, pagetype FROM dbstat"):
            named[page] = f"{name} ({kind})"
        c.close()
    named[1] = "page 1 (header, schema)"
    return named


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        copy = Path(arg)
        wal = (copy / "serve.db-wal").read_bytes()
        found = frames(wal)
        commits = sum(1 for _, commit in found if commit)
        named = owners(copy)
        counts = collections.Counter(named.get(page, "free list and pointer maps") for page, _ in found)
        print(f"\n{copy}: {len(found)} frames, {commits} commits, {len(found) / max(1, commits):.2f} frames per commit\n")
        print("| pages of | per commit | share of the frames |")
        print("|---|---:|---:|")
        for name, n in counts.most_common():
            print(f"| {name} | {n / max(1, commits):.2f} | {100 * n / max(1, len(found)):.1f} % |")


if __name__ == "__main__":
    main()
