"""The markdown report, rendered from the results JSON (so any saved run can be redrawn),
and the pass/fail evaluation of the targets."""

from __future__ import annotations

from typing import Any

from .markdown import num as _num
from .markdown import table as _table
from .markdown import verdict as _verdict
from .primitives.report import render_primitives
from .settings import DISTURBED_SHARE


def _per_message_us(seconds: float | None, messages: int) -> str:
    return "-" if seconds is None else f"{seconds / messages * 1e6:,.0f}"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it is met (None: not measured)."""
    found: list[dict[str, Any]] = []
    consumer = results.get("consumer")
    if consumer:
        for item in consumer["ratios"]:
            value = item["value"]
            found.append(
                {
                    "target": f"{item['name']} >= {item['target']:g}",
                    "measured": _num(value, 2),
                    "ok": None if value is None else value >= item["target"],
                }
            )
    primitives = results.get("primitives")
    if primitives:
        found += primitives.get("targets", [])
    overhead = results.get("overhead")
    if overhead:
        for item in overhead["comparisons"]:
            value = item["ratio"]
            found.append(
                {
                    "target": f"DbSession / AsyncConnection time, {item['workers']} worker(s) "
                    f"<= {item['target']:.2f}",
                    "measured": _num(value, 3),
                    "ok": None if value is None else value <= item["target"],
                }
            )
    memory = results.get("memory")
    if memory:
        run = memory["run"]
        peak = run["peak_rss_mb"] if run["ok"] else None
        found.append(
            {
                "target": f"peak RSS, {memory['backlog']:,}-message backlog < "
                f"{memory['target_mb']:g} MB",
                "measured": f"{_num(peak, 1)} MB",
                "ok": None if peak is None else peak < memory["target_mb"],
            }
        )
    return found


def _environment(env: dict[str, Any]) -> list[str]:
    m, v, db, rd = env["machine"], env["versions"], env["database"], env["redis"]
    return [
        f"- Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['memory_gb']} GB "
        f"RAM, Linux {m['kernel']}; load average at start {' / '.join(m['load_average'])}",
        f"- MariaDB/MySQL {db.get('version')}: innodb_flush_log_at_trx_commit="
        f"{db.get('innodb_flush_log_at_trx_commit')}, sync_binlog={db.get('sync_binlog')}, "
        f"log_bin={db.get('log_bin')}, innodb_buffer_pool_size={db.get('innodb_buffer_pool_size')}",
        f"- Redis {rd['version']} (AOF {'on' if rd['aof_enabled'] else 'off'})",
        f"- Python {v['python']}; safesync_async {v['safesync_async (imported)']} "
        f"(git {env['git_revision']}); SQLAlchemy {v['sqlalchemy']}, asyncmy {v['asyncmy']}, "
        f"asyncpg {v.get('asyncpg')}, "
        f"redis-py {v['redis']}, hiredis {v['hiredis']}; seed coti-safesync-framework "
        f"{v['coti-safesync-framework']} with PyMySQL {v['pymysql']}",
        "- All servers and benchmark processes share the same machine.",
    ]


def _consumer(section: dict[str, Any], cpus: int) -> list[str]:
    n = section["messages"]
    summary = section["summary"]
    lines = [
        f"## Consumer end-to-end ({n:,} messages per run, {section['reps']} interleaved "
        "repetitions)",
        "",
    ]
    lines += _table(
        ["Variant", "msg/s (median)", "min to max", "verified runs", "disturbed runs"],
        [
            [
                s["label"],
                _num(s["median_msg_per_s"]),
                f"{_num(s['min_msg_per_s'])} to {_num(s['max_msg_per_s'])}",
                f"{s['ok_runs']}/{s['runs']}",
                str(s["disturbed_runs"]),
            ]
            for s in summary
        ],
    )
    lines += [
        "",
        f"A run is *disturbed* when CPU not used by its workers or the servers exceeded "
        f"{DISTURBED_SHARE:.0%} of the machine during it (other processes competed); its "
        "figures are still counted.",
    ]
    lines += ["", "Ratios of median throughput:", ""]
    lines += _table(
        ["Ratio", "Measured", "Target", "Result"],
        [
            [
                r["name"],
                _num(r["value"], 2),
                f">= {r['target']:g}",
                _verdict(None if r["value"] is None else r["value"] >= r["target"]),
            ]
            for r in section["ratios"]
        ],
    )
    lines += [
        "",
        "### Where the CPU goes (medians per run)",
        "",
        "µs/msg is CPU time per message. Other CPU is what the rest of the host used",
        "meanwhile (kernel, the harness, other processes); host busy is the share of all",
        "CPUs busy during the run. Statements/msg counts what the server received per",
        "message (UPDATE + COMMIT is 2; more means extra statements, re-runs after a",
        "rollback, or other clients of a shared server; deferred writes count one each",
        "although they share a round trip); fsyncs/msg counts InnoDB data file fsyncs per",
        "message (group commit shares one among many commits).",
        "",
    ]
    rows = []
    for s in summary:
        wall, busy = s["median_wall_s"], s["median_host_busy_s"]
        if busy is not None:
            # the runner's start-up and drain: outside the window that ``wall`` measures
            busy -= s.get("median_untimed_cpu_s") or 0.0
        rows.append(
            [
                s["label"],
                _num(s["median_worker_cpu_s"], 1),
                _per_message_us(s["median_worker_cpu_s"], n),
                _num(s["median_database_cpu_s"], 1),
                _per_message_us(s["median_database_cpu_s"], n),
                _num(s["median_redis_cpu_s"], 1),
                _num(s["median_other_cpu_s"], 1),
                "-" if not busy or not wall else f"{busy / (wall * cpus) * 100:.0f} %",
                _num(s["median_statements_per_msg"], 2),
                _num(s["median_fsyncs_per_msg"], 2),
            ]
        )
    header = [
        "Variant", "worker CPU s", "worker µs/msg", "mariadbd CPU s", "mariadbd µs/msg",
        "redis CPU s", "other CPU s", "host busy", "statements/msg", "fsyncs/msg",
    ]  # fmt: skip
    lines += _table(header, rows)
    return lines + _transaction_notes(summary, n)


def _transaction_notes(summary: list[dict[str, Any]], messages: int) -> list[str]:
    """Transactions per run of the safesync variants, where they tell something: batches
    (or messages) rolled back and handled again."""
    notes = []
    for s in summary:
        counters = s.get("median_counters") or {}
        committed = counters.get("transactions_committed")
        rolled_back = counters.get("transactions_rolled_back")
        if committed is None or not (rolled_back or s["batch_size"] > 1):
            continue
        notes.append(
            f"- {s['label']}: {committed:,.0f} transactions committed and {rolled_back:,.0f} "
            f"rolled back per run (median) for {messages:,} messages"
        )
    return ["", *notes] if notes else []


def _overhead(section: dict[str, Any]) -> list[str]:
    lines = [
        f"## DbSession overhead (SELECT by primary key + UPDATE + COMMIT, median of "
        f"{section['reps']} repetitions)",
        "",
    ]
    rows = [
        [
            str(c["workers"]),
            _num(c["us_per_op"]["DbSession"]),
            _num(c["us_per_op"]["AsyncConnection"]),
            _num(c["ratio"], 3),
            f"<= {c['target']:.2f}",
            _verdict(None if c["ratio"] is None else c["ratio"] <= c["target"] and c["ok"]),
            str(c.get("disturbed_runs", 0)),
        ]
        for c in section["comparisons"]
    ]
    header = [
        "Workers", "DbSession µs/op", "AsyncConnection µs/op", "Ratio", "Target", "Result",
        "disturbed runs",
    ]  # fmt: skip
    return lines + _table(header, rows)


def _memory(section: dict[str, Any]) -> list[str]:
    run = section["run"]
    peak = run["peak_rss_mb"]
    ok = None if peak is None else peak < section["target_mb"] and run["ok"]
    return [
        f"## Memory (one consumer process, concurrency 32, {section['backlog']:,}-message backlog)",
        "",
        *_table(
            ["msg/s", "RSS when ready MB", "Peak RSS (VmHWM) MB", "Target", "Result", "Verified"],
            [
                [
                    _num(run["msg_per_s"]),
                    _num(run["ready_rss_mb"], 1),
                    _num(peak, 1),
                    f"< {section['target_mb']:g} MB",
                    _verdict(ok),
                    "ok" if run["ok"] else "**FAILED**: " + "; ".join(run["problems"]),
                ]
            ],
        ),
    ]


def _failures(results: dict[str, Any]) -> list[str]:
    consumer = results.get("consumer") or {"runs": {}}
    failed = [
        f"- {key} rep {run['rep']}: {'; '.join(run['problems'])}"
        for key, runs in consumer["runs"].items()
        for run in runs
        if not run["ok"]
    ]
    failed += [
        f"- primitives {r['backend']} {r['shape']} {r['strategy']} {r['implementation']} "
        f"rep {r['rep']}: {'; '.join(r['problems'])}"
        for r in (results.get("primitives") or {}).get("runs", [])
        if not r["ok"]
    ]
    return ["## Failed runs", "", *failed] if failed else []


def render(results: dict[str, Any]) -> str:
    """The whole report as markdown."""
    env = results["environment"]
    cpus = env["machine"]["logical_cpus"] or 1
    lines = [f"# safesync_async benchmark, {results['started_at']}", ""]
    lines += [*_environment(env), f"- Command: `{results['command']}`", ""]
    if results.get("consumer"):
        lines += [*_consumer(results["consumer"], cpus), ""]
    if results.get("primitives"):
        lines += [*render_primitives(results["primitives"]), ""]
    if results.get("overhead"):
        lines += [*_overhead(results["overhead"]), ""]
    if results.get("memory"):
        lines += [*_memory(results["memory"]), ""]
    summary = results.get("targets") or []
    if summary:
        lines += ["## Targets", ""]
        lines += _table(
            ["Target", "Measured", "Result"],
            [[t["target"], t["measured"], _verdict(t["ok"])] for t in summary],
        )
        lines.append("")
    lines += _failures(results)
    return "\n".join(lines).rstrip() + "\n"
