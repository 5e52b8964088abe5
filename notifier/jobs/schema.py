"""The jobs.yaml schema: what each field accepts, as pydantic models with precise checks.

The models describe the file as written (``defaults:`` and each entry of ``jobs:``);
:mod:`notifier.jobs.loader` resolves them into :class:`~notifier.jobs.model.Job` values.
"""

from __future__ import annotations

import difflib
import keyword
import re
import time
import zoneinfo
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from notifier.durations import (
    DURATION,
    DURATION_FORM,
    MAX_DURATION,
    MAX_TIMEOUT,
    OPTIONAL_DURATION,
    TIMEOUT,
    Limit,
)
from notifier.jobs.model import DEFAULT_GRACE, DEFAULT_RETRY_DELAY
from notifier.jobs.schedules import SCHEDULE_FORM, Schedule, parse_schedule

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
VAR_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")
_ADDRESS_FORM = "an address like ops@example.com, or a YAML list of them"
FORMS = {
    "name": "a unique id of letters, digits, '_', '.' and '-', like daily-sales",
    "notebook": "a path to an .ipynb file, relative to the jobs file",
    "schedule": SCHEDULE_FORM,
    "timezone": "an IANA time zone like Europe/Berlin or UTC",
    "parameters": "a mapping of parameter name to value, like {region: EMEA}",
    "to": _ADDRESS_FORM,
    "cc": _ADDRESS_FORM,
    "bcc": _ADDRESS_FORM,
    "on_failure": _ADDRESS_FORM,
    "enabled": "true or false",
    "notify_recovery": "true or false",
    "timeout": DURATION_FORM,
    "cell_timeout": DURATION_FORM,
    "cooldown": DURATION_FORM,
    "keep_runs": "a duration with a unit, like 30d",
    "deliver_within": "a duration like 15m or 1d: how long its emails are retried",
    "on_unknown": "skip (never send twice, the default) or resend (never lose one)",
    "retries": "a count like 3, or {count: 3, delay: 30s}",
    "count": "a whole number from 0 to 100",
    "delay": DURATION_FORM,
    "misfire": "skip, run_once or catch_up, or {policy: run_once, grace: 10m}",
    "policy": "skip, run_once or catch_up",
    "grace": DURATION_FORM,
    "kernel": "the name of an installed Jupyter kernel, like python3 (jupyter kernelspec list)",
    "hide_code": "true or false",
    "warm_imports": "true or false (import the first code cell's modules before the slot)",
    "attach_output": "html, pdf or none",
}


# --- value checks used by the models --------------------------------------------------------


# The range of each duration field (see notifier.durations): finite, so no value can
# overflow a date or disable a limit.
LIMITS = {
    "timeout": TIMEOUT,  # 1s to 1d
    "cell_timeout": TIMEOUT,
    "keep_runs": Limit(1, MAX_DURATION, unit=True),  # 1s to 3650d, with a unit
    "cooldown": OPTIONAL_DURATION,  # 0s to 3650d
    "deliver_within": DURATION,  # 1s to 3650d
    "delay": Limit(0, MAX_TIMEOUT),  # a retry waits in a worker: 0s to 1d
    "grace": OPTIONAL_DURATION,
}


def _duration(field: str) -> BeforeValidator:
    limit = LIMITS[field]

    def check(value: object) -> float:
        return float(limit.parse(value))

    return BeforeValidator(check)


def _check_name(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"invalid name {value!r}; expected {FORMS['name']}")
    return value


def _check_notebook(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {FORMS['notebook']}, got {value!r}")
    return value.strip()


def _check_timezone(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {FORMS['timezone']}, got {value!r}")
    key = value.strip()
    try:
        zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zones = zoneinfo.available_timezones()
        close = [z for z in zones if z.lower() == key.lower()]
        close = close or difflib.get_close_matches(key, zones, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown time zone {key!r}{hint}; expected {FORMS['timezone']}") from None
    return key


def _address_problem(address: str) -> str | None:
    if not address:
        return "it is empty"
    if "," in address or ";" in address:
        return "several addresses in one string: write them as a YAML list"
    if any(c in address for c in "\r\n"):
        return "it contains a line break"
    if any(c.isspace() for c in address):
        return "it contains a space (write the bare address, without a display name)"
    if address.count("@") != 1:
        return "it needs exactly one '@'"
    local, domain = address.split("@")
    if not local or not domain or domain.startswith(".") or domain.endswith("."):
        return "the part before or after '@' is empty"
    return None


def _check_addresses(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError(f"expected {_ADDRESS_FORM}, got {value!r}")
    result: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"invalid address {item!r}: not text; expected {_ADDRESS_FORM}")
        problem = _address_problem(item.strip())
        if problem:
            raise ValueError(f"invalid address {item!r}: {problem}")
        if item.strip() not in result:
            result.append(item.strip())
    return tuple(result)


def _check_parameter_value(value: object, where: str) -> None:
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_parameter_value(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} must be text; quote it")
            _check_parameter_value(item, f"{where}.{key}")
        return
    kind = "a date" if isinstance(value, (date, datetime)) else type(value).__name__
    raise ValueError(f"{where} is {kind} ({value!r}); quote it to pass it as text")


def _check_parameters(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected {FORMS['parameters']}, got {value!r}")
    for name, item in value.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(
                f"parameter name {name!r} is not a valid Python variable name "
                "(letters, digits and '_', not starting with a digit)"
            )
        _check_parameter_value(item, f"parameter {name!r}")
    return value


def _check_schedule(value: object) -> Schedule:
    if isinstance(value, Schedule):
        return value
    return parse_schedule(value)


def _retries_shape(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"expected {FORMS['retries']}, got {value!r}")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        return {"count": value}
    if not isinstance(value, dict):
        raise ValueError(f"expected {FORMS['retries']}, got {value!r}")
    return value


def _misfire_shape(value: object) -> object:
    if isinstance(value, str):
        return {"policy": value}
    if not isinstance(value, dict):
        raise ValueError(f"expected {FORMS['misfire']}, got {value!r}")
    return value


def _policy(value: object) -> object:
    return value.strip().lower().replace("-", "_") if isinstance(value, str) else value


_KERNEL_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")  # what jupyter_client accepts


_kernels_seen: tuple[float, tuple[str, ...]] | None = None


def installed_kernels(max_age: float = 60.0) -> tuple[str, ...]:
    """Names of the Jupyter kernels installed for this environment (listed once a minute)."""
    global _kernels_seen
    now = time.monotonic()
    if _kernels_seen is None or now - _kernels_seen[0] > max_age:
        from jupyter_client.kernelspec import KernelSpecManager

        try:
            names = tuple(sorted(KernelSpecManager().find_kernel_specs()))
        except Exception:  # listing is a convenience: the run reports a missing kernel too
            names = ()
        _kernels_seen = (now, names)
    return _kernels_seen[1]


def check_kernel(value: object) -> str:
    """``kernel: python3``: a kernel name that is installed here."""
    if not isinstance(value, str) or not _KERNEL_NAME_RE.match(value.strip()):
        raise ValueError(f"invalid kernel name {value!r}; expected {FORMS['kernel']}")
    name = value.strip()
    installed = installed_kernels()
    if installed and name.lower() not in installed:
        close = difflib.get_close_matches(name.lower(), installed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"no Jupyter kernel named {name!r} is installed{hint}; installed: "
            f"{', '.join(installed)}"
        )
    return name


def _output_format(value: object) -> object:
    if value is False or value is None:
        return "none"
    return value.strip().lower() if isinstance(value, str) else value


Addresses = Annotated[tuple[str, ...], BeforeValidator(_check_addresses)]
TimeZoneKey = Annotated[str, BeforeValidator(_check_timezone)]
KernelName = Annotated[str, BeforeValidator(check_kernel)]
OutputFormat = Annotated[Literal["html", "pdf", "none"], BeforeValidator(_output_format)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)


class RetriesModel(_Model):
    """``retries: 3`` or ``retries: {count: 3, delay: 30s}``."""

    count: int = Field(default=0, ge=0, le=100)
    delay: Annotated[float, _duration("delay")] = DEFAULT_RETRY_DELAY


class MisfireModel(_Model):
    """``misfire: run_once`` or ``misfire: {policy: run_once, grace: 10m}``."""

    policy: Annotated[Literal["skip", "run_once", "catch_up"], BeforeValidator(_policy)] = (
        "run_once"
    )
    grace: Annotated[float, _duration("grace")] = DEFAULT_GRACE


class DefaultsModel(_Model):
    """The ``defaults:`` section: values every job inherits unless it sets its own."""

    timezone: TimeZoneKey | None = None
    timeout: Annotated[float, _duration("timeout")] | None = None
    cell_timeout: Annotated[float, _duration("cell_timeout")] | None = None
    retries: Annotated[RetriesModel, BeforeValidator(_retries_shape)] | None = None
    misfire: Annotated[MisfireModel, BeforeValidator(_misfire_shape)] | None = None
    keep_runs: Annotated[float, _duration("keep_runs")] | None = None
    cooldown: Annotated[float, _duration("cooldown")] | None = None
    notify_recovery: bool | None = None
    deliver_within: Annotated[float, _duration("deliver_within")] | None = None
    on_unknown: Literal["skip", "resend"] | None = None
    to: Addresses | None = None
    cc: Addresses | None = None
    bcc: Addresses | None = None
    on_failure: Addresses | None = None
    kernel: KernelName | None = None
    hide_code: bool | None = None
    attach_output: OutputFormat | None = None
    warm_imports: bool | None = None


class JobModel(DefaultsModel):
    """One entry of ``jobs:`` as written; unset optional fields inherit from defaults."""

    name: Annotated[str, BeforeValidator(_check_name)]
    notebook: Annotated[str, BeforeValidator(_check_notebook)]
    schedule: Annotated[Schedule, BeforeValidator(_check_schedule)]
    parameters: Annotated[dict[str, Any], BeforeValidator(_check_parameters)] = Field(
        default_factory=dict
    )
    enabled: bool = True
