"""Reading the rows: the table, where trilay wins and loses, and how time grows with size."""

from __future__ import annotations

import math
from collections import defaultdict

from .harness import TIMED

_MODE_SHORT = {"forward": "fwd", "forward+backward": "fwd+bwd"}

COLUMNS = (
    ("workload", "<"),
    ("nodes", ">"),
    ("edges", ">"),
    ("layers", ">"),
    ("provider", "<"),
    ("batch", ">"),
    ("mode", "<"),
    ("median ms", ">"),
    ("IQR ms", ">"),
    ("GB/s", ">"),
    ("TTFR s", ">"),
    ("status", "<"),
)


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if x == 0 or abs(x) >= 10 ** (digits - 1):
        return f"{x:.0f}"
    return f"{x:.{max(0, digits - 1 - math.floor(math.log10(abs(x))))}f}"


def _status(row: dict) -> str:
    if row["status"] == "ok":
        return "ok"
    if row["status"] in TIMED:  # timed, with a flag: a busy machine, or a single call
        return f"{row['status']}: {row['reason']}"
    if row["status"] == "skipped":
        return f"skipped: {row['reason']}"
    if row["status"] == "WRONG":
        return f"WRONG: {row['reason']}"
    return row["reason"] or str(row["status"])


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for row in rows:
        ok = row["status"] in TIMED
        iqr = f"{_num(row['q25_ms'])}-{_num(row['q75_ms'])}" if ok else "-"
        out.append(
            [
                row["workload"],
                str(row["nodes"]),
                str(row["edges"]),
                str(row["layers"]),
                row["provider"],
                str(row["batch"]),
                _MODE_SHORT.get(row["mode"], row["mode"]),
                _num(row["median_ms"]) if ok else "-",
                iqr,
                _num(row["gbps"], 2) if ok else "-",
                _num(row["ttfr_s"], 2),
                _status(row),
            ]
        )
    return out


def format_table(rows: list[dict]) -> str:
    """A plain-text table, one line per row, sorted by workload, batch, mode, provider."""
    order = {}
    for row in rows:
        order.setdefault(row["workload"], len(order))
    providers = {}
    for row in rows:
        providers.setdefault(row["provider"], len(providers))
    ordered = sorted(
        rows,
        key=lambda r: (order[r["workload"]], r["batch"], r["mode"], providers[r["provider"]]),
    )
    body = table_rows(ordered)
    names = [c for c, _ in COLUMNS]
    widths = [max(len(n), *(len(line[i]) for line in body)) for i, n in enumerate(names)]
    widths[-1] = len(names[-1])  # the status column is last: no padding

    def fmt(cells):
        parts = [
            f"{cell:{align}{w}}" for cell, (_, align), w in zip(cells, COLUMNS, widths, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [fmt(names), fmt(["-" * w for w in widths])]
    previous = None
    for row, cells in zip(ordered, body, strict=True):
        group = (row["workload"], row["batch"], row["mode"])
        if previous is not None and group[0] != previous[0]:
            lines.append("")
        previous = group
        lines.append(fmt(cells))
    return "\n".join(lines)


def verdicts(rows: list[dict], against=("pysdd", "klay", "klay-compiled", "scatter")) -> list[str]:
    """One line per (workload, batch, mode) and trilay variant (``trilay``,
    ``trilay-graphs``, ...): whether it beats every other library's provider, and its ratio to
    each of ``against``."""
    groups: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        if row["status"] in TIMED:
            groups[(row["workload"], row["batch"], row["mode"])][row["provider"]] = row
    lines = []
    for (workload, batch, mode), by_provider in groups.items():
        others = [r for name, r in by_provider.items() if not _is_trilay(name)]
        for name, trilay in by_provider.items():
            if not _is_trilay(name):
                continue
            parts = []
            for other in against:
                if other in by_provider:
                    ratio = trilay["median_ms"] / by_provider[other]["median_ms"]
                    if 1 / 1.05 <= ratio <= 1.05:
                        parts.append(f"on par with {other}")
                    elif ratio > 1:
                        parts.append(f"{ratio:.1f}x slower than {other}")
                    else:
                        parts.append(f"{1 / ratio:.1f}x faster than {other}")
            best = min(others, key=lambda r: r["median_ms"], default=None)
            if best is None:
                continue  # nothing else ran: nothing to say
            if trilay["median_ms"] <= best["median_ms"]:
                verdict = f"{name} fastest"
            else:
                verdict = f"{name} LOSES to {best['provider']}"
            flagged = sorted({r["status"] for r in [trilay, *others] if r["status"] != "ok"})
            note = f" [{', '.join(flagged)} rows: see the table]" if flagged else ""
            lines.append(
                f"{workload:>10} b={batch:<5} {_MODE_SHORT.get(mode, mode):<7} {verdict}: "
                + ", ".join(parts)
                + note
            )
    return lines


def _is_trilay(provider: str) -> bool:
    return provider == "trilay" or provider.startswith("trilay-")


def growth(rows: list[dict]) -> list[str]:
    """For each (provider, batch, mode) over the synthetic 3-CNF workloads (one family, so
    size is the only thing that changes): the log-log slope of median time against edges
    (time ~ edges^slope) and the time ratio of the largest to the smallest circuit."""
    series: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        if row["status"] in TIMED and row.get("source") == "3cnf":
            series[(row["provider"], row["batch"], row["mode"])].append(
                (row["edges"], row["median_ms"])
            )
    lines = []
    for (provider, batch, mode), points in sorted(series.items(), key=lambda kv: kv[0]):
        points = sorted(set(points))
        if len({e for e, _ in points}) < 3:  # fewer sizes give no trend
            continue
        xs = [math.log(e) for e, _ in points]
        ys = [math.log(t) for _, t in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in xs
        )
        (e0, t0), (e1, t1) = points[0], points[-1]
        lines.append(
            f"{provider:>13} b={batch:<5} {_MODE_SHORT.get(mode, mode):<7} "
            f"time ~ edges^{slope:.2f}; {e0} -> {e1} edges ({e1 / e0:.1f}x): "
            f"{t0:.3g} -> {t1:.3g} ms ({t1 / t0:.1f}x)"
        )
    return lines
