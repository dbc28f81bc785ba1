"""Port of lilota's "3-add-two-numbers-using-pydantic" example: pydantic input and output models.

lilota needs an ``as_dict()`` method on each model. litetask_async knows pydantic models
(``model_dump`` / ``model_validate``), so the models stay plain: the argument is validated back into
an ``AddInput`` in the worker, and the returned ``AddOutput`` is stored as a dict in
``record.result``.

    python examples/seed_3_add_two_numbers_pydantic.py     (stores its tasks in ./seed_3.db)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel

from litetask_async import LiteTask, TaskStatus
from litetask_async.worker import Worker


class AddInput(BaseModel):
    a: int
    b: int


class AddOutput(BaseModel):
    sum: int


DB_FILE = "seed_3.db"
app = LiteTask(f"sqlite:///{DB_FILE}")


@app.task(name="add")
def add(data: AddInput) -> AddOutput:
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
    add_output = AddOutput.model_validate(record.result)
    print(f"{number1} + {number2} = {add_output.sum}")  # 2 + 3 = 5


if __name__ == "__main__":
    for suffix in ("", "-wal", "-shm"):  # start from an empty database
        Path(DB_FILE + suffix).unlink(missing_ok=True)
    asyncio.run(main())
