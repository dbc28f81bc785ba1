"""Every SQL statement of the PostgreSQL broker, in one place.

Times come from the database's clock (``now()``), so clock skew between machines does not
matter. Statements use asyncpg's ``$n`` parameters; they run on the raw asyncpg connection
checked out of SQLAlchemy's pool. Batch statements take arrays and ``unnest`` them, so a batch
of any size is one round trip.
"""

CHANNEL = "litetask_tasks"

# Serialises concurrent migrations of one database (any 64-bit constant, ours).
MIGRATION_LOCK = 0x6C69746574736B31

GET_VERSION = """
SELECT value FROM litetask_meta WHERE key = 'schema_version'
"""

META_EXISTS = "SELECT to_regclass('litetask_meta') IS NOT NULL"

CREATE_META = """
CREATE TABLE IF NOT EXISTS litetask_meta (key text PRIMARY KEY, value text NOT NULL)
"""

SET_VERSION = """
INSERT INTO litetask_meta (key, value) VALUES ('schema_version', $1)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""

# Every column of a task, in table order (litetask_queue and litetask_done have the same ones).
COLUMNS = (
    "seq, id, name, queue, priority, status, progress, args, kwargs, result, error, pid, attempts, "
    "max_attempts, rescues, worker_id, cancel_requested, created_at, run_at, started_at, finished_at, "
    "heartbeat_at, errors, unique_key, max_concurrency, status_message, trace_context"
)


def _copy_rows(table: str, source: str, changes: dict[str, str]) -> str:
    """INSERT of every row of ``source`` (a CTE of task rows, ``g`` in the expressions) into
    ``table``, with these columns changed (a SQL expression over ``g`` each)."""
    exprs = [changes.get(c, f"g.{c}") for c in COLUMNS.split(", ")]
    return f"INSERT INTO {table} ({COLUMNS})\nSELECT {', '.join(exprs)}\nFROM {source} g\n"


# Migration n brings the schema from version n-1 to n. Never edit a released one; add the next.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE litetask_tasks (
            seq bigint GENERATED ALWAYS AS IDENTITY,
            id text PRIMARY KEY,
            name text NOT NULL,
            queue text NOT NULL DEFAULT 'default',
            priority integer NOT NULL DEFAULT 0,
            status text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
            progress smallint NOT NULL DEFAULT 0,
            args jsonb NOT NULL,
            kwargs jsonb NOT NULL,
            result jsonb,
            error jsonb,
            pid integer,
            attempts integer NOT NULL DEFAULT 0,
            max_attempts integer NOT NULL DEFAULT 1,
            rescues integer NOT NULL DEFAULT 0,
            worker_id text,
            cancel_requested boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT now(),
            run_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            finished_at timestamptz,
            heartbeat_at timestamptz
        )
        """,
        # The claim reads only this index: pending rows in claim order. Finished rows, however
        # many, are not in it.
        """
        CREATE INDEX litetask_tasks_pending ON litetask_tasks (priority DESC, seq)
            WHERE status = 'pending'
        """,
        # The rescuer reads only this one: running rows by heartbeat age.
        """
        CREATE INDEX litetask_tasks_running ON litetask_tasks (heartbeat_at)
            WHERE status = 'running'
        """,
        # One NOTIFY per INSERT statement (not per row), sent on commit, whoever inserts:
        # a transactional enqueue wakes workers only once it is committed.
        f"""
        CREATE FUNCTION litetask_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END $$
        """,
        """
        CREATE TRIGGER litetask_tasks_notify AFTER INSERT ON litetask_tasks
            FOR EACH STATEMENT EXECUTE FUNCTION litetask_notify()
        """,
    ),
    # Every attempt's error, oldest first (``error`` keeps the last one).
    2: ("ALTER TABLE litetask_tasks ADD COLUMN errors jsonb NOT NULL DEFAULT '[]'",),
    # Scheduling: unique keys, concurrency limits, delayed tasks, periodic ticks, retention.
    3: (
        "ALTER TABLE litetask_tasks ADD COLUMN unique_key text, ADD COLUMN max_concurrency integer",
        # At most one pending or running task per key; the database enforces it.
        """
        CREATE UNIQUE INDEX litetask_tasks_unique ON litetask_tasks (unique_key)
            WHERE unique_key IS NOT NULL AND status IN ('pending', 'running')
        """,
        # Due-ness: with many future-dated tasks the claim reads the due ones through this
        # index (a range up to now()), and "when is the next task due" is its first entry.
        "CREATE INDEX litetask_tasks_due ON litetask_tasks (run_at) WHERE status = 'pending'",
        """
        CREATE INDEX litetask_tasks_limited ON litetask_tasks (name)
            WHERE status = 'running' AND max_concurrency IS NOT NULL
        """,
        """
        CREATE INDEX litetask_tasks_finished ON litetask_tasks (finished_at)
            WHERE status IN ('completed', 'failed', 'cancelled')
        """,
        "CREATE TABLE litetask_schedules (name text PRIMARY KEY, last_tick float8 NOT NULL)",
    ),
    # Operating it: status lines, task logs, live workers, listing by status/name/queue.
    4: (
        "ALTER TABLE litetask_tasks ADD COLUMN status_message text",
        """
        CREATE TABLE litetask_logs (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            task_id text NOT NULL,
            attempt integer NOT NULL,
            at timestamptz NOT NULL,
            level text NOT NULL,
            message text NOT NULL
        )
        """,
        "CREATE INDEX litetask_logs_task ON litetask_logs (task_id, id)",
        """
        CREATE TABLE litetask_workers (
            id text PRIMARY KEY,
            hostname text NOT NULL,
            pid integer NOT NULL,
            queues jsonb,
            concurrency integer NOT NULL,
            running integer NOT NULL DEFAULT 0,
            started_at timestamptz NOT NULL,
            last_heartbeat timestamptz NOT NULL
        )
        """,
        "CREATE INDEX litetask_tasks_seq ON litetask_tasks (seq)",
        "CREATE INDEX litetask_tasks_status_seq ON litetask_tasks (status, seq)",
        "CREATE INDEX litetask_tasks_name_seq ON litetask_tasks (name, seq)",
        "CREATE INDEX litetask_tasks_queue_seq ON litetask_tasks (queue, seq)",
    ),
    5: (
        # Claim order is priority, then due time, then enqueue order, and the index says so:
        # the "is it due yet" test happens in the index, so future-dated tasks ahead in the
        # order are skipped there instead of read from the table (benchmarks/bench_scale.py:
        # 200k future tasks made each claim read all of them, 25-35 ms; now 0.4 ms).
        "DROP INDEX litetask_tasks_pending",
        "CREATE INDEX litetask_tasks_pending ON litetask_tasks (priority DESC, run_at, seq) WHERE status = 'pending'",
    ),
    # The W3C trace context of the span that enqueued the task (OpenTelemetry, optional).
    6: ("ALTER TABLE litetask_tasks ADD COLUMN trace_context text",),
    # Hot and finished tasks apart (benchmarks/README.md, "bench_postgres.py"): a status change
    # used to write a new row version into all eleven indexes of one table, which also held
    # every finished task. Pending and running tasks now live in litetask_queue: few indexes,
    # all partial on what the claim, the rescue and the unique keys read, fillfactor 70 so that
    # heartbeats and progress (no indexed column) are HOT updates, and autovacuum settings for a
    # table whose rows all die young. A task that ends is deleted from it and inserted into
    # litetask_done (insert-only), which keeps the operator views' indexes. litetask_tasks
    # becomes a view of both, so reading it (status counts, one task) works as before.
    7: (
        "ALTER TABLE litetask_tasks RENAME TO litetask_done",
        "CREATE SEQUENCE litetask_seq AS bigint",
        # New tasks continue the numbering of the old identity column (keyset pages, order).
        """
        DO $$
        DECLARE s text := pg_get_serial_sequence('litetask_done', 'seq'); v bigint;
        BEGIN
            EXECUTE format('SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM %s', s)
                INTO v;
            PERFORM setval('litetask_seq', greatest(v, coalesce((SELECT max(seq) FROM litetask_done), 0), 1));
        END $$
        """,
        "ALTER TABLE litetask_done ALTER COLUMN seq DROP IDENTITY",
        "DROP TRIGGER litetask_tasks_notify ON litetask_done",
        """
        CREATE TABLE litetask_queue (LIKE litetask_done INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
        WITH (fillfactor = 70,
              autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
              autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000,
              autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 20000,
              autovacuum_vacuum_cost_delay = 0)
        """,
        "ALTER TABLE litetask_queue ALTER COLUMN seq SET DEFAULT nextval('litetask_seq')",
        "ALTER SEQUENCE litetask_seq OWNED BY litetask_queue.seq",
        "ALTER TABLE litetask_queue ADD PRIMARY KEY (id)",
        "ALTER TABLE litetask_queue ADD CONSTRAINT litetask_queue_active CHECK (status IN ('pending', 'running'))",
        f"INSERT INTO litetask_queue ({COLUMNS}) SELECT {COLUMNS} FROM litetask_done WHERE status IN ('pending', 'running')",
        "DELETE FROM litetask_done WHERE status IN ('pending', 'running')",
        # litetask_done keeps id, seq, (status, seq), (name, seq), (queue, seq) for the operator
        # views; finished_at (purge, throughput) becomes a BRIN index: rows arrive in finishing
        # order, and a BRIN index is written once per 128 pages, not once per row.
        "DROP INDEX litetask_tasks_pending, litetask_tasks_running, litetask_tasks_unique, litetask_tasks_due, "
        "litetask_tasks_limited, litetask_tasks_finished",
        "CREATE INDEX litetask_done_finished ON litetask_done USING brin (finished_at) WITH (autosummarize = on)",
        # The claim's index, in claim order; tasks with a concurrency limit have their own. No
        # other index of pending rows covers run_at: the claim cannot be planned as "every due
        # row, then sort" (O(backlog) per claim) when the statistics are stale, and they always
        # are on a table whose size swings by the backlog. "When is the next task due" walks
        # this index once per priority (NEXT_DUE).
        """
        CREATE INDEX litetask_queue_claim ON litetask_queue (priority DESC, run_at, seq)
            WHERE status = 'pending' AND max_concurrency IS NULL
        """,
        """
        CREATE INDEX litetask_queue_limited_due ON litetask_queue (run_at)
            WHERE status = 'pending' AND max_concurrency IS NOT NULL
        """,
        # Running rows by worker (set at claim, unchanged while running): the rescue reads these
        # few rows; heartbeats rewrite no indexed column.
        "CREATE INDEX litetask_queue_running ON litetask_queue (worker_id) WHERE status = 'running'",
        """
        CREATE INDEX litetask_queue_limited ON litetask_queue (name)
            WHERE status = 'running' AND max_concurrency IS NOT NULL
        """,
        # Every row here is pending or running: one active task per key.
        "CREATE UNIQUE INDEX litetask_queue_unique ON litetask_queue (unique_key) WHERE unique_key IS NOT NULL",
        """
        CREATE TRIGGER litetask_queue_notify AFTER INSERT ON litetask_queue
            FOR EACH STATEMENT EXECUTE FUNCTION litetask_notify()
        """,
        f"CREATE VIEW litetask_tasks AS SELECT {COLUMNS} FROM litetask_queue "
        f"UNION ALL SELECT {COLUMNS} FROM litetask_done",
        "ANALYZE litetask_queue",
    ),
    # A claim inserts its rows again, as running (_take): only pending rows wake the workers.
    8: (
        f"""
        CREATE FUNCTION litetask_notify_pending() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM litetask_inserted WHERE status = 'pending') THEN
                PERFORM pg_notify('{CHANNEL}', '');
            END IF;
            RETURN NULL;
        END $$
        """,
        "DROP TRIGGER litetask_queue_notify ON litetask_queue",
        """
        CREATE TRIGGER litetask_queue_notify AFTER INSERT ON litetask_queue
            REFERENCING NEW TABLE AS litetask_inserted
            FOR EACH STATEMENT EXECUTE FUNCTION litetask_notify_pending()
        """,
        "DROP FUNCTION litetask_notify()",
    ),
}

LATEST_VERSION = max(MIGRATIONS)

# Arrays, one element per task. run_at: the given epoch time, else now() + countdown (both
# NULL: now). A task whose unique_key is held by an active task is skipped (not returned).
INSERT_MANY = """
INSERT INTO litetask_queue
    (id, name, queue, priority, args, kwargs, max_attempts, run_at, unique_key, max_concurrency,
     trace_context)
SELECT u.id, u.name, u.queue, u.priority, u.args, u.kwargs, u.max_attempts,
       coalesce(to_timestamp(u.eta), now() + make_interval(secs => coalesce(u.countdown, 0))),
       u.unique_key, u.max_concurrency, u.trace_context
FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::jsonb[], $6::jsonb[], $7::int[],
            $8::float8[], $9::float8[], $10::text[], $11::int[], $12::text[])
     AS u(id, name, queue, priority, args, kwargs, max_attempts, countdown, eta, unique_key, max_concurrency,
          trace_context)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
RETURNING id
"""

# The usual batch: one task's calls (adelay_many, or one adelay), no unique key: everything but
# id and arguments is the same for every task, so it is sent once; no ON CONFLICT (speculative
# insertion costs a WAL record per row).
# ids, args and kwargs each come as one text, the tasks' values joined by UNIT_SEP (which JSON
# text never holds: control characters are escaped inside strings, and whitespace between
# tokens is space, tab, CR or LF). Three text parameters instead of three arrays: asyncpg
# checks every array element on the client (several isinstance() calls each), which made a
# quarter of a 1,000-task batch's time.
UNIT_SEP = "\x1e"
INSERT_UNIFORM = """
INSERT INTO litetask_queue
    (id, name, queue, priority, args, kwargs, max_attempts, run_at, max_concurrency, trace_context)
SELECT u.id, $4, $5, $6, u.args::jsonb, u.kwargs::jsonb, $7,
       coalesce(to_timestamp($9::float8), now() + make_interval(secs => coalesce($8::float8, 0))), $10, $11
FROM unnest(string_to_array($1::text, E'\\x1e'), string_to_array($2::text, E'\\x1e'),
            string_to_array($3::text, E'\\x1e')) AS u(id, args, kwargs)
"""

ACTIVE_BY_UNIQUE_KEYS = """
SELECT unique_key, id FROM litetask_queue WHERE unique_key = ANY($1::text[])
"""

# The same insert for a caller's SQLAlchemy connection (transactional enqueue): named params.
INSERT_ONE_SQLA = """
INSERT INTO litetask_queue
    (id, name, queue, priority, args, kwargs, max_attempts, run_at, unique_key, max_concurrency,
     trace_context)
VALUES (:id, :name, :queue, :priority, CAST(:args AS jsonb), CAST(:kwargs AS jsonb), :max_attempts,
        coalesce(to_timestamp(CAST(:eta AS float8)),
                 now() + make_interval(secs => coalesce(CAST(:countdown AS float8), 0))),
        :unique_key, :max_concurrency, :trace_context)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
RETURNING id
"""

ACTIVE_BY_UNIQUE_KEY_SQLA = """
SELECT id FROM litetask_queue WHERE unique_key = :key
"""

# The claim's two halves, shared by CLAIM, CLAIM_LIMITED and FINISH_AND_CLAIM (which number
# their parameters differently): which pending tasks without a concurrency limit to take, in
# claim order, and how a taken row ("picked") becomes running.
_PICK = """
    SELECT id FROM litetask_queue
    WHERE status = 'pending' AND run_at <= now() AND max_concurrency IS NULL
      AND ({queues}::text[] IS NULL OR queue = ANY({queues}::text[]))
    ORDER BY priority DESC, run_at, seq
    LIMIT {limit}
    FOR UPDATE SKIP LOCKED
"""


def _take(worker: str, pid: str) -> str:
    """CTEs ``taken`` and ``claimed`` (the running rows: id, name, args, kwargs, attempts,
    max_attempts, queue, trace_context, seq) after a CTE ``picked``.

    A taken row is deleted and inserted again as running, not updated. Another claim whose
    snapshot still shows it pending then finds it deleted and passes over it. An UPDATE made
    that claim follow the row to its running version, lock it, re-check it and only then pass
    over it, keeping the lock until its commit: the owner's FINISH waited for it (4 workers:
    26,000 such locks for 40,000 tasks, a FINISH in ten waited ~1.5 ms).
    seq last: the workers pace their VACUUM by how far the claims have moved
    (PostgresBroker._claimed)."""
    return """taken AS (
    DELETE FROM litetask_queue t USING picked WHERE t.id = picked.id RETURNING t.*
), claimed AS (
""" + _copy_rows("litetask_queue", "taken", {
        "status": "'running'", "worker_id": worker, "pid": pid, "attempts": "g.attempts + 1",
        "started_at": "now()", "heartbeat_at": "now()", "progress": "0",
    }) + """RETURNING id, name, args::text AS args, kwargs::text AS kwargs, attempts, max_attempts, queue,
          trace_context, seq
)"""


# Tasks without a concurrency limit; $4 NULL = every queue.
CLAIM = ("WITH picked AS (" + _PICK.format(queues="$4", limit="$3") + "), " + _take("$1", "$2")
         + "\nSELECT * FROM claimed")

# Serialises claims of tasks that have a concurrency limit, across all workers (transaction-scoped).
LIMITED_LOCK = 0x6C69746574736B32

HAS_LIMITED_DUE = """
SELECT EXISTS (SELECT 1 FROM litetask_queue
               WHERE status = 'pending' AND run_at <= now() AND max_concurrency IS NOT NULL
                 AND ($1::text[] IS NULL OR queue = ANY($1::text[])))
"""

# Under LIMITED_LOCK: the k-th pending task of a name is claimable while running + k <= limit.
CLAIM_LIMITED = """
WITH running AS (
    SELECT name, count(*) AS n FROM litetask_queue
    WHERE status = 'running' AND max_concurrency IS NOT NULL GROUP BY name
), ranked AS (
    SELECT t.id, t.priority, t.run_at, t.seq, t.max_concurrency, coalesce(r.n, 0) AS n,
           row_number() OVER (PARTITION BY t.name ORDER BY t.priority DESC, t.run_at, t.seq) AS k
    FROM litetask_queue t LEFT JOIN running r ON r.name = t.name
    WHERE t.status = 'pending' AND t.run_at <= now() AND t.max_concurrency IS NOT NULL
      AND ($4::text[] IS NULL OR t.queue = ANY($4::text[]))
), picked AS (
    SELECT id FROM ranked WHERE n + k <= max_concurrency ORDER BY priority DESC, run_at, seq LIMIT $3
), """ + _take("$1", "$2") + "\nSELECT * FROM claimed"

# The earliest run_at of the pending tasks of queues $1 (NULL: all): the first entry of each
# priority in the claim index (a loose scan: one probe per distinct priority), and the first of
# the limited tasks' index.
_EARLIEST_PENDING = """
WITH RECURSIVE pr(p) AS (
    SELECT max(priority) FROM litetask_queue WHERE status = 'pending' AND max_concurrency IS NULL
    UNION ALL
    SELECT (SELECT max(priority) FROM litetask_queue
            WHERE status = 'pending' AND max_concurrency IS NULL AND priority < pr.p)
    FROM pr WHERE pr.p IS NOT NULL
)
SELECT least(
    (SELECT min((SELECT run_at FROM litetask_queue
                 WHERE status = 'pending' AND max_concurrency IS NULL AND priority = pr.p
                   AND ($1::text[] IS NULL OR queue = ANY($1::text[]))
                 ORDER BY priority DESC, run_at LIMIT 1))
     FROM pr WHERE pr.p IS NOT NULL),
    (SELECT min(run_at) FROM litetask_queue
     WHERE status = 'pending' AND max_concurrency IS NOT NULL
       AND ($1::text[] IS NULL OR queue = ANY($1::text[])))) AS earliest
"""

CLOCK = "SELECT extract(epoch FROM clock_timestamp())::float8"

NEXT_DUE = f"SELECT extract(epoch FROM earliest - now())::float8 FROM ({_EARLIEST_PENDING}) e"

GET_TICK_FOR_UPDATE = "SELECT last_tick FROM litetask_schedules WHERE name = $1 FOR UPDATE"
INSERT_TICK = "INSERT INTO litetask_schedules (name, last_tick) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"
UPDATE_TICK = "UPDATE litetask_schedules SET last_tick = $2 WHERE name = $1"

PURGE = """
WITH doomed AS (
    SELECT id FROM litetask_done
    WHERE status IN ('completed', 'failed', 'cancelled')
      AND finished_at < now() - make_interval(secs => $1)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone_logs AS (
    DELETE FROM litetask_logs l USING doomed WHERE l.task_id = doomed.id
)
DELETE FROM litetask_done t USING doomed WHERE t.id = doomed.id
"""

# A task that ends moves: deleted from litetask_queue (its row, as deleted, is ``g``) and
# inserted into litetask_done with these columns changed (a SQL expression over ``g`` each).
def _move_to_done(source: str, changes: dict[str, str]) -> str:
    return _copy_rows("litetask_done", source, changes) + "RETURNING id, status, max_concurrency IS NOT NULL"


# One element per outcome: id, new status, result, error, retry delay (s), attempts given back,
# pid, worker, attempt; each column one text, the outcomes' values joined by UNIT_SEP (see
# INSERT_UNIFORM; an empty element is NULL: no id, status, JSON text or number is empty).
# asyncpg checked every element of the nine arrays this took before with isinstance() against
# abstract classes, ~160 calls per statement of ten outcomes. Applied only while the row is
# still that attempt's. A final
# outcome moves the task to litetask_done; a retry or a release puts it back to pending, unless
# it was asked to cancel meanwhile (then it ends cancelled): ``held`` locks those rows first so
# that a concurrent cancel is seen on their newest version.
FINISH_MANY = """
WITH u AS MATERIALIZED (
    SELECT * FROM unnest(string_to_array($1::text, E'\\x1e'), string_to_array($2::text, E'\\x1e'),
                         string_to_array($3::text, E'\\x1e', ''), string_to_array($4::text, E'\\x1e', ''),
                         string_to_array($5::text, E'\\x1e')::float8[], string_to_array($6::text, E'\\x1e')::int[],
                         string_to_array($7::text, E'\\x1e', '')::int[], string_to_array($8::text, E'\\x1e'),
                         string_to_array($9::text, E'\\x1e')::int[])
        AS u(id, status, result, error, delay, giveback, pid, worker, attempt)
), held AS MATERIALIZED (
    SELECT t.id, t.cancel_requested FROM litetask_queue t JOIN u ON t.id = u.id
    WHERE u.status = 'pending' AND t.status = 'running' AND t.worker_id = u.worker AND t.attempts = u.attempt
    FOR UPDATE OF t
), gone AS (
    DELETE FROM litetask_queue t USING u LEFT JOIN held h ON h.id = u.id
    WHERE t.id = u.id AND t.status = 'running' AND t.worker_id = u.worker AND t.attempts = u.attempt
      AND (u.status <> 'pending' OR h.cancel_requested)
    RETURNING t.*, u.status AS u_status, u.result AS u_result, u.error AS u_error, u.pid AS u_pid,
              u.giveback AS u_giveback
), moved AS (
""" + _move_to_done("gone", {
    "status": "CASE WHEN g.u_status = 'pending' THEN 'cancelled' ELSE g.u_status END",
    "progress": "CASE WHEN g.u_status = 'completed' THEN 100 ELSE g.progress END",
    "result": "coalesce(g.u_result::jsonb, g.result)",
    "error": "coalesce(g.u_error::jsonb, g.error)",
    "errors": "CASE WHEN g.u_error IS NULL THEN g.errors ELSE g.errors || jsonb_build_array(g.u_error::jsonb) END",
    "pid": "coalesce(g.u_pid, g.pid)",
    "max_attempts": "g.max_attempts + CASE WHEN g.cancel_requested THEN 0 ELSE g.u_giveback END",
    "finished_at": "now()",
    "cancel_requested": "false",
}) + """
), back AS (
    UPDATE litetask_queue t
    SET status = 'pending',
        result = coalesce(u.result::jsonb, t.result),
        error = coalesce(u.error::jsonb, t.error),
        errors = CASE WHEN u.error IS NULL THEN t.errors ELSE t.errors || jsonb_build_array(u.error::jsonb) END,
        finished_at = NULL,
        run_at = now() + make_interval(secs => u.delay),
        max_attempts = t.max_attempts + u.giveback,
        pid = coalesce(u.pid, t.pid),
        worker_id = NULL,
        heartbeat_at = NULL,
        cancel_requested = false
    FROM held h JOIN u ON u.id = h.id
    WHERE t.id = h.id AND NOT h.cancel_requested
    RETURNING t.id, t.status, t.max_concurrency IS NOT NULL
)
SELECT * FROM moved UNION ALL SELECT * FROM back
"""

# FINISH_MANY ($1-$9) and CLAIM ($10 worker, $11 pid, $12 limit, $13 queues) in one statement,
# so one commit and one round trip: rows ('c', the claimed task's columns), then ('f', id,
# status, limited) for the outcomes applied. The claim is read first, so it runs first: the
# closer the pick is to the statement's snapshot, the fewer rows other workers claimed
# meanwhile it meets. The claim sees the statement's snapshot: tasks put back to pending by
# these outcomes are claimable from the next statement on.
_FINISH_CTES = FINISH_MANY[:FINISH_MANY.rindex("SELECT * FROM moved")]
FINISH_AND_CLAIM = _FINISH_CTES.rstrip() + ", picked AS (" + _PICK.format(queues="$13", limit="$12") + \
    "), " + _take("$10", "$11") + """, finished AS (
    SELECT * FROM moved UNION ALL SELECT * FROM back
)
SELECT 'c' AS kind, c.id, c.name, c.args, c.kwargs, c.attempts, c.max_attempts, c.queue, c.trace_context,
       NULL::bool AS limited, c.seq
FROM claimed c
UNION ALL
SELECT 'f', f.id, f.status, NULL, NULL, NULL, NULL, NULL, NULL, f.limited, NULL
FROM finished f (id, status, limited)
"""

# The workers vacuum litetask_queue themselves (PostgresBroker._finished); only its owner may.
MAY_VACUUM = "SELECT pg_has_role(relowner, 'MEMBER') FROM pg_class WHERE oid = 'litetask_queue'::regclass"
# Without truncation: with busy workers it waits for an ACCESS EXCLUSIVE lock on the table (up
# to 5 s), and takes it from them when it gets it. Autovacuum still truncates.
VACUUM_QUEUE = "VACUUM (SKIP_LOCKED, TRUNCATE false) litetask_queue"

# The workers take turns: $1 the highest seq this worker saw claimed, $2 VACUUM_EVERY. The turn
# is won when the claims moved $2 past the last vacuum's mark (or the mark is far ahead: claims
# went back to older tasks, higher priorities first); a worker that loses learns the mark.
TAKE_VACUUM_TURN = """
WITH last AS (SELECT value::bigint AS seq FROM litetask_meta WHERE key = 'vacuum_seq'), won AS (
    INSERT INTO litetask_meta (key, value) VALUES ('vacuum_seq', $1::bigint::text)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
    WHERE litetask_meta.value::bigint NOT BETWEEN $1::bigint - $2::bigint + 1 AND $1::bigint + $2::bigint
    RETURNING 1
)
SELECT EXISTS (SELECT FROM won), (SELECT seq FROM last)
"""

UPDATE_RUNNING = """
UPDATE litetask_queue t
SET progress = coalesce(u.progress, t.progress), pid = coalesce(u.pid, t.pid),
    status_message = coalesce(u.message, t.status_message),
    started_at = coalesce(now() - make_interval(secs => u.started_ago), t.started_at)
FROM unnest($1::text[], $2::int[], $3::int[], $5::text[], $6::float8[]) AS u(id, progress, pid, message, started_ago)
WHERE t.id = u.id AND t.status = 'running' AND t.worker_id = $4
"""

HEARTBEAT = """
UPDATE litetask_queue SET heartbeat_at = now()
WHERE id = ANY($2::text[]) AND status = 'running' AND worker_id = $1
RETURNING id
"""

# $1 max rescues, $2 lost-worker error, $3 timeout seconds. SKIP LOCKED: concurrent rescuers
# split the stalled rows between them, so each is rescued exactly once. Put back to pending, or
# (cancel requested, or rescued too often) ended and moved to litetask_done.
REQUEUE_STALLED = """
WITH stalled AS MATERIALIZED (
    SELECT id, cancel_requested, rescues FROM litetask_queue
    WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => $3)
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM litetask_queue t USING stalled s
    WHERE t.id = s.id AND (s.cancel_requested OR s.rescues >= $1)
    RETURNING t.*
), moved AS (
""" + _move_to_done("gone", {
    "status": "CASE WHEN g.cancel_requested THEN 'cancelled' ELSE 'failed' END",
    "error": "$2::jsonb || jsonb_build_object('attempt', g.attempts)",
    "errors": "g.errors || jsonb_build_array($2::jsonb || jsonb_build_object('attempt', g.attempts))",
    "finished_at": "now()",
    "run_at": "now()",
    "rescues": "g.rescues + 1",
    "worker_id": "NULL",
    "heartbeat_at": "NULL",
    "cancel_requested": "false",
}) + """
), back AS (
    UPDATE litetask_queue t
    SET status = 'pending',
        max_attempts = t.max_attempts + 1,
        error = $2::jsonb || jsonb_build_object('attempt', t.attempts),
        errors = t.errors || jsonb_build_array($2::jsonb || jsonb_build_object('attempt', t.attempts)),
        finished_at = NULL,
        run_at = now(),
        rescues = t.rescues + 1,
        worker_id = NULL,
        heartbeat_at = NULL,
        cancel_requested = false
    FROM stalled s
    WHERE t.id = s.id AND NOT s.cancel_requested AND s.rescues < $1
    RETURNING t.id, t.status
)
SELECT id, status FROM moved UNION ALL SELECT id, status FROM back
"""

# The row is locked first, so that a claim or a finish running meanwhile is seen on its newest
# version: pending -> cancelled at once (moved to litetask_done); running -> flagged for its worker.
CANCEL = """
WITH hit AS MATERIALIZED (
    SELECT id, status FROM litetask_queue WHERE id = $1 FOR UPDATE
), gone AS (
    DELETE FROM litetask_queue t USING hit WHERE t.id = hit.id AND hit.status = 'pending'
    RETURNING t.*
), moved AS (
""" + _move_to_done("gone", {"status": "'cancelled'", "finished_at": "now()", "cancel_requested": "false"}) + """
), flagged AS (
    UPDATE litetask_queue t SET cancel_requested = true
    FROM hit WHERE t.id = hit.id AND hit.status = 'running'
    RETURNING t.id
)
SELECT id FROM moved UNION ALL SELECT id FROM flagged
"""

EXISTS = """
SELECT EXISTS (SELECT 1 FROM litetask_queue WHERE id = $1)
    OR EXISTS (SELECT 1 FROM litetask_done WHERE id = $1)
"""

CANCEL_REQUESTED = """
SELECT id FROM litetask_queue WHERE id = ANY($1::text[]) AND cancel_requested
"""

RECORD_COLUMNS = """
id, name, queue, priority, status, progress, args::text AS args, kwargs::text AS kwargs,
result::text AS result, error::text AS error, errors::text AS errors, pid, attempts, max_attempts,
worker_id, extract(epoch FROM created_at)::float8 AS created_at,
extract(epoch FROM started_at)::float8 AS started_at,
extract(epoch FROM finished_at)::float8 AS finished_at,
extract(epoch FROM heartbeat_at)::float8 AS heartbeat_at,
extract(epoch FROM run_at)::float8 AS run_at, unique_key, status_message
"""

# One statement, one snapshot: a task moving from one table to the other is seen once.
SELECT_ONE = f"""
SELECT {RECORD_COLUMNS} FROM litetask_queue WHERE id = $1
UNION ALL
SELECT {RECORD_COLUMNS} FROM litetask_done WHERE id = $1
LIMIT 1
"""

# Keyset pagination on seq, newest first; each filter is skipped when NULL. Each table gives
# its own newest page (a table that cannot hold the status asked for is not read).
_LIST_WHERE = """($2::text IS NULL OR name = $2) AND ($3::text IS NULL OR queue = $3)
  AND ($5::bigint IS NULL OR seq < $5) AND ($1::text IS NULL OR status = $1)"""
LIST = f"""
SELECT * FROM (
    (SELECT seq, {RECORD_COLUMNS} FROM litetask_queue
     WHERE ($1::text IS NULL OR $1::text IN ('pending', 'running')) AND {_LIST_WHERE}
     ORDER BY seq DESC LIMIT $4)
    UNION ALL
    (SELECT seq, {RECORD_COLUMNS} FROM litetask_done
     WHERE ($1::text IS NULL OR $1::text NOT IN ('pending', 'running')) AND {_LIST_WHERE}
     ORDER BY seq DESC LIMIT $4)
) page
ORDER BY seq DESC
LIMIT $4
"""

SEQ_OF = """
SELECT seq FROM litetask_queue WHERE id = $1
UNION ALL
SELECT seq FROM litetask_done WHERE id = $1
LIMIT 1
"""

# A failed or cancelled task goes back to litetask_queue, pending, with one more attempt allowed.
RETRY = f"""
WITH gone AS (
    DELETE FROM litetask_done WHERE id = $1 AND status IN ('failed', 'cancelled')
    RETURNING *
)
INSERT INTO litetask_queue ({COLUMNS})
SELECT {", ".join({
    "status": "'pending'", "run_at": "now()", "finished_at": "NULL", "worker_id": "NULL",
    "heartbeat_at": "NULL", "cancel_requested": "false", "max_attempts": "g.attempts + 1",
    "progress": "0", "status_message": "NULL"}.get(c, f"g.{c}") for c in COLUMNS.split(", "))}
FROM gone g
RETURNING id
"""

STATS_COUNTS = """
SELECT queue, status, count(*) FROM litetask_queue GROUP BY queue, status
UNION ALL
SELECT queue, status, count(*) FROM litetask_done GROUP BY queue, status
"""
OLDEST_DUE = f"""
SELECT CASE WHEN earliest <= now() THEN extract(epoch FROM now() - earliest)::float8 END
FROM ({_EARLIEST_PENDING.replace("$1::text[]", "NULL::text[]")}) e
"""
FINISHED_SINCE = """
SELECT status, count(*) FROM litetask_done
WHERE status IN ('completed', 'failed') AND finished_at >= now() - interval '1 minute'
GROUP BY status
"""

UPSERT_WORKER = """
INSERT INTO litetask_workers (id, hostname, pid, queues, concurrency, running, started_at, last_heartbeat)
VALUES ($1, $2, $3, $4::jsonb, $5, 0, to_timestamp($6), now())
ON CONFLICT (id) DO UPDATE SET last_heartbeat = now()
"""
PRUNE_WORKERS = "DELETE FROM litetask_workers WHERE last_heartbeat < now() - interval '1 day'"
WORKER_HEARTBEAT = "UPDATE litetask_workers SET running = $2, last_heartbeat = now() WHERE id = $1"
DELETE_WORKER = "DELETE FROM litetask_workers WHERE id = $1"
LIVE_WORKERS = """
SELECT id, hostname, pid, queues::text AS queues, concurrency, running,
       extract(epoch FROM started_at)::float8 AS started_at,
       extract(epoch FROM last_heartbeat)::float8 AS last_heartbeat
FROM litetask_workers WHERE last_heartbeat >= now() - make_interval(secs => $1)
ORDER BY started_at
"""

INSERT_LOGS = """
INSERT INTO litetask_logs (task_id, attempt, at, level, message)
SELECT u.task_id, u.attempt, to_timestamp(u.at), u.level, u.message
FROM unnest($1::text[], $2::int[], $3::float8[], $4::text[], $5::text[]) AS u(task_id, attempt, at, level, message)
"""
TASK_LOGS = """
SELECT task_id, attempt, extract(epoch FROM at)::float8 AS at, level, message
FROM litetask_logs WHERE task_id = $1 ORDER BY id LIMIT $2
"""

NOTIFY = "SELECT pg_notify($1, '')"

NAME_COUNTS = """
SELECT name, status, count(*), count(*) FILTER (WHERE attempts > 1) FROM litetask_queue GROUP BY name, status
UNION ALL
SELECT name, status, count(*), count(*) FILTER (WHERE attempts > 1) FROM litetask_done GROUP BY name, status
"""
DURATIONS = """
SELECT name, {bucket} AS b, count(*), sum(extract(epoch FROM finished_at - started_at))::float8
FROM litetask_done WHERE status IN ('completed', 'failed') AND started_at IS NOT NULL GROUP BY name, b
"""
THROUGHPUT = """
SELECT (floor(extract(epoch FROM finished_at) / $1) * $1)::float8 AS b,
       count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed')
FROM litetask_done
WHERE status IN ('completed', 'failed') AND finished_at >= now() - make_interval(secs => $2)
GROUP BY b ORDER BY b
"""
