"""The JSON encoder reused across calls (serialization.dumps) behaves as a fresh one each time."""

from __future__ import annotations

import threading

import pytest

from litetask_async.exceptions import SerializationError
from litetask_async.serialization import dumps


def test_a_failed_encode_leaves_no_marker_behind() -> None:
    """An encode that fails inside a container leaves that container's id among the C encoder's
    circular-reference markers; the same list, fixed, must then encode (not 'Circular
    reference detected')."""
    payload: list[object] = [1, object()]
    with pytest.raises(SerializationError, match="not JSON serializable"):
        dumps(payload, "arguments")
    payload.pop()
    assert dumps(payload, "arguments") == "[1]"
    shared = [1, 2]
    assert dumps([shared, shared], "arguments") == "[[1,2],[1,2]]"  # the same object twice is no cycle
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(SerializationError, match="Circular reference"):
        dumps(cycle, "arguments")


def test_an_exception_from_a_model_leaves_no_marker_behind() -> None:
    """An error dumps() does not turn into SerializationError (a model's as_dict() failing)
    reaches the caller as it is, and the encoder it interrupted is not reused."""

    class Broken:
        def as_dict(self) -> dict[str, int]:
            raise AttributeError("no field")

    payload: list[object] = [1, Broken()]
    with pytest.raises(AttributeError, match="no field"):
        dumps(payload, "arguments")
    payload.pop()
    assert dumps(payload, "arguments") == "[1]"


def test_threads_encode_at_once() -> None:
    results: list[bool] = []

    def work(i: int) -> None:
        value = {"n": i, "items": [[i, str(i)] for _ in range(200)]}
        items = ",".join([f'[{i},"{i}"]'] * 200)
        expected = f'{{"n":{i},"items":[{items}]}}'
        results.append(all(dumps(value, "result") == expected for _ in range(300)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 4
