#!/usr/bin/env python3
"""What one group commit's sync costs on this machine's disk, by how the group is written.

Writes GROUPS groups of GROUP_BYTES each, one after another, each followed by fdatasync (or written with
O_DSYNC), and prints per group the CPU of this process (user + system, so the kernel's work in the calls,
not the block layer's or the interrupts' on other threads) and the time of write + sync (p50, p99):

- append:    each group appended to a file that grows (the sync writes the new size and blocks too);
- in place:  each group written over a file written in full beforehand (the sync has no metadata);
- direct:    in place, through O_DIRECT (no page cache), then fdatasync;
- dsync:     in place, through O_DIRECT | O_DSYNC (the write returns once on disk, no fdatasync).

    bench/sync-cost.py                      # 1,500 groups of 40 KiB, in the current directory, 3 rounds
    bench/sync-cost.py --dir /var/tmp --group-bytes 16384 --groups 3000 --rounds 5

The modes alternate within each round, so that a change in the machine's speed shows in all of them.
Nothing here is a test; figures depend on the disk and the file system (`bench/RESULTS.md`).
"""
import argparse
import mmap
import os
import time

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--dir", default=".")
parser.add_argument("--group-bytes", type=int, default=40960, help="a multiple of 4096 (O_DIRECT)")
parser.add_argument("--groups", type=int, default=1500)
parser.add_argument("--rounds", type=int, default=3)
args = parser.parse_args()
if args.group_bytes % 4096:
    parser.error("--group-bytes must be a multiple of 4096")

MODES = ("append", "in place", "direct", "dsync")


def run(mode):
    path = os.path.join(args.dir, "sync-cost.test")
    size = args.group_bytes * args.groups
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if mode != "append":
            chunk = b"\0" * (1 << 20)
            for _ in range(size // len(chunk) + 1):
                os.write(fd, chunk)
            os.fsync(fd)
        if mode in ("direct", "dsync"):
            os.close(fd)
            flags = os.O_RDWR | os.O_DIRECT | (os.O_DSYNC if mode == "dsync" else 0)
            fd = os.open(path, flags)
        buffer = mmap.mmap(-1, args.group_bytes)  # page-aligned, as O_DIRECT needs
        buffer.write(os.urandom(args.group_bytes))
        times = []
        cpu = time.process_time()
        for i in range(args.groups):
            start = time.perf_counter()
            os.pwritev(fd, [buffer], i * args.group_bytes)
            if mode != "dsync":
                os.fdatasync(fd)
            times.append((time.perf_counter() - start) * 1e6)
        cpu = (time.process_time() - cpu) / args.groups * 1e6
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return cpu, times[len(times) // 2], times[int(len(times) * 0.99)]


print(f"{args.groups} groups of {args.group_bytes} bytes in {os.path.abspath(args.dir)}, {args.rounds} rounds")
print()
print("| round | mode | CPU per group | write + sync p50 | p99 |")
print("|---:|---|---:|---:|---:|")
for round_ in range(1, args.rounds + 1):
    for mode in MODES:
        cpu, p50, p99 = run(mode)
        print(f"| {round_} | {mode} | {cpu:.0f} µs | {p50:.0f} µs | {p99:.0f} µs |", flush=True)
