"""Reading a jobs file safely: size and structure limits, YAML with line numbers.

No alias is expanded (a 400-byte alias bomb would otherwise take minutes and gigabytes),
nesting and number lengths are bounded, and every problem is one error with its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from notifier.errors import JobsFileError
from notifier.jobs.locate import ErrorReport

MAX_FILE_BYTES = 1024 * 1024  # ~7,000 jobs; anything bigger is a mistake, not a jobs file


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


def parse_yaml(text: str, shown: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data; JobsFileError for unsafe or bad YAML."""
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


def check_duplicate_keys(node: yaml.Node | None, report: ErrorReport) -> None:
    """Report a key given twice in one mapping (YAML would silently keep the last)."""
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
            check_duplicate_keys(value, report)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            check_duplicate_keys(item, report)


def read_file(path: Path, shown: str) -> str:
    """The file's text (at most MAX_FILE_BYTES, UTF-8), or one JobsFileError saying why not."""
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
