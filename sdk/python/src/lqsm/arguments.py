"""How a task's call travels: the JSON envelope of its arguments, checked before it
leaves, and the conversions of task options into the server's units."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .errors import UnsupportedOption

JsonValue = Any
"""Any JSON value: None, bool, int, float, str, list, or dict with str keys."""


def encode_call(task_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Dict[str, JsonValue]:
    """The job's `args`: `{"args": [...], "kwargs": {...}}`, always both keys.

    Raises `TypeError` naming the first argument JSON cannot carry as it is, so the
    mistake shows at `.delay()` and not on a worker. Tuples travel as lists.
    """
    for index, value in enumerate(args):
        _check_json(task_name, f"positional argument {index}", value, f"args[{index}]")
    for name, value in kwargs.items():
        if not isinstance(name, str):
            raise TypeError(f"task `{task_name}`: keyword argument names must be str, got {name!r}")
        _check_json(task_name, f"keyword argument `{name}`", value, name)
    return {"args": list(args), "kwargs": dict(kwargs)}


def round_trip(value: Any) -> JsonValue:
    """`value` as a worker would receive it: through JSON and back."""
    return json.loads(json.dumps(value, allow_nan=False))


def _check_json(task_name: str, argument: str, value: Any, path: str) -> None:
    problem = _json_problem(value, path)
    if problem is not None:
        raise TypeError(
            f"{argument} of task `{task_name}` is not JSON-encodable: {problem}; "
            "tasks take None, bool, int, float, str, and lists and dicts (with str keys) of them"
        )


def _json_problem(value: Any, path: str) -> Optional[str]:
    """Why `value` cannot travel as JSON unchanged (None if it can)."""
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value}, which JSON has no number for"
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _json_problem(item, f"{path}[{i}]")
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has the key {key!r} ({type(key).__name__}), and JSON keys are str"
            problem = _json_problem(item, f"{path}[{key!r}]")
            if problem is not None:
                return problem
        return None
    return f"{path} is a {type(value).__name__}"


_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_MIB_PER_UNIT = {"": 1.0 / (1024 * 1024), "K": 1.0 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 * 1024}


def memory_mib(value: Any) -> int:
    """Memory as MiB: an int is MiB already; a str takes a binary unit (`512M`, `2G`,
    `1.5Gi`, `256MiB`; a bare number is bytes), rounded up to whole MiB."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"resources['memory'] takes an int (MiB) or a str such as '512M', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"resources['memory'] must not be negative, got {value}")
        return value
    match = _MEMORY.match(value)
    if match is None:
        raise ValueError(
            f"resources['memory'] = {value!r} is not a size: write e.g. '512M', '2G' or an int of MiB"
        )
    amount, unit = float(match.group(1)), match.group(2).upper()
    return math.ceil(amount * _MIB_PER_UNIT[unit])


def resources_spec(resources: Mapping[str, Any]) -> Dict[str, Any]:
    """A task's `resources` as the server's `Resources`: `cpu` (cores, fractions
    allowed), `memory` (see `memory_mib`), `gpu` (whole GPUs), and `custom` (named
    counts, `{"licence": 1}`)."""
    spec: Dict[str, Any] = {}
    for key, value in resources.items():
        if key == "cpu":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"resources['cpu'] takes a non-negative number of cores, got {value!r}")
            spec["cpu"] = float(value)
        elif key == "memory":
            spec["memory_mib"] = memory_mib(value)
        elif key == "gpu":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"resources['gpu'] takes a whole number of GPUs, got {value!r}")
            spec["gpu"] = value
        elif key == "custom":
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 0
                for k, n in value.items()
            ):
                raise ValueError(
                    f"resources['custom'] takes names to whole counts, e.g. {{'licence': 1}}, got {value!r}"
                )
            spec["custom"] = dict(value)
        else:
            raise UnsupportedOption(
                f"resources[{key!r}] is not a resource LQSM knows: use cpu, memory, gpu, "
                "or custom={'name': count} for a resource the workers offer"
            )
    return spec


def seconds_to_ms(option: str, value: Any) -> int:
    """A duration in seconds (int or float, not negative) as whole milliseconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{option} takes a non-negative number of seconds, got {value!r}")
    return int(round(value * 1000))


def str_list(option: str, value: Any) -> List[str]:
    """A list of str (tags)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{option} takes a list of str, got {value!r}")
    return list(value)


def str_map(option: str, value: Any) -> Dict[str, str]:
    """A dict of str to str (labels, keys)."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError(f"{option} takes a dict of str to str, got {value!r}")
    return dict(value)


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*$")
_SECONDS_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def rate_per_second(value: Any) -> float:
    """A Celery `rate_limit` (`"10/s"`, `"100/m"`, `"5/h"`, or a number: per second) as
    starts per second."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rate = float(value)
    elif isinstance(value, str) and _RATE.match(value):
        match = _RATE.match(value)
        assert match is not None
        rate = float(match.group(1)) / _SECONDS_PER[match.group(2)]
    else:
        raise ValueError(f"rate_limit takes a rate such as '10/s', '100/m' or '5/h', got {value!r}")
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"rate_limit must be above 0, got {value!r}")
    return rate
