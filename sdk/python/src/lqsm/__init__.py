"""LQSM's Python SDK: declare tasks in Celery's shape and submit them to an LQSM server.

    app = lqsm.App("http://127.0.0.1:7420")

    @app.task(queue="root.default", retries=2, timeout=60, resources={"cpu": 0.5})
    def resize(path: str, width: int) -> str: ...

    result = resize.delay("a.png", width=200)
    result.get(timeout=30)
"""

from ._version import __version__
from ._batcher import SubmissionError
from .app import App, Task
from .canvas import Chain, Chord, Group, Signature, WorkflowResult, chain, chord, group
from .errors import (
    ApiError,
    IncompatibleServer,
    LqsmError,
    Retry,
    ServerUnreachable,
    SoftTimeLimitExceeded,
    TaskError,
    TimeoutError,
    UnsupportedOption,
)
from .result import AsyncResult, EagerResult

__all__ = [
    "ApiError",
    "App",
    "AsyncResult",
    "Chain",
    "Chord",
    "Group",
    "Signature",
    "WorkflowResult",
    "chain",
    "chord",
    "group",
    "EagerResult",
    "IncompatibleServer",
    "LqsmError",
    "Retry",
    "ServerUnreachable",
    "SoftTimeLimitExceeded",
    "SubmissionError",
    "Task",
    "TaskError",
    "TimeoutError",
    "UnsupportedOption",
    "__version__",
]
