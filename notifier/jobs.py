"""jobs.yaml: the schema, the loader, and error messages that point at file:line.

A jobs file looks like::

    defaults:
      timezone: Europe/Berlin
      to: team@example.com
    jobs:
      - name: daily-sales
        notebook: notebooks/sales.ipynb
        schedule: "0 8 * * 1-5"
        parameters: {region: EMEA}

Unknown keys are errors (a typo must not pass silently), ``${VAR}`` and ``${VAR:-default}``
in any string value expand from the environment (``$${`` is a literal ``${``), and a bad file
reports every problem at once in a :class:`~notifier.errors.JobsFileError`, one line each::

    jobs.yaml:12: job 'daily-sales', field 'schedule': invalid crontab '61 * * * *': minute 61 ...
"""

from __future__ import annotations

import difflib
import keyword
import os
import re
import time
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from apscheduler.triggers.base import BaseTrigger
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from notifier.durations import DURATION_FORM, parse_duration
from notifier.errors import JobsFileError, UsageError
from notifier.schedule import SCHEDULE_FORM, Schedule, next_fire_times, parse_schedule

ENV_TIMEZONE = "NOTIFIER_TIMEZONE"
DEFAULT_TIMEOUT = 600.0
DEFAULT_RETRY_DELAY = 60.0
DEFAULT_GRACE = 3600.0
MISFIRE_POLICIES = ("skip", "run_once", "catch_up")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VAR_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")
_ADDRESS_FORM = "an address like ops@example.com, or a YAML list of them"
_FORMS = {
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
    "attach_output": "html, pdf or none",
}


# --- value checks used by the models --------------------------------------------------------


def _duration(minimum: float, *, allow_number: bool = True) -> BeforeValidator:
    def check(value: object) -> float:
        seconds = parse_duration(value, allow_number=allow_number)
        if seconds < minimum:
            limit = "must not be negative" if minimum == 0 else f"the minimum is {minimum:g}s"
            raise ValueError(f"{value!r} is too short: {limit}")
        return seconds

    return BeforeValidator(check)


def _check_name(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"invalid name {value!r}; expected {_FORMS['name']}")
    return value


def _check_notebook(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {_FORMS['notebook']}, got {value!r}")
    return value.strip()


def _check_timezone(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {_FORMS['timezone']}, got {value!r}")
    key = value.strip()
    try:
        zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zones = zoneinfo.available_timezones()
        close = [z for z in zones if z.lower() == key.lower()]
        close = close or difflib.get_close_matches(key, zones, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown time zone {key!r}{hint}; expected {_FORMS['timezone']}"
        ) from None
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
        raise ValueError(f"expected {_FORMS['parameters']}, got {value!r}")
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
        raise ValueError(f"expected {_FORMS['retries']}, got {value!r}")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        return {"count": value}
    if not isinstance(value, dict):
        raise ValueError(f"expected {_FORMS['retries']}, got {value!r}")
    return value


def _misfire_shape(value: object) -> object:
    if isinstance(value, str):
        return {"policy": value}
    if not isinstance(value, dict):
        raise ValueError(f"expected {_FORMS['misfire']}, got {value!r}")
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


def _check_kernel(value: object) -> str:
    """``kernel: python3``: a kernel name that is installed here."""
    if not isinstance(value, str) or not _KERNEL_NAME_RE.match(value.strip()):
        raise ValueError(f"invalid kernel name {value!r}; expected {_FORMS['kernel']}")
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
KernelName = Annotated[str, BeforeValidator(_check_kernel)]
OutputFormat = Annotated[Literal["html", "pdf", "none"], BeforeValidator(_output_format)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)


class RetriesModel(_Model):
    """``retries: 3`` or ``retries: {count: 3, delay: 30s}``."""

    count: int = Field(default=0, ge=0, le=100)
    delay: Annotated[float, _duration(0)] = DEFAULT_RETRY_DELAY


class MisfireModel(_Model):
    """``misfire: run_once`` or ``misfire: {policy: run_once, grace: 10m}``."""

    policy: Annotated[Literal["skip", "run_once", "catch_up"], BeforeValidator(_policy)] = (
        "run_once"
    )
    grace: Annotated[float, _duration(0)] = DEFAULT_GRACE


class DefaultsModel(_Model):
    """The ``defaults:`` section: values every job inherits unless it sets its own."""

    timezone: TimeZoneKey | None = None
    timeout: Annotated[float, _duration(1)] | None = None
    cell_timeout: Annotated[float, _duration(1)] | None = None
    retries: Annotated[RetriesModel, BeforeValidator(_retries_shape)] | None = None
    misfire: Annotated[MisfireModel, BeforeValidator(_misfire_shape)] | None = None
    keep_runs: Annotated[float, _duration(1, allow_number=False)] | None = None
    cooldown: Annotated[float, _duration(0)] | None = None
    notify_recovery: bool | None = None
    deliver_within: Annotated[float, _duration(1)] | None = None
    on_unknown: Literal["skip", "resend"] | None = None
    to: Addresses | None = None
    cc: Addresses | None = None
    bcc: Addresses | None = None
    on_failure: Addresses | None = None
    kernel: KernelName | None = None
    hide_code: bool | None = None
    attach_output: OutputFormat | None = None


class JobModel(DefaultsModel):
    """One entry of ``jobs:`` as written; unset optional fields inherit from defaults."""

    name: Annotated[str, BeforeValidator(_check_name)]
    notebook: Annotated[str, BeforeValidator(_check_notebook)]
    schedule: Annotated[Schedule, BeforeValidator(_check_schedule)]
    parameters: Annotated[dict[str, Any], BeforeValidator(_check_parameters)] = Field(
        default_factory=dict
    )
    enabled: bool = True


# --- the resolved, typed result -------------------------------------------------------------


@dataclass(frozen=True)
class Retries:
    """How often and how long apart a failed run is retried."""

    count: int = 0
    delay_seconds: float = DEFAULT_RETRY_DELAY


@dataclass(frozen=True)
class Misfire:
    """What to do with a slot missed while the daemon was down or busy."""

    policy: str = "run_once"  # one of MISFIRE_POLICIES
    grace_seconds: float = DEFAULT_GRACE


@dataclass(frozen=True)
class Job:
    """A job with every value resolved (defaults applied, paths absolute, durations seconds)."""

    name: str
    notebook: Path
    schedule: Schedule | None  # None for an ad-hoc run (notifier run NOTEBOOK)
    tz: zoneinfo.ZoneInfo
    parameters: dict[str, Any] = field(default_factory=dict)
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    on_failure: tuple[str, ...] = ()
    enabled: bool = True
    timeout_seconds: float = DEFAULT_TIMEOUT
    cell_timeout_seconds: float | None = None
    retries: Retries = Retries()
    misfire: Misfire = Misfire()
    cooldown_seconds: float | None = None
    notify_recovery: bool = False
    keep_runs_seconds: float | None = None
    # how long its emails are retried (None: NOTIFIER_DELIVERY_LIFETIME, 1 day)
    deliver_within_seconds: float | None = None
    # an email whose delivery outcome is unknown (link lost after the final dot, a crash
    # mid-transaction): "skip" = at most once (default), "resend" = at least once
    on_unknown: str = "skip"
    kernel: str | None = None  # None: the notebook's kernel (or this environment's Python)
    hide_code: bool = False  # archived output (and attach_output) without code
    attach_output: str | None = None  # "html" or "pdf": the rendered output on every email
    line: int = 1  # where the job starts in the jobs file

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def timezone(self) -> str:
        """The IANA key of the job's time zone."""
        return self.tz.key

    def trigger(self) -> BaseTrigger:
        """A fresh APScheduler trigger for this job's schedule in its time zone."""
        if self.schedule is None:
            raise ValueError(f"{self.name} is an ad-hoc run: it has no schedule")
        return self.schedule.trigger(self.tz)

    @property
    def failure_recipients(self) -> list[str]:
        """Who hears about its problems: ``on_failure``, else ``to`` + ``cc`` (never bcc)."""
        chosen = list(self.on_failure) if self.on_failure else [*self.to, *self.cc]
        return list(dict.fromkeys(chosen))

    def next_fire_times(self, now: datetime | None = None, count: int = 5) -> list[datetime]:
        """The next ``count`` fire times, in the job's time zone."""
        now = now or datetime.now(timezone.utc)
        return [t.astimezone(self.tz) for t in next_fire_times(self.trigger(), now, count)]


@dataclass(frozen=True)
class JobsFile:
    """A loaded, valid jobs file."""

    path: Path
    jobs: list[Job]

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)

    @property
    def names(self) -> list[str]:
        """Job names in file order."""
        return [job.name for job in self.jobs]

    def get(self, name: str) -> Job:
        """The job called ``name``; UsageError (exit 2) listing the known names if there is none."""
        for job in self.jobs:
            if job.name == name:
                return job
        close = difflib.get_close_matches(name, self.names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        known = ", ".join(self.names) or "none"
        raise UsageError(
            f"no job named {name!r} in {self.path}.{hint} Known jobs: {known}",
            fix=f"use one of the names above, or add a job named {name!r} to {self.path}",
        )


# --- loading --------------------------------------------------------------------------------


Loc = tuple[Any, ...]


class _Report:
    """Collects problems as ``file:line: where: message`` lines, each located by its loc."""

    def __init__(self, shown: str, root: yaml.Node | None, data: Any) -> None:
        self.shown = shown
        self.root = root
        self.data = data
        self.items: list[tuple[int, int, str]] = []
        self.unresolved: list[Loc] = []  # values whose ${VAR} could not expand

    def add(self, loc: Loc, message: str, line: int | None = None, where: str = "") -> None:
        line = line or _line_of(self.root, loc)
        text = f"{self.shown}:{line}: {where or self._where(loc)}: {message}"
        if text not in (item[2] for item in self.items):
            self.items.append((line, len(self.items), text))

    def is_unresolved(self, loc: Loc) -> bool:
        return any(loc[: len(bad)] == bad or bad[: len(loc)] == loc for bad in self.unresolved)

    def lines(self) -> list[str]:
        return [text for _, _, text in sorted(self.items)]

    def _where(self, loc: Loc) -> str:
        if len(loc) >= 2 and loc[0] == "jobs" and isinstance(loc[1], int):
            who, rest = self._job_label(loc[1]), loc[2:]
        elif loc and loc[0] == "defaults":
            who, rest = "defaults", loc[1:]
        elif loc:
            who, rest = "top level", loc
        else:
            return "top level"
        return f"{who}, field {_field_label(rest)!r}" if rest else who

    def _job_label(self, index: int) -> str:
        try:
            name = self.data["jobs"][index].get("name")
        except (AttributeError, IndexError, KeyError, TypeError):
            name = None
        if isinstance(name, int) and not isinstance(name, bool):
            name = str(name)
        if isinstance(name, str) and _NAME_RE.match(name):
            return f"job {name!r}"
        return f"job #{index + 1}"


def _field_label(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_of(root: yaml.Node | None, loc: Loc) -> int:
    """The 1-based line of the deepest node on ``loc`` (a key's own line for mapping keys)."""
    node, line = root, (root.start_mark.line + 1 if root is not None else 1)
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pairs = [(k, v) for k, v in node.value if _key_is(k, part)]
            if not pairs:
                break
            key, node = pairs[-1]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _key_is(node: yaml.Node, key: Any) -> bool:
    if isinstance(key, str) or not isinstance(node, yaml.ScalarNode):
        return node.value == key
    return node.tag != "tag:yaml.org,2002:str" and yaml.safe_load(node.value) == key


MAX_DEPTH = 64  # jobs > job > parameters > ...: real files nest a handful of levels
_MAX_NUMBER_LENGTH = 100  # characters of an unquoted number


def _check_structure(text: str, shown: str, loader_class: type) -> None:
    """Refuse what would make a small file take minutes or crash the loader, with file:line.

    Runs over the parser's events (flat, no tree) before anything is composed:

    * an alias (``*name``) of an anchor defined before it: aliases make a few hundred bytes
      expand into gigabytes ("billion laughs") in every walk over the data (duplicate keys,
      ``${VAR}`` expansion, validation). An alias of an undefined anchor is left to the
      composer, whose error says to quote values that start with ``*``;
    * nesting deeper than :data:`MAX_DEPTH` (the composer and constructor recurse);
    * an unquoted number longer than 100 characters (``1:2:3:...`` is a base-60 integer
      that takes quadratic time to build; long decimals exceed Python's digit limit).
    """
    anchors: set[str] = set()
    depth = 0
    too_deep = f"nested more than {MAX_DEPTH} levels deep; jobs.yaml needs a few levels"
    loader = loader_class(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            problem = None
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    problem = too_deep
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
            elif isinstance(event, yaml.AliasEvent) and event.anchor in anchors:
                problem = (
                    f"YAML aliases (*{event.anchor}) are not supported in jobs.yaml; write the "
                    "values out (settings shared by all jobs go under 'defaults:')"
                )
            elif (
                isinstance(event, yaml.ScalarEvent)
                and not event.style  # plain: None from PyYAML, "" from libyaml
                and len(event.value) > _MAX_NUMBER_LENGTH
                and loader.resolve(yaml.ScalarNode, event.value, (True, False))
                == "tag:yaml.org,2002:int"
            ):
                problem = (
                    f"an unquoted number of {len(event.value):,} characters; quote it if it is text"
                )
            if problem is not None:
                line = event.start_mark.line + 1
                raise JobsFileError(shown, [f"{shown}:{line}: {problem}"])
            anchor = getattr(event, "anchor", None)
            if anchor is not None:
                anchors.add(anchor)
    except yaml.MarkedYAMLError as exc:
        if "nesting depth" in str(exc.problem):  # libyaml's own limit (1,000 levels)
            line = exc.problem_mark.line + 1 if exc.problem_mark else 1
            raise JobsFileError(shown, [f"{shown}:{line}: {too_deep}"]) from None
        return  # a syntax error: the parse that follows reports it with its line
    except yaml.YAMLError:
        return
    finally:
        loader.dispose()


def _parse_yaml(text: str, shown: str) -> tuple[yaml.Node | None, Any]:
    fast = getattr(yaml, "CSafeLoader", None)  # libyaml: several times faster on large files
    _check_structure(text, shown, fast or yaml.SafeLoader)
    if fast is not None:
        loader = fast(text)
        try:
            return _compose_and_construct(loader, shown)
        except yaml.YAMLError:
            pass  # report the error with the pure-Python parser's clearer messages
        finally:
            loader.dispose()
    loader = yaml.SafeLoader(text)
    try:
        return _compose_and_construct(loader, shown)
    except RecursionError:  # the pure-Python composer recurses (a last resort: checked above)
        raise JobsFileError(
            shown, [f"{shown}:1: nested too deeply; jobs.yaml needs a few levels"]
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        message = "; ".join(p for p in (exc.context, exc.problem) if p)
        raise JobsFileError(
            shown, [f"{shown}:{line}: invalid YAML: {message}{_yaml_hint(exc)}"]
        ) from None
    except yaml.YAMLError as exc:
        raise JobsFileError(shown, [f"{shown}:1: invalid YAML: {exc}"]) from None
    finally:
        loader.dispose()


def _compose_and_construct(loader: Any, shown: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data; a value YAML cannot build is one error."""
    node = loader.get_single_node()
    if node is None:
        return None, None
    try:
        return node, loader.construct_document(node)
    except (ValueError, OverflowError) as exc:  # e.g. the date 2026-02-30
        raise JobsFileError(shown, [_unbuildable_value(loader, node, shown, exc)]) from None


def _unbuildable_value(loader: Any, root: yaml.Node, shown: str, error: Exception) -> str:
    """``file:line: cannot read VALUE (why)`` for the scalar whose construction fails."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in reversed(node.value) for part in reversed(pair))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
        elif node.tag != "tag:yaml.org,2002:str":
            try:
                loader.yaml_constructors[node.tag](loader, node)
            except (ValueError, OverflowError) as exc:
                line = node.start_mark.line + 1
                value = node.value if len(node.value) <= 40 else node.value[:37] + "..."
                return f"{shown}:{line}: cannot read {value!r} ({exc}); quote it if it is text"
            except Exception:  # noqa: BLE001,S112 - only looking for the culprit
                continue
    return f"{shown}: a value cannot be read ({error})"


def _yaml_hint(exc: yaml.MarkedYAMLError) -> str:
    problem, context = exc.problem or "", exc.context or ""
    if "alias" in context or "'@'" in problem or "'`'" in problem:
        return (
            "; a value starting with *, @ or ` must be quoted, "
            "e.g. schedule: '*/15 * * * *' or schedule: '@daily'"
        )
    if "'\\t'" in problem:
        return "; indent with spaces, not tabs"
    if "mapping values are not allowed" in problem:
        return "; check the indentation, or quote a value that contains ': '"
    return ""


def _check_duplicate_keys(node: yaml.Node | None, report: _Report) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if isinstance(key, yaml.ScalarNode) and key.value in seen:
                report.add(
                    (),
                    f"key {key.value!r} appears twice (first on line {seen[key.value]}); "
                    "YAML would keep only the last one",
                    line=line,
                    where="duplicate key",
                )
            elif isinstance(key, yaml.ScalarNode):
                seen[key.value] = line
            _check_duplicate_keys(value, report)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, report)


def _expand(value: Any, loc: Loc, env: Mapping[str, str], report: _Report) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string value below ``value``."""
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, k), env, report) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), env, report) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    problems: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        text, name, default = match.group(0), match.group(1), match.group(2)
        if text == "$${":
            return "${"
        if name is None:
            problems.append(
                "malformed variable reference; write ${NAME} or ${NAME:-default} "
                "(or $${ for a literal ${)"
            )
            return text
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        if name in env:
            return ""
        problems.append(
            f"undefined environment variable ${{{name}}}; set it, or give a default "
            f"like ${{{name}:-value}}"
        )
        return text

    result = _VAR_RE.sub(substitute, value)
    for message in problems:
        report.add(loc, message)
    if problems:
        report.unresolved.append(loc)
    return result


def _pydantic_problems(
    exc: ValidationError, prefix: Loc, model: type[BaseModel], report: _Report
) -> None:
    errors = exc.errors()
    # `shedule:` is one mistake: report the unknown key (with its "did you mean"), not
    # also the missing `schedule` it was meant to be.
    misspelled = set()
    for error in errors:
        if error["type"] == "extra_forbidden" and error["loc"]:
            allowed = _allowed_keys(model, error["loc"][:-1])
            misspelled.update(
                (*error["loc"][:-1], close)
                for close in difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1)
            )
    for error in errors:
        loc = (*prefix, *error["loc"])
        if report.is_unresolved(loc):
            continue
        if error["type"] == "missing" and tuple(error["loc"]) in misspelled:
            continue
        field_name = str(error["loc"][0]) if error["loc"] else ""
        leaf = str(error["loc"][-1]) if error["loc"] else ""
        form = _FORMS.get(leaf) or _FORMS.get(field_name)
        kind, message = error["type"], error["msg"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, error["loc"][:-1])
            close = difflib.get_close_matches(leaf, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            message = f"unknown key{hint}; allowed keys: {', '.join(allowed)}"
        elif kind == "missing":
            message = "missing" + (f"; expected {form}" if form else "")
        elif kind == "value_error":
            message = message.removeprefix("Value error, ")
        elif kind == "literal_error":
            message = f"{message[0].lower()}{message[1:]} (got {error.get('input')!r})"
        else:
            shown = repr(error.get("input"))
            message = f"{message[0].lower()}{message[1:]} (got {shown[:60]})"
            message += f"; expected {form}" if form else ""
        report.add(loc, message)


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    if loc and loc[0] == "retries":
        model = RetriesModel
    elif loc and loc[0] == "misfire":
        model = MisfireModel
    fields = model.model_fields
    return sorted(fields, key=lambda name: not fields[name].is_required())


def _validate(model: type[_Model], raw: Any, prefix: Loc, report: _Report) -> Any:
    if not isinstance(raw, dict):
        return None
    clean = {}
    for key, value in raw.items():
        if isinstance(key, str):
            clean[key] = value
        else:
            report.add(
                prefix,
                line=_line_of(report.root, (*prefix, key)),
                message=f"key {key!r} is not text (YAML reads on/off/yes/no as booleans); quote it",
            )
    try:
        return model.model_validate(clean)
    except ValidationError as exc:
        _pydantic_problems(exc, prefix, model, report)
        return None


def _merged(job: JobModel, defaults: DefaultsModel, name: str, sub: type[_Model]) -> Any:
    inherited, own = getattr(defaults, name), getattr(job, name)
    values = {} if inherited is None else dict(inherited)
    if own is not None:
        values.update({key: getattr(own, key) for key in own.model_fields_set})
    return sub.model_validate(values)


def _pick(job: JobModel, defaults: DefaultsModel, name: str, fallback: Any) -> Any:
    for source in (job, defaults):
        value = getattr(source, name)
        if value is not None:
            return value
    return fallback


def _find_notebook(raw: object, base: Path, loc: Loc, report: _Report) -> Path | None:
    """The absolute path of an existing notebook, or None after reporting why not."""
    if not isinstance(raw, str) or not raw.strip():
        return None  # the model reports the wrong type
    notebook = Path(os.path.expanduser(raw.strip()))
    notebook = (notebook if notebook.is_absolute() else base / notebook).resolve()
    if notebook.suffix != ".ipynb":
        problem = f"{raw!r} is not a notebook (.ipynb)"
    elif not notebook.is_file():
        problem = f"notebook {raw!r} not found (looked for {notebook})"
    else:
        return notebook
    report.add((*loc, "notebook"), f"{problem}; expected {_FORMS['notebook']}")
    return None


def _check_declared_parameters(
    notebook: Path, parameters: Mapping[str, Any], loc: Loc, report: _Report
) -> None:
    """Parameters the notebook does not declare are errors now, not at 08:00."""
    from notifier.errors import RunError
    from notifier.notebook_params import check_parameters

    try:
        check_parameters(notebook, dict(parameters))
    except RunError as error:
        report.add((*loc, "parameters"), f"{error.message} ({error.fix})")


def _resolve(
    model: JobModel,
    defaults: DefaultsModel,
    notebook: Path,
    fallback_zone: str,
    line: int,
) -> Job:
    retries = _merged(model, defaults, "retries", RetriesModel)
    misfire = _merged(model, defaults, "misfire", MisfireModel)
    to = _pick(model, defaults, "to", ())
    return Job(
        name=model.name,
        notebook=notebook,
        schedule=model.schedule,
        tz=zoneinfo.ZoneInfo(_pick(model, defaults, "timezone", fallback_zone)),
        parameters=dict(model.parameters),
        to=to,
        cc=_pick(model, defaults, "cc", ()),
        bcc=_pick(model, defaults, "bcc", ()),
        on_failure=_pick(model, defaults, "on_failure", ()),
        enabled=model.enabled,
        timeout_seconds=_pick(model, defaults, "timeout", DEFAULT_TIMEOUT),
        cell_timeout_seconds=_pick(model, defaults, "cell_timeout", None),
        retries=Retries(count=retries.count, delay_seconds=retries.delay),
        misfire=Misfire(policy=misfire.policy, grace_seconds=misfire.grace),
        cooldown_seconds=_pick(model, defaults, "cooldown", None),
        notify_recovery=_pick(model, defaults, "notify_recovery", False),
        keep_runs_seconds=_pick(model, defaults, "keep_runs", None),
        deliver_within_seconds=_pick(model, defaults, "deliver_within", None),
        on_unknown=_pick(model, defaults, "on_unknown", "skip"),
        kernel=_pick(model, defaults, "kernel", None),
        hide_code=_pick(model, defaults, "hide_code", False),
        attach_output=_attach_output(_pick(model, defaults, "attach_output", None)),
        line=line,
    )


MAX_FILE_BYTES = 1024 * 1024  # ~7,000 jobs; anything bigger is a mistake, not a jobs file


def _attach_output(value: str | None) -> str | None:
    return None if value in (None, "none") else value


def _read(path: Path, shown: str) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            problem = (
                f"larger than 1 MB ({MAX_FILE_BYTES:,} bytes), the most notifier reads; "
                "check that this is your jobs file (7,000 jobs take about 1 MB)"
            )
        else:
            return data.decode("utf-8")
    except FileNotFoundError:
        problem = "file not found; create it or pass the path of your jobs file"
    except IsADirectoryError:
        problem = "is a directory; pass the path of the jobs file itself"
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"
    except OSError as exc:
        problem = f"cannot read: {exc.strerror}"
    raise JobsFileError(shown, [f"{shown}: {problem}"])


def _top_level(root: yaml.Node | None, data: Any, report: _Report) -> tuple[Any, list]:
    """Check the file's outer shape; return the raw defaults and jobs (or None, [])."""
    expected = "expected a mapping with a 'jobs:' list (and optionally 'defaults:')"
    if root is None or data is None:
        report.add((), f"the file is empty; {expected}")
        return None, []
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        report.add((), f"the top level is {kind}; {expected}")
        return None, []
    for key in data:
        if key not in ("defaults", "jobs"):
            close = difflib.get_close_matches(str(key), ["defaults", "jobs"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            report.add((key,), f"unknown key{hint}; allowed keys: defaults, jobs")
    defaults = data.get("defaults")
    if defaults is not None and not isinstance(defaults, dict):
        report.add(("defaults",), f"expected a mapping of settings, got {defaults!r}")
        defaults = None
    jobs = data.get("jobs")
    if "jobs" not in data:
        report.add((), "missing 'jobs:'; expected a list of jobs, each starting with '- name:'")
        jobs = []
    elif not isinstance(jobs, list):
        report.add(
            ("jobs",), f"expected a list of jobs, each starting with '- name:', got {jobs!r}"
        )
        jobs = []
    return defaults, jobs


def load_jobs(path: str | Path, env: Mapping[str, str] | None = None) -> JobsFile:
    """Load and validate a jobs file.

    Relative notebook paths resolve against the file's directory; ``${VAR}`` expands from
    ``env`` (default: the environment over the project's ``.env``), which also supplies ``NOTIFIER_TIMEZONE``, the zone of
    jobs that set none (else UTC). Raises JobsFileError listing every problem at once.
    """
    path = Path(path)
    shown = str(path)
    if env is None:  # the environment, over the project's .env (as for every setting)
        from notifier.config import read_environment
        from notifier.interactive import project_root

        project = project_root(Path(path).resolve().parent)
        env = read_environment(dotenv_path=project / ".env")
    text = _read(path, shown)
    root, data = _parse_yaml(text, shown)
    report = _Report(shown, root, data)
    _check_duplicate_keys(root, report)
    if isinstance(data, dict):
        data = _expand(data, (), env, report)
        report.data = data
    raw_defaults, raw_jobs = _top_level(root, data, report)

    defaults = DefaultsModel()
    if raw_defaults is not None:
        defaults = _validate(DefaultsModel, raw_defaults, ("defaults",), report) or defaults

    fallback_zone = "UTC"
    if env.get(ENV_TIMEZONE):
        try:
            fallback_zone = _check_timezone(env[ENV_TIMEZONE])
        except ValueError as exc:
            report.add((), f"environment variable {ENV_TIMEZONE}: {exc}")

    jobs: list[Job] = []
    first_line: dict[str, int] = {}
    for index, raw in enumerate(raw_jobs):
        loc: Loc = ("jobs", index)
        if not isinstance(raw, dict):
            got = "nothing" if raw is None else f"{type(raw).__name__} {raw!r}"
            report.add(loc, f"expected a mapping with name:, notebook: and schedule:, got {got}")
            continue
        name = raw.get("name")
        name = str(name) if isinstance(name, int) and not isinstance(name, bool) else name
        if isinstance(name, str) and name in first_line:
            report.add(
                (*loc, "name"),
                f"duplicate name {name!r} (first used on line {first_line[name]}); "
                "names must be unique: they key the run history",
            )
        elif isinstance(name, str):
            first_line[name] = _line_of(root, (*loc, "name"))
        model = _validate(JobModel, raw, loc, report)
        notebook = None
        if not report.is_unresolved((*loc, "notebook")):
            notebook = _find_notebook(raw.get("notebook"), path.parent, loc, report)
        if model is not None and notebook is not None:
            _check_declared_parameters(notebook, model.parameters, loc, report)
            line = _line_of(root, loc)
            jobs.append(_resolve(model, defaults, notebook, fallback_zone, line))

    if report.items:
        raise JobsFileError(shown, report.lines())
    return JobsFile(path=path, jobs=jobs)
