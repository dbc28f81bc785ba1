"""litetask_async: an asyncio-native background task queue whose state lives in a database."""

from .app import LiteTask
from .exceptions import (
    BrokerUnavailable,
    ConfigurationError,
    LiteTaskError,
    Retry,
    SerializationError,
    TaskNotFound,
    TaskTimeout,
    WorkerError,
)
from .progress import TaskProgress
from .records import TaskRecord, TaskStatus
from .tasks import Task
from .worker import Worker

__all__ = [
    "BrokerUnavailable",
    "ConfigurationError",
    "LiteTask",
    "LiteTaskError",
    "Retry",
    "SerializationError",
    "Task",
    "TaskNotFound",
    "TaskProgress",
    "TaskRecord",
    "TaskStatus",
    "TaskTimeout",
    "Worker",
    "WorkerError",
]

__version__ = "0.1.0"
