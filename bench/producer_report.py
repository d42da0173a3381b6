"""W6's figures: what one variant of bench.producer measured, and the table rows made of them.

Every ratio divides two variants of the same run (most of them interleaved round by round, see
bench.producer), so that the shared machine's drift falls on both sides alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.report import Row
from bench.suite import Suite

ROUNDS = 5  # of the variants compared with each other (a, b and its kin; c, n, z, ...), interleaved


@dataclass(frozen=True)
class Variant:
    """What one variant measured."""

    commits_per_s: float
    notifies: int
    commits: int = 0
    delivered: int = 0
    hot_table_mb: float = 0.0
    dead_rows: int = 0
    live_rows: int = 0
    claim_ms: float | None = None
    trigger_us: float = 0.0  # server time per commit in the app's trigger function itself
    emit_us: float = 0.0  # ... and in webhooks.emit
    round_rates: tuple[float, ...] = ()  # commits/s of each round, in order (interleaved variants)


def report(suite: Suite, connections: int, **v: Variant) -> None:
    """W6's rows in the suite's table, from the variants ``w6_producer_cost`` measured."""
    a, b, b_bare, c, n, z = v["a"], v["b"], v["b_bare"], v["c"], v["n"], v["z"]
    b_empty = v["b_empty"]
    z0, c_stopped, c_full, c_open = v["z0"], v["c_stopped"], v["c_full"], v["c_open"]
    lean, lean_busy = v["lean"], v["lean_busy"]
    cps = "commits/s"

    def vs_a(label: str, x: Variant, target: str = "", ok: bool | None = None) -> Row:
        return Row(label, x.commits_per_s, cps, x.commits_per_s / a.commits_per_s, "W6 a",
                   target, ok)  # fmt: skip

    b_a = b.commits_per_s / a.commits_per_s
    # a and b ran back to back in each round, so each round's b/a is a paired comparison; their
    # spread is the noise that the median round's b/a carries on this shared machine.
    b_a_rounds = [bx / ax for bx, ax in zip(b.round_rates, a.round_rates, strict=True)]
    c_z = c.commits_per_s / z.commits_per_s
    c_n = c.commits_per_s / n.commits_per_s
    stopped_c = c_stopped.commits_per_s / c.commits_per_s
    claim_ratio = (
        c_open.claim_ms / c_full.claim_ms
        if c_open.claim_ms is not None and c_full.claim_ms
        else None
    )
    rounds = f"{ROUNDS} rounds"
    whole = f"{c_full.commits:,} commits"

    suite.add(
        vs_a(f"W6 a: no trigger ({connections} connections)", a),
        vs_a("W6 b: trigger, no subscriber", b, "ratio >= 0.80", b_a >= 0.80),
        Row(f"W6   b / a in each of the {ROUNDS} rounds: lowest", min(b_a_rounds),
            f"highest {max(b_a_rounds):.2f}", decimals=2),
        Row("W6   b: server time in the trigger", b.trigger_us, "us/commit"),
        vs_a("W6 b, no guard: emit without webhooks.subscribed", b_bare),
        Row("W6   b, no guard: server time in the trigger", b_bare.trigger_us, "us/commit"),
        Row("W6   b, no guard: server time in webhooks.emit", b_bare.emit_us, "us/commit"),
        vs_a("W6 b, empty trigger: fires, does nothing (the floor)", b_empty),
        Row("W6   b / b, empty trigger", b.commits_per_s / b_empty.commits_per_s, "",
            b.commits_per_s / b_empty.commits_per_s, "W6 b, empty trigger", decimals=2),
        vs_a("W6 c: trigger, subscribed, engine busy", c),
        Row("W6   c: server time in the trigger", c.trigger_us, "us/commit"),
        Row("W6   c: server time in webhooks.emit", c.emit_us, "us/commit"),
        Row("W6   c / z", c_z, "", c_z, "W6 z", "ratio >= 0.90", c_z >= 0.90, decimals=2),
        Row("W6   c / n", c_n, "", c_n, "W6 n", "ratio >= 2", c_n >= 2.0, decimals=2),
        Row(f"W6   NOTIFYs the app sent in c ({rounds})", c.notifies,
            f"of {c.commits:,} commits", decimals=0),
        Row(f"W6   delivered by the engine in c ({rounds})", c.delivered, "deliveries",
            decimals=0),
        vs_a("W6 n: NOTIFY in every transaction", n),
        Row(f"W6   NOTIFYs the app sent in n ({rounds})", n.notifies,
            f"of {n.commits:,} commits", decimals=0),
        vs_a("W6 z: no NOTIFY, engine busy", z),
        Row(f"W6   NOTIFYs the app sent in z ({rounds})", z.notifies, "", target="= 0",
            ok=z.notifies == 0, decimals=0),
        vs_a("W6 z, no engine (engine's CPU share)", z0),
        Row("W6 c, engine stopped (the mark a dead engine leaves)", c_stopped.commits_per_s, cps,
            stopped_c, "W6 c", "ratio >= 0.95", stopped_c >= 0.95),
        Row("W6   c, engine stopped / z, no engine", c_stopped.commits_per_s / z0.commits_per_s,
            "", c_stopped.commits_per_s / z0.commits_per_s, "W6 z, no engine", decimals=2),
        Row(f"W6   NOTIFYs the app sent in c, engine stopped ({rounds})", c_stopped.notifies,
            f"of {c_stopped.commits:,} commits", decimals=0),
        vs_a("W6 lean outbox: probe + 2 inserts, subscribed, no engine", lean),
        Row("W6   lean outbox: server time in the trigger", lean.trigger_us, "us/commit"),
        Row("W6   c, engine stopped / lean outbox", c_stopped.commits_per_s, cps,
            c_stopped.commits_per_s / lean.commits_per_s, "W6 lean outbox", "ratio >= 0.85",
            c_stopped.commits_per_s / lean.commits_per_s >= 0.85),
        Row("W6   c (engine busy) / lean outbox (no engine)", c.commits_per_s, cps,
            c.commits_per_s / lean.commits_per_s, "W6 lean outbox", "ratio >= 0.85",
            c.commits_per_s / lean.commits_per_s >= 0.85),
        vs_a("W6 lean outbox, relay busy: bench.lean_relay delivering its rows", lean_busy),
        Row(f"W6   delivered by the relay ({rounds})", lean_busy.delivered, "deliveries",
            decimals=0),
        Row("W6   c (engine busy) / lean outbox, relay busy", c.commits_per_s, cps,
            c.commits_per_s / lean_busy.commits_per_s, "W6 lean outbox, relay busy",
            "ratio >= 0.85", c.commits_per_s / lean_busy.commits_per_s >= 0.85),
        Row("W6   c, engine stopped: server time in the trigger", c_stopped.trigger_us,
            "us/commit"),
        Row("W6   c, engine stopped: server time in webhooks.emit", c_stopped.emit_us,
            "us/commit"),
        vs_a(f"W6 c, whole time in one run ({whole})", c_full),
        Row("W6 c, open transaction", c_open.commits_per_s, cps,
            c_open.commits_per_s / c_full.commits_per_s, "W6 c whole"),
        Row("W6   hot table in c (heap + indexes)", c_full.hot_table_mb, "MB"),
        Row("W6   hot table, open transaction", c_open.hot_table_mb, "MB",
            c_open.hot_table_mb / c_full.hot_table_mb if c_full.hot_table_mb else None,
            "W6 c whole"),
        Row("W6   dead / live rows in c", c_full.dead_rows, f"/ {c_full.live_rows:,} live",
            decimals=0),
        Row("W6   dead / live rows, open transaction", c_open.dead_rows,
            f"/ {c_open.live_rows:,} live", decimals=0),
        Row("W6   claim_v2 mean in c", c_full.claim_ms or 0.0, "ms", decimals=2),
        Row("W6   claim_v2 mean, open transaction", c_open.claim_ms or 0.0, "ms", claim_ratio,
            "W6 c whole" if claim_ratio else "", decimals=2),
    )  # fmt: skip
