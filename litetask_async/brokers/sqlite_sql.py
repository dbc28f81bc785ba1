"""Every SQL statement of the SQLite broker, in one place.

Times are REAL seconds since the epoch, passed in by the caller (one SQLite file lives on one
machine, so there is one clock). Task ids are made in time order (``tasks.new_ids``), so the id
is also the enqueue order: claim ties in priority and due time, and list order, go by id.
"""

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)

CREATE_META = """
CREATE TABLE IF NOT EXISTS litetask_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
"""

SET_VERSION = """
INSERT INTO litetask_meta (key, value) VALUES ('schema_version', ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""

#: The finished states, spelled as the partial indexes spell them: a query uses such an index
#: only if its WHERE has this very term. Not ``status IN (...)``: SQLite builds the IN list's
#: lookup table each time it evaluates it, for each such index, on every insert and update
#: (three indexes: 3 of a lone enqueue's 26 us).
FINAL = "(status = 'completed' OR status = 'failed' OR status = 'cancelled')"

# The task table's columns after the id (migration 9 rebuilds the table with them). The CHECK
# is spelled with OR for the reason given at FINAL.
_TASK_COLUMNS = """
            name TEXT NOT NULL,
            queue TEXT NOT NULL DEFAULT 'default',
            priority INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status = 'pending' OR status = 'running' OR status = 'completed' OR status = 'failed'
                       OR status = 'cancelled'),
            progress INTEGER NOT NULL DEFAULT 0,
            args TEXT NOT NULL,
            kwargs TEXT NOT NULL,
            result TEXT,
            error TEXT,
            pid INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL DEFAULT 1,
            rescues INTEGER NOT NULL DEFAULT 0,
            worker_id TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            run_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            heartbeat_at REAL,
            errors TEXT NOT NULL DEFAULT '[]',
            unique_key TEXT,
            max_concurrency INTEGER,
            status_message TEXT,
            trace_context TEXT"""
_TASK_COLUMN_NAMES = ", ".join(line.split()[0] for line in _TASK_COLUMNS.strip().splitlines()
                               if not line.strip().startswith(("CHECK", "OR ")))

# Migration n brings the schema from version n-1 to n. Never edit a released one; add the next.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE litetask_tasks (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            queue TEXT NOT NULL DEFAULT 'default',
            priority INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
            progress INTEGER NOT NULL DEFAULT 0,
            args TEXT NOT NULL,
            kwargs TEXT NOT NULL,
            result TEXT,
            error TEXT,
            pid INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL DEFAULT 1,
            rescues INTEGER NOT NULL DEFAULT 0,
            worker_id TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            run_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            heartbeat_at REAL
        )
        """,
        # The claim reads this index only: pending rows in claim order.
        """
        CREATE INDEX litetask_tasks_pending
            ON litetask_tasks (priority DESC, seq) WHERE status = 'pending'
        """,
        # The rescuer reads this one: running rows by heartbeat age.
        """
        CREATE INDEX litetask_tasks_running
            ON litetask_tasks (heartbeat_at) WHERE status = 'running'
        """,
    ),
    # Every attempt's error, oldest first (``error`` keeps the last one).
    2: ("ALTER TABLE litetask_tasks ADD COLUMN errors TEXT NOT NULL DEFAULT '[]'",),
    # Scheduling: unique keys, concurrency limits, delayed tasks, periodic ticks, retention.
    3: (
        "ALTER TABLE litetask_tasks ADD COLUMN unique_key TEXT",
        "ALTER TABLE litetask_tasks ADD COLUMN max_concurrency INTEGER",
        # At most one pending or running task per key; the database enforces it.
        """
        CREATE UNIQUE INDEX litetask_tasks_unique ON litetask_tasks (unique_key)
            WHERE unique_key IS NOT NULL AND status IN ('pending', 'running')
        """,
        # Due-ness: the claim and the "when is the next task due" query read this one, so that
        # future-dated tasks cost nothing until they are due.
        "CREATE INDEX litetask_tasks_due ON litetask_tasks (run_at) WHERE status = 'pending'",
        """
        CREATE INDEX litetask_tasks_limited ON litetask_tasks (name)
            WHERE status = 'running' AND max_concurrency IS NOT NULL
        """,
        """
        CREATE INDEX litetask_tasks_finished ON litetask_tasks (finished_at)
            WHERE status IN ('completed', 'failed', 'cancelled')
        """,
        "CREATE TABLE litetask_schedules (name TEXT PRIMARY KEY, last_tick REAL NOT NULL)",
    ),
    # Operating it: status lines, task logs, live workers, listing by status/name/queue.
    4: (
        "ALTER TABLE litetask_tasks ADD COLUMN status_message TEXT",
        """
        CREATE TABLE litetask_logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            at REAL NOT NULL,
            level TEXT NOT NULL,
            message TEXT NOT NULL
        )
        """,
        "CREATE INDEX litetask_logs_task ON litetask_logs (task_id, id)",
        """
        CREATE TABLE litetask_workers (
            id TEXT PRIMARY KEY,
            hostname TEXT NOT NULL,
            pid INTEGER NOT NULL,
            queues TEXT,
            concurrency INTEGER NOT NULL,
            running INTEGER NOT NULL DEFAULT 0,
            started_at REAL NOT NULL,
            last_heartbeat REAL NOT NULL
        )
        """,
        "CREATE INDEX litetask_tasks_status_seq ON litetask_tasks (status, seq)",
        "CREATE INDEX litetask_tasks_name_seq ON litetask_tasks (name, seq)",
        "CREATE INDEX litetask_tasks_queue_seq ON litetask_tasks (queue, seq)",
    ),
    5: (
        # Claim order is priority, then due time, then enqueue order, and the index says so
        # (see the PostgreSQL migration 5 for the measurement behind it).
        "DROP INDEX litetask_tasks_pending",
        "CREATE INDEX litetask_tasks_pending ON litetask_tasks (priority DESC, run_at, seq) WHERE status = 'pending'",
    ),
    # status changes on every transition, so (status, seq) was rewritten by every claim and every
    # finish: about half of their cost. Listing by status reads the partial pending/running
    # indexes, or walks seq for the final states (which are most rows).
    6: ("DROP INDEX IF EXISTS litetask_tasks_status_seq",),
    # The W3C trace context of the span that enqueued the task (OpenTelemetry, optional).
    7: ("ALTER TABLE litetask_tasks ADD COLUMN trace_context TEXT",),
    # Every enqueue wrote the due index too, and every claim deleted from it: a sixth of a
    # one-by-one enqueue (benchmarks/README.md). "When is the next task due" walks the pending
    # index once per priority instead (EARLIEST_PENDING); limited tasks keep a small one.
    8: (
        "DROP INDEX litetask_tasks_due",
        """
        CREATE INDEX litetask_tasks_limited_due ON litetask_tasks (run_at)
            WHERE status = 'pending' AND max_concurrency IS NOT NULL
        """,
    ),
    # The table is keyed by the task id (WITHOUT ROWID) and the name/queue listing indexes hold
    # finished tasks only: a one-by-one enqueue dirtied six pages per commit (row, AUTOINCREMENT
    # counter, id index, pending index, (name, seq), (queue, seq)) and now dirties two (row,
    # pending index), 45 -> 22 us per raw insert transaction (benchmarks/README.md). Ids are
    # time-ordered and increase within a process, so the id takes seq's place as enqueue order.
    9: (
        f"""
        CREATE TABLE litetask_tasks_new (
            id TEXT PRIMARY KEY,
            {_TASK_COLUMNS}
        ) WITHOUT ROWID
        """,
        f"""
        INSERT INTO litetask_tasks_new (id, {_TASK_COLUMN_NAMES})
        SELECT id, {_TASK_COLUMN_NAMES} FROM litetask_tasks
        """,
        "DROP TABLE litetask_tasks",
        "ALTER TABLE litetask_tasks_new RENAME TO litetask_tasks",
        """
        CREATE INDEX litetask_tasks_pending
            ON litetask_tasks (priority DESC, run_at, id) WHERE status = 'pending'
        """,
        "CREATE INDEX litetask_tasks_running ON litetask_tasks (heartbeat_at) WHERE status = 'running'",
        """
        CREATE UNIQUE INDEX litetask_tasks_unique ON litetask_tasks (unique_key)
            WHERE unique_key IS NOT NULL AND status IN ('pending', 'running')
        """,
        """
        CREATE INDEX litetask_tasks_limited ON litetask_tasks (name)
            WHERE status = 'running' AND max_concurrency IS NOT NULL
        """,
        """
        CREATE INDEX litetask_tasks_limited_due ON litetask_tasks (run_at)
            WHERE status = 'pending' AND max_concurrency IS NOT NULL
        """,
        f"CREATE INDEX litetask_tasks_finished ON litetask_tasks (finished_at) WHERE {FINAL}",
        f"CREATE INDEX litetask_tasks_finished_name ON litetask_tasks (name, id) WHERE {FINAL}",
        f"CREATE INDEX litetask_tasks_finished_queue ON litetask_tasks (queue, id) WHERE {FINAL}",
    ),
}

LATEST_VERSION = max(MIGRATIONS)

GET_SCHEMA_VERSION = "SELECT value FROM litetask_meta WHERE key = 'schema_version'"

# For tasks without a unique key (no conflict to handle: the upsert clause costs a micro-second).
INSERT_PLAIN = """
INSERT INTO litetask_tasks
    (id, name, queue, priority, args, kwargs, max_attempts, created_at, run_at, unique_key, max_concurrency,
     trace_context)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
INSERT = INSERT_PLAIN + """
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('pending', 'running') DO NOTHING
"""

ACTIVE_BY_UNIQUE_KEY = """
SELECT id FROM litetask_tasks WHERE unique_key = ? AND status IN ('pending', 'running')
"""

# {queues} is "" or "AND queue IN (?, ...)". Tasks without a concurrency limit.
CLAIM = """
UPDATE litetask_tasks
SET status = 'running', worker_id = ?, pid = ?, attempts = attempts + 1,
    started_at = ?, heartbeat_at = ?, progress = 0
WHERE id IN (
    SELECT id FROM litetask_tasks
    WHERE status = 'pending' AND run_at <= ? AND max_concurrency IS NULL {queues}
    ORDER BY priority DESC, run_at, id
    LIMIT ?
)
RETURNING id, name, args, kwargs, attempts, max_attempts, queue, trace_context
"""

# Tasks with a concurrency limit: the k-th pending task of a name is claimable while
# running + k <= limit. INDEXED BY: left to itself the planner walked (name, seq), every task
# ever stored, to save the window's sort (schema 8). Runs in the writer's immediate transaction, so claims of all processes
# are serialised and the count cannot be raced.
CLAIM_LIMITED = """
WITH running AS (
    SELECT name, count(*) AS n FROM litetask_tasks
    WHERE status = 'running' AND max_concurrency IS NOT NULL GROUP BY name
), ranked AS (
    SELECT t.id, t.priority, t.run_at, t.max_concurrency, coalesce(r.n, 0) AS n,
           row_number() OVER (PARTITION BY t.name ORDER BY t.priority DESC, t.run_at, t.id) AS k
    FROM litetask_tasks t INDEXED BY litetask_tasks_limited_due LEFT JOIN running r ON r.name = t.name
    WHERE t.status = 'pending' AND t.run_at <= ? AND t.max_concurrency IS NOT NULL {queues}
)
UPDATE litetask_tasks
SET status = 'running', worker_id = ?, pid = ?, attempts = attempts + 1,
    started_at = ?, heartbeat_at = ?, progress = 0
WHERE id IN (SELECT id FROM ranked WHERE n + k <= max_concurrency ORDER BY priority DESC, run_at, id LIMIT ?)
RETURNING id, name, args, kwargs, attempts, max_attempts, queue, trace_context
"""

# The earliest run_at of the pending tasks ({queues} as in CLAIM): the first entry of each
# priority in the pending index (a loose scan, one probe per distinct priority).
EARLIEST_PENDING = """
WITH RECURSIVE pr(p) AS (
    SELECT (SELECT priority FROM litetask_tasks WHERE status = 'pending' ORDER BY priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT priority FROM litetask_tasks WHERE status = 'pending' AND priority < pr.p
            ORDER BY priority DESC LIMIT 1)
    FROM pr WHERE pr.p IS NOT NULL
)
SELECT min((SELECT run_at FROM litetask_tasks WHERE status = 'pending' AND priority = pr.p {queues}
            ORDER BY priority DESC, run_at LIMIT 1))
FROM pr WHERE pr.p IS NOT NULL
"""

GET_TICK = "SELECT last_tick FROM litetask_schedules WHERE name = ?"
INSERT_TICK = "INSERT INTO litetask_schedules (name, last_tick) VALUES (?, ?)"
UPDATE_TICK = "UPDATE litetask_schedules SET last_tick = ? WHERE name = ?"

PURGE_PICK = f"""
SELECT id FROM litetask_tasks
WHERE {FINAL} AND finished_at < ?
LIMIT ?
"""
PURGE_LOGS = "DELETE FROM litetask_logs WHERE task_id = ?"
PURGE_TASK = "DELETE FROM litetask_tasks WHERE id = ?"

# Parameters: status, result, error, now, run_at, max_attempts increment, progress if
# completed, pid, then the guard: id, worker_id, attempt. A task asked to cancel that would go
# back to pending (retry, release) ends cancelled instead.
FINISH = """
UPDATE litetask_tasks
SET status = CASE WHEN ?1 = 'pending' AND cancel_requested THEN 'cancelled' ELSE ?1 END,
    result = coalesce(?2, result),
    error = coalesce(?3, error),
    errors = CASE WHEN ?3 IS NULL THEN errors ELSE json_insert(errors, '$[#]', json(?3)) END,
    finished_at = CASE WHEN ?1 = 'pending' AND NOT cancel_requested THEN NULL ELSE ?4 END,
    run_at = coalesce(?5, run_at),
    max_attempts = max_attempts + CASE WHEN cancel_requested THEN 0 ELSE ?6 END,
    progress = coalesce(?7, progress),
    pid = coalesce(?8, pid),
    worker_id = CASE WHEN ?1 = 'pending' AND NOT cancel_requested THEN NULL ELSE worker_id END,
    heartbeat_at = CASE WHEN ?1 = 'pending' AND NOT cancel_requested THEN NULL ELSE heartbeat_at END,
    cancel_requested = 0
WHERE id = ?9 AND status = 'running' AND worker_id = ?10 AND attempts = ?11
"""

UPDATE_PROGRESS = """
UPDATE litetask_tasks
SET progress = coalesce(?, progress), pid = coalesce(?, pid), status_message = coalesce(?, status_message),
    started_at = coalesce(?, started_at)
WHERE id = ? AND status = 'running' AND worker_id = ?
"""

HEARTBEAT = """
UPDATE litetask_tasks SET heartbeat_at = ?
WHERE id = ? AND status = 'running' AND worker_id = ?
RETURNING id
"""

# Parameters: now, max_rescues, lost-worker error, cutoff.
REQUEUE_STALLED = """
UPDATE litetask_tasks
SET status = CASE WHEN cancel_requested THEN 'cancelled' WHEN rescues < ?2 THEN 'pending' ELSE 'failed' END,
    max_attempts = max_attempts + CASE WHEN rescues < ?2 AND NOT cancel_requested THEN 1 ELSE 0 END,
    error = json_set(?3, '$.attempt', attempts),
    errors = json_insert(errors, '$[#]', json(json_set(?3, '$.attempt', attempts))),
    finished_at = CASE WHEN rescues < ?2 AND NOT cancel_requested THEN NULL ELSE ?1 END,
    run_at = ?1,
    rescues = rescues + 1,
    worker_id = NULL,
    heartbeat_at = NULL,
    cancel_requested = 0
WHERE status = 'running' AND heartbeat_at < ?4
RETURNING id
"""

CANCEL_PENDING = """
UPDATE litetask_tasks SET status = 'cancelled', finished_at = ?
WHERE id = ? AND status = 'pending'
"""

CANCEL_RUNNING = """
UPDATE litetask_tasks SET cancel_requested = 1 WHERE id = ? AND status = 'running'
"""

EXISTS = "SELECT 1 FROM litetask_tasks WHERE id = ?"

SELECT_ONE = "SELECT * FROM litetask_tasks WHERE id = ?"

CANCEL_REQUESTED = "SELECT id FROM litetask_tasks WHERE cancel_requested = 1 AND id IN ({marks})"

DATA_VERSION = "PRAGMA data_version"

# {where} is built from optional filters; keyset pagination on the id, newest first.
LIST = """
SELECT * FROM litetask_tasks
WHERE 1 = 1 {where}
ORDER BY id DESC
LIMIT ?
"""

# A listing filtered by name or queue, as the union of its parts by state ({parts}: LIST_PARTS
# joined by UNION ALL): the finished tasks through their (name, id) or (queue, id) index, the
# pending and running ones through their partial indexes, which hold as many entries as tasks
# are waiting or running (left to itself the planner scans the whole table for them).
LIST_UNION = """
SELECT * FROM ({parts})
ORDER BY id DESC
LIMIT ?
"""
_LIST_PART = "SELECT * FROM (SELECT * FROM litetask_tasks {state} {{where}} ORDER BY id DESC LIMIT ?)"
LIST_PARTS = {
    "final": _LIST_PART.format(state=f"WHERE {FINAL}"),
    "one final": _LIST_PART.format(state=f"WHERE {FINAL} AND status = ?"),
    "pending": _LIST_PART.format(state="INDEXED BY litetask_tasks_pending WHERE status = 'pending'"),
    "running": _LIST_PART.format(state="INDEXED BY litetask_tasks_running WHERE status = 'running'"),
}

RETRY = """
UPDATE litetask_tasks
SET status = 'pending', run_at = ?, finished_at = NULL, worker_id = NULL, heartbeat_at = NULL,
    cancel_requested = 0, max_attempts = attempts + 1, progress = 0, status_message = NULL
WHERE id = ? AND status IN ('failed', 'cancelled')
"""

STATS_COUNTS = "SELECT queue, status, count(*) FROM litetask_tasks GROUP BY queue, status"
FINISHED_SINCE = """
SELECT status, count(*) FROM litetask_tasks
WHERE status IN ('completed', 'failed') AND finished_at >= ? GROUP BY status
"""

UPSERT_WORKER = """
INSERT INTO litetask_workers (id, hostname, pid, queues, concurrency, running, started_at, last_heartbeat)
VALUES (?, ?, ?, ?, ?, 0, ?, ?)
ON CONFLICT (id) DO UPDATE SET last_heartbeat = excluded.last_heartbeat
"""
WORKER_HEARTBEAT = "UPDATE litetask_workers SET running = ?, last_heartbeat = ? WHERE id = ?"
DELETE_WORKER = "DELETE FROM litetask_workers WHERE id = ?"
# workers gone for long (killed, never unregistered) are forgotten
PRUNE_WORKERS = "DELETE FROM litetask_workers WHERE last_heartbeat < ?"
LIVE_WORKERS = "SELECT * FROM litetask_workers WHERE last_heartbeat >= ? ORDER BY started_at"

INSERT_LOG = "INSERT INTO litetask_logs (task_id, attempt, at, level, message) VALUES (?, ?, ?, ?, ?)"
TASK_LOGS = "SELECT * FROM litetask_logs WHERE task_id = ? ORDER BY id LIMIT ?"

NAME_COUNTS = """
SELECT name, status, count(*), sum(attempts > 1) FROM litetask_tasks GROUP BY name, status
"""
DURATIONS = """
SELECT name, {bucket} AS b, count(*), sum(finished_at - started_at) FROM litetask_tasks
WHERE status IN ('completed', 'failed') AND started_at IS NOT NULL GROUP BY name, b
"""
THROUGHPUT = """
SELECT CAST(finished_at / ?1 AS INTEGER) * ?1 AS b, sum(status = 'completed'), sum(status = 'failed')
FROM litetask_tasks WHERE status IN ('completed', 'failed') AND finished_at >= ?2
GROUP BY b ORDER BY b
"""
