"""PostgreSQL's refusals among asyncpg's errors, for the CLI and the dashboard to report in one line.

The PostgreSQL broker turns a failed connection into :class:`~litetask_async.exceptions.BrokerUnavailable`
but lets the server's own errors through. Two kinds of them are not bugs, and are recognised here
by their SQLSTATE: the server refusing the URL's role, password or database
(:func:`connection_refusal`), and the server refusing a value given to it, such as a NUL
character or text that is not UTF-8 (:func:`rejected_value`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

# SQLSTATE codes, or their two-character classes, of a server refusing who connects or to what.
_REFUSALS = (
    "28",  # invalid authorization specification: unknown role, wrong password, pg_hba.conf
    "3D",  # invalid catalog name: no such database
    "42501",  # insufficient privilege: no CONNECT on the database, no rights on the tables
    "53300",  # too many connections
)
_DATA_EXCEPTION = "22"  # a value the server (or asyncpg, before sending it) cannot take


def _postgres_errors(exc: BaseException) -> Iterator[BaseException]:
    """asyncpg's server errors in ``exc`` and its causes, outermost first."""
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is None:  # never imported, so none of its errors can be here
        return
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, asyncpg.PostgresError):
            yield cur
        cur = cur.__cause__ or cur.__context__


def _sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", None) or "")


def connection_refusal(exc: BaseException) -> BaseException | None:
    """The asyncpg error in ``exc``'s chain saying PostgreSQL refused the role, password or
    database (or the privileges or a connection slot), or None."""
    return next((e for e in _postgres_errors(exc) if _sqlstate(e).startswith(_REFUSALS)), None)


def rejected_value(exc: BaseException) -> BaseException | None:
    """The asyncpg error in ``exc``'s chain saying a value given to PostgreSQL was refused
    (SQLSTATE class 22: a NUL character, text that is not UTF-8, a timestamp out of range), or None."""
    return next((e for e in _postgres_errors(exc) if _sqlstate(e).startswith(_DATA_EXCEPTION)), None)
