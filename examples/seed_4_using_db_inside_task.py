"""Port of lilota's "4-using-db-inside-task" example: a task with its own database connection.

The task runs in a pool process, so it opens (and closes) its own connection there: connections
cannot be shared across processes. Here it is a plain ``sqlite3`` connection to an application
database, ``./seed_4_app.db``, separate from the task store ``./seed_4.db``. The task inserts a row
and returns what it wrote; the script then reads the row back through a connection of its own.

    python examples/seed_4_using_db_inside_task.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path

from litetask_async import LiteTask, TaskStatus
from litetask_async.worker import Worker

DB_FILE = "seed_4.db"  # litetask's own tables
APP_DB_FILE = "seed_4_app.db"  # the application's data, touched only by the task
app = LiteTask(f"sqlite:///{DB_FILE}")


@app.task(name="safe_db_task")
def safe_db_task(params: dict[str, str], db_path: str) -> dict[str, int | str]:
    """Open a connection inside the task, insert a value, return the row and the row count."""
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as conn:
        with conn:  # one transaction, committed on leaving the block
            conn.execute("CREATE TABLE IF NOT EXISTS test_table "
                         "(id INTEGER PRIMARY KEY, value TEXT NOT NULL, pid INTEGER NOT NULL)")
            cur = conn.execute("INSERT INTO test_table (value, pid) VALUES (?, ?)",
                               (params["value"], os.getpid()))
            row_id = cur.lastrowid
        (count,) = conn.execute("SELECT count(*) FROM test_table").fetchone()
    assert row_id is not None
    return {"id": row_id, "value": params["value"], "pid": os.getpid(), "count": count}


async def main() -> None:
    app_db = str(Path(APP_DB_FILE).resolve())  # absolute: the task may run with another cwd
    worker = Worker(app, install_signal_handlers=False)
    running = asyncio.create_task(worker.run())
    try:
        task_id = await safe_db_task.adelay({"value": "123"}, app_db)
        record = await app.wait(task_id, timeout=30)
    finally:
        worker.stop()
        await running
        await app.aclose()
    if record.status is not TaskStatus.COMPLETED:
        raise SystemExit(f"task ended {record.status}: {record.error}")
    print(f"task result: {record.result}")

    # Check what the task wrote, from this process.
    with contextlib.closing(sqlite3.connect(app_db)) as conn:
        row = conn.execute("SELECT id, value, pid FROM test_table WHERE id = ?",
                           (record.result["id"],)).fetchone()
    print(f"row in {APP_DB_FILE}: id={row[0]} value={row[1]!r} written by process {row[2]} "
          f"(this script is process {os.getpid()})")


if __name__ == "__main__":
    for name in (DB_FILE, APP_DB_FILE):  # start from empty databases
        for suffix in ("", "-wal", "-shm"):
            Path(name + suffix).unlink(missing_ok=True)
    asyncio.run(main())
