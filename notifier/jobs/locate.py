"""Where a problem is: ``jobs.yaml:LINE: job 'NAME', field 'FIELD': message``.

The loader keeps the YAML node tree beside the data, so that every problem found (by
pydantic or by the loader's own checks) points at the line a user has to fix.
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from notifier.jobs.schema import FORMS, NAME_RE, MisfireModel, RetriesModel

Loc = tuple[Any, ...]


class ErrorReport:
    """Collects problems as ``file:line: where: message`` lines, each located by its loc."""

    def __init__(self, shown: str, root: yaml.Node | None, data: Any) -> None:
        self.shown = shown
        self.root = root
        self.data = data
        self.items: list[tuple[int, int, str]] = []
        self.unresolved: list[Loc] = []  # values whose ${VAR} could not expand

    def add(self, loc: Loc, message: str, line: int | None = None, where: str = "") -> None:
        """Record a problem at ``loc`` (its line found in the YAML tree unless given)."""
        line = line or line_of(self.root, loc)
        text = f"{self.shown}:{line}: {where or self._where(loc)}: {message}"
        if text not in (item[2] for item in self.items):
            self.items.append((line, len(self.items), text))

    def is_unresolved(self, loc: Loc) -> bool:
        """True when the value at ``loc`` holds a ``${VAR}`` that could not expand."""
        return any(loc[: len(bad)] == bad or bad[: len(loc)] == loc for bad in self.unresolved)

    def lines(self) -> list[str]:
        """Every problem, in file order."""
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
        return f"{who}, field {field_label(rest)!r}" if rest else who

    def _job_label(self, index: int) -> str:
        try:
            name = self.data["jobs"][index].get("name")
        except (AttributeError, IndexError, KeyError, TypeError):
            name = None
        if isinstance(name, int) and not isinstance(name, bool):
            name = str(name)
        if isinstance(name, str) and NAME_RE.match(name):
            return f"job {name!r}"
        return f"job #{index + 1}"


def field_label(loc: Loc) -> str:
    """``field 'retries.count'`` for a location inside a job or the defaults."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def line_of(root: yaml.Node | None, loc: Loc) -> int:
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


def pydantic_problems(
    exc: ValidationError, prefix: Loc, model: type[BaseModel], report: ErrorReport
) -> None:
    """Add pydantic's errors to ``report`` in our words (unknown keys with a "did you mean")."""
    errors = exc.errors()
    # `shedule:` is one mistake: report the unknown key (with its "did you mean"), not
    # also the missing `schedule` it was meant to be.
    misspelled = set()
    for error in errors:
        if error["type"] == "extra_forbidden" and error["loc"]:
            allowed = allowed_keys(model, error["loc"][:-1])
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
        form = FORMS.get(leaf) or FORMS.get(field_name)
        kind, message = error["type"], error["msg"]
        if kind == "extra_forbidden":
            allowed = allowed_keys(model, error["loc"][:-1])
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


def allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys allowed where ``loc`` points (required ones first)."""
    if loc and loc[0] == "retries":
        model = RetriesModel
    elif loc and loc[0] == "misfire":
        model = MisfireModel
    fields = model.model_fields
    return sorted(fields, key=lambda name: not fields[name].is_required())
