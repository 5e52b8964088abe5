"""The parameters a notebook declares (its cell tagged ``parameters``), and CLI values."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from notifier.errors import RunError

RUN_METADATA = ("run_id", "scheduled_for", "job_name")


def load_notebook_json(path: Path) -> dict[str, Any]:
    """The notebook as JSON, with a clear error when it is missing or not a notebook."""
    if not path.is_file():
        raise RunError(f"The notebook {str(path)!r} does not exist.", "check the path")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunError(
            f"{str(path)!r} is not a Jupyter notebook ({error}).",
            "pass an .ipynb file saved by Jupyter",
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise RunError(f"{str(path)!r} is not a Jupyter notebook.", "pass an .ipynb file")
    return data


def _parameters_source(notebook: dict[str, Any]) -> str | None:
    """The source of the first code cell tagged ``parameters`` (None: there is none)."""
    for cell in notebook["cells"]:
        if cell.get("cell_type") != "code":
            continue
        if "parameters" not in cell.get("metadata", {}).get("tags", []):
            continue
        source = cell.get("source", "")
        return "".join(source) if isinstance(source, list) else source
    return None


def declared_parameters(notebook: dict[str, Any]) -> list[str] | None:
    """Names assigned in the cell tagged ``parameters``; None when there is no such cell."""
    # ast, not papermill.inspect_notebook: its line-by-line parser misses `a = b = 1` and
    # `x, y = 1, 2`, counts names assigned inside functions and accepts a broken cell
    source = _parameters_source(notebook)
    if source is None:
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise RunError(
            f"The parameters cell does not parse: {error.msg} (line {error.lineno}).",
            "fix the parameters cell",
        ) from None
    names: list[str] = []
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else ([node.target] if isinstance(node, ast.AnnAssign) else [])
        )
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def parameter_defaults(notebook: dict[str, Any]) -> dict[str, str]:
    """Each declared parameter's default as written in the parameters cell (source text)."""
    source = _parameters_source(notebook)
    if source is None:
        return {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            text = ast.get_source_segment(source, node.value) or ""
            found.update({t.id: text for t in targets if isinstance(t, ast.Name)})
    return found


def check_parameters(notebook_path: Path, given: dict[str, Any]) -> None:
    """Refuse parameters the notebook does not declare (papermill would only warn)."""
    notebook = load_notebook_json(notebook_path)
    if not given:
        return
    declared = declared_parameters(notebook)
    if declared is None:
        raise RunError(
            f"{notebook_path.name} has no cell tagged 'parameters', so it takes no parameters "
            f"(given: {', '.join(sorted(given))}).",
            "in JupyterLab select the cell that assigns the defaults, open the property "
            "inspector and add the tag 'parameters'",
        )
    unknown = sorted(set(given) - set(declared) - set(RUN_METADATA))
    if unknown:
        raise RunError(
            f"{notebook_path.name} does not declare the parameter(s) {', '.join(unknown)}; "
            f"it declares: {', '.join(declared) or '(none)'}.",
            "check the spelling, or add the name to the notebook's parameters cell",
        )


def parse_cli_value(raw: str) -> Any:
    """Like papermill's ``-p``: True/False/None, int and float are typed; the rest is text."""
    if raw in {"True", "False", "None"}:
        return {"True": True, "False": False, "None": None}[raw]
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw
