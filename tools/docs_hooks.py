"""MkDocs hooks: the HTTP API schema and the benchmark plots, made at build time.

- ``openapi.json`` is generated from the FastAPI application (no server, no network) and
  published beside the pages; ``<!-- openapi-routes -->`` in a page becomes a table of its
  routes, so the HTTP API page cannot drift from the code.
- The plots the benchmark scripts write to ``benchmarks/results/`` are published under
  ``benchmarks/`` (the Markdown tables are included with ``pymdownx.snippets``).
- mkdocstrings reads the sources statically, and the top-level folders ``fingerprint/``,
  ``index/`` and ``api/`` are ``tunetrace.*`` subpackages only through the install's
  ``package-dir`` mapping: ``build/docs-python/`` gets a copy of the Python sources laid out
  as the import names say (griffe follows symbolic links back to the real folders).

Run as a script (``python tools/docs_hooks.py FILE``) it writes the schema to FILE.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

logger = logging.getLogger("mkdocs.hooks.tunetrace")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
#: Where the import-name view of the sources is laid out (``paths`` of mkdocstrings).
SOURCE_VIEW = ROOT / "build" / "docs-python"
ROUTES_MARKER = "<!-- openapi-routes -->"
_METHODS = ("get", "post", "put", "patch", "delete")

_schema: dict[str, Any] | None = None


def openapi_schema() -> dict[str, Any]:
    """The HTTP API's OpenAPI schema, as ``GET /openapi.json`` serves it."""
    from tunetrace.api.app import create_app
    from tunetrace.api.settings import ApiSettings

    # The schema does not depend on the settings' values; the app opens nothing until its
    # lifespan starts, which building the schema does not do.
    settings = ApiSettings(catalogue=Path("catalogue"), api_keys="docs:read", workers=1)
    return create_app(settings).openapi()


@event_priority(100)  # before mkdocstrings reads its search paths
def on_config(config: Any) -> Any:
    """Lay out the sources by import name for mkdocstrings, before any page is rendered."""
    lay_out_sources(SOURCE_VIEW)
    return config


def lay_out_sources(target: Path) -> None:
    """Copy the Python sources under ``target`` as pyproject's ``package-dir`` maps them."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mapping: dict[str, str] = pyproject["tool"]["setuptools"]["package-dir"]
    if target.exists():
        shutil.rmtree(target)
    for package, folder in sorted(mapping.items(), key=lambda item: item[0].count(".")):
        destination = target.joinpath(*package.split("."))
        source = (ROOT / folder).resolve()
        if "." not in package:  # the root: its own files, beside the mapped subpackages
            destination.mkdir(parents=True)
            for child in source.glob("*.py"):
                shutil.copy2(child, destination / child.name)
        else:
            shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"))


def on_files(files: Files, config: Any) -> Files:
    """Add ``openapi.json`` and the benchmark plots to the site."""
    global _schema
    _schema = openapi_schema()
    files.append(
        File.generated(config, "openapi.json", content=json.dumps(_schema, indent=2) + "\n")
    )
    for plot in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"benchmarks/{plot.name}", abs_src_path=str(plot)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace the routes marker with the table of routes."""
    if ROUTES_MARKER not in markdown:
        return markdown
    assert _schema is not None, "on_files runs before pages are read"
    return markdown.replace(ROUTES_MARKER, routes_markdown(_schema))


def routes_markdown(schema: dict[str, Any]) -> str:
    """One section per route: summary, role, parameters, request body and responses."""
    parts = []
    for path, operations in schema.get("paths", {}).items():
        for method in _METHODS:
            operation = operations.get(method)
            if operation is None:
                continue
            parts.append(_operation_markdown(schema, method, path, operation))
    return "\n".join(parts)


def _operation_markdown(
    schema: dict[str, Any], method: str, path: str, operation: dict[str, Any]
) -> str:
    lines = [f"### `{method.upper()} {path}`", ""]
    summary = operation.get("summary")
    if summary:
        lines += [f"**{summary}.**", ""]
    description = (operation.get("description") or "").strip()
    if description:
        lines += [description, ""]
    lines += [f"Authentication: {'bearer key' if operation.get('security') else 'none'}.", ""]
    parameters = operation.get("parameters", [])
    if parameters:
        lines += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        for parameter in parameters:
            lines.append(
                f"| `{parameter['name']}` | {parameter['in']} | "
                f"{_type_name(schema, parameter.get('schema', {}))} | "
                f"{'yes' if parameter.get('required') else 'no'} | "
                f"{_cell(parameter.get('description', ''))} |"
            )
        lines.append("")
    body = operation.get("requestBody", {}).get("content", {})
    for media_type, content in body.items():
        fields = _resolve(schema, content.get("schema", {})).get("properties", {})
        names = ", ".join(f"`{name}`" for name in fields) or "-"
        lines += [f"Request body: `{media_type}` with {names}.", ""]
    responses = operation.get("responses", {})
    if responses:
        lines += ["| status | description |", "|---|---|"]
        for status, response in responses.items():
            lines.append(f"| {status} | {_cell(response.get('description', ''))} |")
        lines.append("")
    return "\n".join(lines)


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    reference = node.get("$ref")
    if not reference:
        return node
    target: Any = schema
    for part in reference.removeprefix("#/").split("/"):
        target = target[part]
    return target


def _type_name(schema: dict[str, Any], node: dict[str, Any]) -> str:
    node = _resolve(schema, node)
    if "anyOf" in node:
        return " or ".join(_type_name(schema, option) for option in node["anyOf"])
    return str(node.get("type", "object"))


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tools/docs_hooks.py OPENAPI.json")
    Path(sys.argv[1]).write_text(json.dumps(openapi_schema(), indent=2) + "\n", encoding="utf-8")
