"""Worker subprocess of ``bench_postgres.py``: one worker of one library.

    python benchmarks/_pg_worker.py LIB URL CONCURRENCY OPTIONS_JSON LOOP

Protocol on stdin/stdout (lines): prints ``READY`` once the library is imported and connected
(the clock has not started), waits for ``GO``, starts the worker and prints ``GO-ACK``; on
``STOP`` (or end of stdin) stops the worker the library's clean way, waits for it, closes, and
prints ``STOPPED``. Task start reports (``S key time``) go to the same stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the litetask_async next to these benchmarks

import _pg_adapters as A  # noqa: E402


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


async def main(lib: str, url: str, concurrency: int, options: dict) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    side = A.WORKERS[lib](url, concurrency, options)
    await side.open()
    say("READY")
    while (await reader.readline()).strip() not in (b"GO", b""):
        pass
    runner = asyncio.create_task(side.run(), name=f"{lib}-worker")
    say("GO-ACK")
    stop_line = asyncio.create_task(reader.readline())
    await asyncio.wait({runner, stop_line}, return_when=asyncio.FIRST_COMPLETED)
    if runner.done():  # crashed before being told to stop
        say(f"CRASHED {runner.exception()!r}")
    else:
        side.stop(runner)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(runner), 30)
    stop_line.cancel()
    await side.close()
    say("STOPPED")


if __name__ == "__main__":
    lib, url, conc, opts, loop_name = sys.argv[1:6]
    coro = main(lib, url, int(conc), json.loads(opts))
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)
