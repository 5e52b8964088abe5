"""Loading jobs.yaml: read, expand ``${VAR}``, validate against the schema, resolve.

Unknown keys are errors (a typo must not pass silently), ``${VAR}`` and ``${VAR:-default}``
in any string value expand from the environment (``$${`` is a literal ``${``), and a bad file
reports every problem at once in a :class:`~notifier.errors.JobsFileError`, one line each::

    jobs.yaml:12: job 'daily-sales', field 'schedule': invalid crontab '61 * * * *': minute 61 ...
"""

from __future__ import annotations

import difflib
import os
import re
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from notifier.errors import JobsFileError
from notifier.jobs.locate import ErrorReport, Loc, line_of, pydantic_problems
from notifier.jobs.model import (
    DEFAULT_TIMEOUT,
    ENV_TIMEZONE,
    Job,
    JobsFile,
    Misfire,
    Retries,
)
from notifier.jobs.schema import (
    FORMS,
    VAR_RE,
    DefaultsModel,
    JobModel,
    MisfireModel,
    RetriesModel,
    _check_timezone,
    _Model,
)
from notifier.jobs.yamlfile import check_duplicate_keys, parse_yaml, read_file


def _expand(value: Any, loc: Loc, env: Mapping[str, str], report: ErrorReport) -> Any:
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

    result = VAR_RE.sub(substitute, value)
    for message in problems:
        report.add(loc, message)
    if problems:
        report.unresolved.append(loc)
    return result


def _validate(model: type[_Model], raw: Any, prefix: Loc, report: ErrorReport) -> Any:
    if not isinstance(raw, dict):
        return None
    clean = {}
    for key, value in raw.items():
        if isinstance(key, str):
            clean[key] = value
        else:
            report.add(
                prefix,
                line=line_of(report.root, (*prefix, key)),
                message=f"key {key!r} is not text (YAML reads on/off/yes/no as booleans); quote it",
            )
    try:
        return model.model_validate(clean)
    except ValidationError as exc:
        pydantic_problems(exc, prefix, model, report)
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


def _find_notebook(raw: object, base: Path, loc: Loc, report: ErrorReport) -> Path | None:
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
    report.add((*loc, "notebook"), f"{problem}; expected {FORMS['notebook']}")
    return None


def _check_declared_parameters(
    notebook: Path, parameters: Mapping[str, Any], loc: Loc, report: ErrorReport
) -> None:
    """Parameters the notebook does not declare are errors now, not at 08:00."""
    from notifier.errors import RunError
    from notifier.notebook.params import check_parameters

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
        warm_imports=_pick(model, defaults, "warm_imports", False),
        line=line,
    )


def _attach_output(value: str | None) -> str | None:
    return None if value in (None, "none") else value


def _top_level(root: yaml.Node | None, data: Any, report: ErrorReport) -> tuple[Any, list]:
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
        from notifier.project import project_root
        from notifier.settings import read_environment

        project = project_root(Path(path).resolve().parent)
        env = read_environment(dotenv_path=project / ".env")
    text = read_file(path, shown)
    root, data = parse_yaml(text, shown)
    report = ErrorReport(shown, root, data)
    check_duplicate_keys(root, report)
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
            first_line[name] = line_of(root, (*loc, "name"))
        model = _validate(JobModel, raw, loc, report)
        notebook = None
        if not report.is_unresolved((*loc, "notebook")):
            notebook = _find_notebook(raw.get("notebook"), path.parent, loc, report)
        if model is not None and notebook is not None:
            _check_declared_parameters(notebook, model.parameters, loc, report)
            line = line_of(root, loc)
            jobs.append(_resolve(model, defaults, notebook, fallback_zone, line))

    if report.items:
        raise JobsFileError(shown, report.lines())
    return JobsFile(path=path, jobs=jobs)
