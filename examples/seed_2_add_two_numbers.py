"""Port of lilota's "2-add-two-numbers" example: dataclass input and output models.

lilota registers the models explicitly (``input_model=AddInput, output_model=AddOutput``).
litetask_async reads them from the annotations: a dataclass argument is stored as JSON on enqueue
and rebuilt as an ``AddInput`` in the worker; a returned dataclass is stored as a dict in
``record.result``, from which the caller rebuilds an ``AddOutput``.

    python examples/seed_2_add_two_numbers.py     (stores its tasks in ./seed_2.db)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from litetask_async import LiteTask, TaskStatus
from litetask_async.worker import Worker


@dataclass
class AddInput:
    a: int
    b: int


@dataclass
class AddOutput:
    sum: int


DB_FILE = "seed_2.db"
app = LiteTask(f"sqlite:///{DB_FILE}")


@app.task(name="add")
def add(data: AddInput) -> AddOutput:
    # Runs in a pool process; ``data`` arrives as a real AddInput, not a dict.
    assert isinstance(data, AddInput), type(data)
    return AddOutput(sum=data.a + data.b)


async def main() -> None:
    number1, number2 = 2, 3
    worker = Worker(app, install_signal_handlers=False)
    running = asyncio.create_task(worker.run())  # lilota.start()
    try:
        task_id = await add.adelay(AddInput(a=number1, b=number2))  # lilota.schedule("add", ...)
        record = await app.wait(task_id, timeout=30)
    finally:
        worker.stop()  # lilota.stop()
        await running
        await app.aclose()
    if record.status is not TaskStatus.COMPLETED:
        raise SystemExit(f"task ended {record.status}: {record.error}")
    print(f"stored input: {record.args}, stored result: {record.result}")
    add_output = AddOutput(**record.result)
    print(f"{number1} + {number2} = {add_output.sum}")  # 2 + 3 = 5


if __name__ == "__main__":
    for suffix in ("", "-wal", "-shm"):  # start from an empty database
        Path(DB_FILE + suffix).unlink(missing_ok=True)
    asyncio.run(main())
