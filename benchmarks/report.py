"""Writes a benchmark run as results.md (tables and the goals of issue [4/8]),
results.json (every round) and PNG charts (matplotlib; skipped with a note when it is not
installed)."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

ORDER = (
    "pgpool",
    "pgpool+spans",
    "aiopg",
    "psycopg_pool",
    "asyncpg",
    "asyncpg (no reset)",
    "sprockets-postgres",
    "pgbench",
    "pgbench -S",
)
NONE = "-"


@dataclasses.dataclass
class Report:
    """One benchmark run: what ran where, and every round's numbers."""

    mode_name: str
    mode: Any
    machine: dict[str, str]
    postgres: str
    notes: list[str]
    results: Any  # (loop, cell key, contender) -> list of runs, one per round
    http: list[dict[str, Any]]
    took: float
    command: str


def _paired(runs: list[Any], base: list[Any]) -> float:
    return statistics.median(r.rate / b.rate for r, b in zip(runs, base, strict=False))


def _ratio(results: Any, loop: str, key: str, name: str) -> float | None:
    runs, base = results.get((loop, key, name)), results.get((loop, key, "aiopg"))
    if not runs or not base:
        return None
    return _paired(runs, base)


def _med(runs: list[Any], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def _tail(runs: list[Any]) -> float:
    """Median p99/p50 over the rounds whose p50 is above zero (pgbench logs whole
    microseconds: a p50 of 0 says nothing about the tail)."""
    ratios = [r.p99 / r.p50 for r in runs if r.p50 > 0]
    return statistics.median(ratios) if ratios else float("nan")


def _names(results: Any) -> list[str]:
    present = {name for _, _, name in results}
    return [n for n in ORDER if n in present]


def _cells(results: Any, loop: str) -> list[str]:
    seen: list[str] = []
    for lk, key, _ in results:
        if lk == loop and key not in seen:
            seen.append(key)
    return seen


def goals(results: Any, http: list[dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """(goal, what was measured, met?) for every goal of [4/8] this run can judge."""
    out: list[tuple[str, str, bool | None]] = []
    loops = sorted({lk for lk, _, _ in results})
    for loop in loops:
        for row in (r for r in http if r["loop"] == loop and r["app"] == "pgpool"):
            want = 0.90 if row["connections"] <= 16 else 0.80
            floor = f" (bare psycopg2: {row['bare_ratio']:.2f})" if "bare_ratio" in row else ""
            out.append((
                f"{loop}: HTTP c={row['connections']} >= {want:.2f} of the no-database ceiling",
                f"{row['db_ratio']:.2f}{floor}", row["db_ratio"] >= want,
            ))  # fmt: skip
        worse = []
        unfair = []
        starved = []
        for key in _cells(results, loop):
            ours, base = results.get((loop, key, "pgpool")), results.get((loop, key, "aiopg"))
            if not ours or not base:
                continue
            p99, p99_base = _med(ours, "p99"), _med(base, "p99")
            if p99 > p99_base:
                worse.append(f"{key} {p99 * 1e3:.2f} vs {p99_base * 1e3:.2f} ms")
            tasks, pool = int(key.split("c=")[1].split()[0]), int(key.split("pool ")[1])
            if tasks <= pool and tasks > 1 and _med(ours, "spread") > 1.5:
                unfair.append(f"{key} {_med(ours, 'spread'):.2f}")
            if tasks >= 200:
                ratio = _tail(ours)
                starved.append((key, ratio))
        out.append((
            f"{loop}: pgpool p99 no worse than aiopg's in every cell",
            "; ".join(worse) or "all cells", not worse,
        ))  # fmt: skip
        out.append((
            f"{loop}: max/median ops per task <= 1.5 when tasks <= pool",
            "; ".join(unfair) or "all such cells", not unfair,
        ))  # fmt: skip
        for key, ratio in starved:
            out.append((f"{loop}: {key} p99/p50 <= 1.5", f"{ratio:.2f}", ratio <= 1.5))
        w3 = _ratio(results, loop, "W3 c=16 pool 10", "pgpool")
        if w3 is not None:
            out.append((f"{loop}: W3 c=16 >= 1.3 x aiopg", f"{w3:.2f}", w3 >= 1.3))
        if loop == "uvloop":
            ours = results.get((loop, "W1 c=16 pool 10", "pgpool"))
            select_only = results.get((loop, "W1 c=16 pool 10", "pgbench -S"))
            same_sql = results.get((loop, "W1 c=16 pool 10", "pgbench"))
            if ours and select_only:
                frac = _paired(ours, select_only)
                strict = f"; of pgbench running SELECT 1: {_paired(ours, same_sql):.2f}"
                out.append((
                    "uvloop: W1 c=16 >= 0.6 of pgbench -S",
                    f"{frac:.2f}{strict if same_sql else ''}", frac >= 0.6,
                ))  # fmt: skip
            behind = []
            for key in _cells(results, loop):
                ours = results.get((loop, key, "pgpool"))
                peer = results.get((loop, key, "asyncpg (no reset)"))
                if ours and peer:
                    ratio = _paired(ours, peer)
                    if ratio < 1.0:
                        behind.append(f"{key} {ratio:.2f}")
            out.append((
                "uvloop: pgpool >= asyncpg (no reset) in every cell",
                "; ".join(behind) or "all cells", not behind,
            ))  # fmt: skip
    return out


def begin(section: str) -> str:
    """Marks where a table starts, for the docs to include it (MyST ``start-after``)."""
    return f"<!-- begin {section} -->"


def end(section: str) -> str:
    return f"<!-- end {section} -->"


def markdown(run: Report) -> str:
    results, http, machine, mode = run.results, run.http, run.machine, run.mode
    names = _names(results)
    lines = [
        f"# pgpool benchmark ({run.mode_name} mode)",
        "",
        begin("run"),
        f"`{run.command}`: {run.took:.0f} s, median of {mode.rounds} paired rounds of"
        f" {mode.seconds} s per contender and cell (pgbench runs whole seconds).",
        "",
        f"- Machine: {machine['cpu']}; {machine['os']}; Python {machine['python']}",
        f"- PostgreSQL {run.postgres} on the same machine",
        f"- Packages: {machine['packages']}",
        *(f"- Note: {note}" for note in run.notes),
        end("run"),
        "",
        "Ratios are to raw `aiopg.Pool` in the same round (higher is faster). pgbench is the C",
        "client (libpq, one thread, the same SQL): the limit a client reaches on this box;",
        "`pgbench -S` is its built-in select-only script (a primary-key lookup on",
        "pgbench_accounts, scale 1): more server work per query than `SELECT 1`.",
        "",
    ]
    for loop in sorted({lk for lk, _, _ in results}):
        lines += [f"## Throughput on {loop}: ratio to aiopg", "", begin(f"throughput-{loop}")]
        others = [n for n in names if n != "aiopg"]
        lines.append("| cell | aiopg ops/s | " + " | ".join(others) + " |")
        lines.append("|---|---:|" + "---:|" * (len(names) - 1))
        for key in _cells(results, loop):
            base = results.get((loop, key, "aiopg"))
            cells = [f"{_med(base, 'rate'):.0f}" if base else NONE]
            for name in others:
                ratio = _ratio(results, loop, key, name)
                text = NONE if ratio is None else f"{ratio:.2f}"
                cells.append(f"**{text}**" if name == "pgpool" else text)
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append(end(f"throughput-{loop}"))
        traced = [
            f"{key} {_paired(spans, plain):.2f}"
            for key in _cells(results, loop)
            if (spans := results.get((loop, key, "pgpool+spans")))
            and (plain := results.get((loop, key, "pgpool")))
        ]
        if traced:
            lines += [
                "",
                "Tracing: `pgpool+spans` is pgpool with a span per statement (OpenTelemetry SDK,"
                " batch processor, spans dropped); its rate over plain pgpool's, paired: "
                + "; ".join(traced)
                + ".",
            ]
        lines += ["", f"### Latency, fairness and CPU on {loop}", "", begin(f"latency-{loop}")]
        lines.append(
            "| cell | contender | ops/s | p50 ms | p99 ms | p99/p50"
            " | max/median ops per task | client CPU µs/op |"
        )
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for key in _cells(results, loop):
            for name in names:
                runs = results.get((loop, key, name))
                if not runs:
                    continue
                lines.append(
                    f"| {key} | {name} | {_med(runs, 'rate'):.0f} | {_med(runs, 'p50') * 1e3:.2f}"
                    f" | {_med(runs, 'p99') * 1e3:.2f}"
                    f" | {_tail(runs):.2f}"
                    f" | {_med(runs, 'spread'):.2f} | {_med(runs, 'cpu_us'):.0f} |"
                )
        lines += [end(f"latency-{loop}"), ""]
    if http:
        lines += [
            "## HTTP end to end",
            "",
            "A sprockets.http app, one process: `GET /value` runs one `SELECT %s` through the",
            "app's database mixin; `GET /nodb` is the same stack without it (the ceiling).",
            "In the pgpool app, `GET /bare` runs the same query on bare psycopg2 async",
            "connections with nothing around them (no pool logic, timeouts, hooks or",
            "metrics): the floor any pool on psycopg2 and this loop starts from.",
            "",
            begin("http"),
            "| loop | app | connections | no-db req/s | db req/s | ratio | db p99 ms"
            " | app CPU µs/req (db / no-db) | bare psycopg2 req/s (ratio, CPU µs/req) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in http:
            bare = (
                f"{row['bare_rate']:.0f} ({row['bare_ratio']:.2f}, {row['bare_cpu_us']:.0f})"
                if "bare_rate" in row
                else "-"
            )
            lines.append(
                f"| {row['loop']} | {row['app']} | {row['connections']} | {row['nodb_rate']:.0f}"
                f" | {row['db_rate']:.0f} | {row['db_ratio']:.2f} | {row['db_p99'] * 1e3:.1f}"
                f" | {row['db_cpu_us']:.0f} / {row['nodb_cpu_us']:.0f} | {bare} |"
            )
        lines += [end("http"), ""]
    lines += ["## Goals (issue [4/8])", "", begin("goals"), "| goal | measured | met |"]
    lines.append("|---|---|---|")
    for goal, measured, met in goals(results, http):
        lines.append(f"| {goal} | {measured} | {'yes' if met else 'NO'} |")
    lines += [end("goals"), ""]
    return "\n".join(lines)


def charts(out: Path, run: Report) -> list[str]:
    """PNG charts in ``out``; returns their names, or why there are none."""
    results, http = run.results, run.http
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["matplotlib not installed: no charts"]
    names = [n for n in _names(results) if n != "aiopg" and not n.startswith("pgbench")]
    loops = sorted({lk for lk, _, _ in results})
    fig, axes = plt.subplots(len(loops), 1, figsize=(14, 4.2 * len(loops)), squeeze=False)
    for ax, loop in zip(axes[:, 0], loops, strict=True):
        keys = _cells(results, loop)
        width = 0.8 / max(len(names), 1)
        top = 1.0
        for i, name in enumerate(names):
            values = [_ratio(results, loop, k, name) or 0.0 for k in keys]
            top = max(top, *values)
            ax.bar([x + i * width for x in range(len(keys))], values, width, label=name)
        ax.set_ylim(0, top * 1.3)
        for x, key in enumerate(keys):  # the C client, as a number: its bar would dwarf the rest
            limit = _ratio(results, loop, key, "pgbench")
            if limit is not None:
                ax.annotate(
                    f"pgbench {limit:.1f}x",
                    (x + width * (len(names) - 1) / 2, top * 1.2),
                    ha="center",
                    fontsize=7,
                )
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(keys))])
        ax.set_xticklabels(keys, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("ops/s ratio to aiopg.Pool")
        ax.set_title(f"{loop}: throughput relative to raw aiopg (1.0 line); higher is faster")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    fig.suptitle(run.machine["cpu"], fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    made = ["throughput.png"]
    if http:
        fig, ax = plt.subplots(figsize=(9, 4))
        labels = [f"{r['loop']}\n{r['app']}\nc={r['connections']}" for r in http]
        xs = range(len(http))
        ax.bar(xs, [r["nodb_rate"] for r in http], 0.28, label="no database (ceiling)")
        ax.bar([x + 0.28 for x in xs], [r["db_rate"] for r in http], 0.28, label="one SELECT")
        ax.bar(
            [x + 0.56 for x in xs],
            [r.get("bare_rate", 0.0) for r in http],
            0.28,
            label="one SELECT, bare psycopg2 (floor)",
        )
        ax.set_xticks([x + 0.28 for x in range(len(http))])
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("requests/s")
        ax.set_title("HTTP end to end: sprockets.http app, one process")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "http.png", dpi=110)
        plt.close(fig)
        made.append("http.png")
    return made


def write(out: Path, run: Report) -> None:
    """results.md, results.json and the charts, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out, run)  # first: the rounds survive a failure below
    made = charts(out, run)
    pictures = [m for m in made if m.endswith(".png")]
    run.notes += [m for m in made if m not in pictures]
    text = markdown(run) + "".join(f"\n![{p}]({p})\n" for p in pictures)
    (out / "results.md").write_text(text)


def _write_json(out: Path, run: Report) -> None:
    raw = {
        "mode": run.mode_name,
        "machine": run.machine,
        "postgres": run.postgres,
        "command": run.command,
        "seconds": run.took,
        "runs": [
            {"loop": lk, "cell": key, "contender": name, "rounds": [vars(r) for r in runs]}
            for (lk, key, name), runs in run.results.items()
        ],
        "http": run.http,
    }
    (out / "results.json").write_text(json.dumps(raw, indent=1))
