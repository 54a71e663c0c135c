#!/usr/bin/env python3
"""The summary of several runs of bench/intake.sh or bench/latency.sh (their `--runs N`): each run's
figures in one table, then their median, which is how issue #21's goals are stated.

    python3 bench/runs.py intake REPORT.md...
    python3 bench/runs.py latency REPORT.md...

intake: `serve`'s share of the ceiling that stores nothing (the run needs that ceiling). A run in which
some 200 was not stored counts as 0 %: the goal asks for every 200 committed.

latency: p99 from POST to the outcome line. A run in which some notification was not processed (a failed
or skipped POST, or no outcome after the drain) counts as an infinite p99: the goal asks for every
notification processed.
"""

import math
import re
import statistics
import sys


def number(pattern, text, default=None):
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else default


def fmt(value, unit):
    if value is None:
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:,.2f} {unit}" if unit == "ms" else f"{value:,.0f} {unit}"


def intake(reports):
    print("| run | `serve` requests/s | ceiling requests/s | share of the ceiling | every 200 stored |")
    print("|---:|---:|---:|---:|---|")
    shares = []
    for i, text in enumerate(reports, 1):
        serve = number(r"^\| `serve` \(SQLite, durable ack\) \| (\d+) \|", text)
        ceiling = number(r"^\| ceiling, store `none` [^|]*\| (\d+) \|", text)
        if serve is None or ceiling is None:
            sys.exit(f"run {i}: no `serve` and ceiling storing nothing in its report (--runs needs the ceiling `none`)")
        stored = "every 200 was stored" in text
        share = 100 * serve / ceiling if stored else 0.0
        shares.append(share)
        print(f"| {i} | {serve:,.0f} | {ceiling:,.0f} | {share:.1f} % | {'yes' if stored else '**no**'} |")
    # The goal as the script states it, on the line with its share: "(goal ≥ 75 %: …)".
    goal = number(r"^`serve` / ceiling: .*\(goal ≥ (\d+) %", reports[0])
    if goal is None:
        sys.exit("run 1: its report states no goal for `serve`'s share of the ceiling")
    median = statistics.median(shares)
    verdict = "met" if median >= goal else "missed"
    if len(shares) < 5:
        verdict += "; the goal counts the median of five runs"
    print()
    print(
        f"Median of {len(shares)} runs: **{median:.1f} %** of the ceiling's requests/s "
        f"(range {min(shares):.1f}–{max(shares):.1f} %; goal ≥ {goal:.0f} %: {verdict})."
    )


def latency(reports):
    print("| run | rate | p99 POST → outcome | p99 POST → 200 | every notification processed | `serve` CPU | probe CPU | machine busy |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|")
    p99s, rates, goals = [], [], set()
    for i, text in enumerate(reports, 1):
        # The goals the probe measured this run against, as it states them (not those "not measured").
        goals |= {
            (float(bound), int(rate))
            for bound, rate, verdict in re.findall(
                r"^Goal p99 < ([\d.]+) ms at ≥ (\d+)/s, every notification processed: (\w+)", text, re.MULTILINE
            )
            if verdict in ("met", "missed")
        }
        outcome = number(r"^\| POST → handler done \(outcome line\) \| [\d.]+ ms \| [\d.]+ ms \| ([\d.]+) ms", text)
        answer = number(r"^\| POST → 200 \(intake answer\) \| [\d.]+ ms \| [\d.]+ ms \| ([\d.]+) ms", text)
        rate = number(r"\(p99 [\d.]+ ms at (\d+)/s\)", text)
        # The row under the header "| sent | answered 200 | failed | skipped … | processed | no outcome … |".
        counts = re.search(
            r"^\| sent \| answered 200 \| failed \|.*\n\|[-:|]+\|\n\| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$",
            text,
            re.MULTILINE,
        )
        if outcome is None or rate is None or counts is None:
            sys.exit(f"run {i}: its report has no latency table")
        failed, skipped, missing = (int(counts.group(k)) for k in (3, 4, 6))
        complete = failed == 0 and skipped == 0 and missing == 0
        p99s.append(outcome if complete else math.inf)
        rates.append(rate)
        processed = "yes" if complete else f"**no** ({failed} failed, {skipped} skipped, {missing} without outcome)"
        serve_cpu = number(r"`serve` (\d+) µs of CPU", text)
        probe_cpu = number(r"this driver (\d+) µs", text)
        busy = number(r"cores were (\d+) % busy", text)
        print(
            f"| {i} | {rate:,.0f}/s | {fmt(outcome, 'ms')} | {fmt(answer, 'ms')} | {processed} | "
            f"{fmt(serve_cpu, 'µs')} | {fmt(probe_cpu, 'µs')} | {fmt(busy, '%')} |"
        )
    median = statistics.median(p99s)
    rate = min(rates)
    print()
    print(f"Median of {len(p99s)} runs at {rate:,.0f}/s: p99 POST → outcome **{fmt(median, 'ms')}**.")
    for bound, goal_rate in sorted(goals, key=lambda g: g[1]):
        if rate >= goal_rate:
            verdict = "met" if median < bound else "missed"
            print(f"Goal p99 < {bound:g} ms at ≥ {goal_rate:,}/s, every notification processed, at the median: {verdict}.")


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("intake", "latency"):
        sys.exit(__doc__)
    reports = []
    for path in sys.argv[2:]:
        with open(path, encoding="utf-8") as f:
            reports.append(f.read())
    {"intake": intake, "latency": latency}[sys.argv[1]](reports)


if __name__ == "__main__":
    main()
