"""Task ids: time-ordered, increasing within a process, unique across threads and forks."""

from __future__ import annotations

import os
import threading

from litetask_async.tasks import new_ids


def test_ids_made_later_sort_later_also_within_a_millisecond() -> None:
    ids = [i for _ in range(2000) for i in new_ids(3)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_threads_never_share_an_id() -> None:
    out: list[list[str]] = []

    def make() -> None:
        out.append([i for _ in range(5000) for i in new_ids(1)])

    threads = [threading.Thread(target=make) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    every = [i for ids in out for i in ids]
    assert len(set(every)) == len(every) == 20_000
    assert all(ids == sorted(ids) for ids in out)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids go to the parent
        try:
            os.write(write, "".join(new_ids(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    mine = set(new_ids(100))
    with os.fdopen(read) as f:
        text = f.read()
    os.waitpid(pid, 0)
    child = {text[i:i + 32] for i in range(0, len(text), 32)}
    assert len(child) == 100 and not mine & child
    # without the reseed, parent and child draw the same numbers after the fork
    assert {i[12:] for i in mine}.isdisjoint(i[12:] for i in child)
