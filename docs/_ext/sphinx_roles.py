"""A griffe extension for the API reference: the package's docstrings use Sphinx roles
(``:meth:`purge```, ``:class:`TaskNotFound```) and ``::`` before example blocks; mkdocstrings
renders Markdown. This rewrites, at load time and for the docs only (the source is unchanged):

- a role whose target resolves, from the docstring's class or module, to an object the reference
  documents (``documented``: canonical paths of documented classes/modules and their members)
  becomes a cross-reference ``[`name`][canonical.path]``, checked by ``mkdocs build --strict``;
- any other role becomes plain code (``name``), so a docstring never points at a page that does
  not exist;
- a paragraph ending in ``::`` (reST's "an example follows") ends in ``:``, and the indented
  block after it becomes a fenced code block (``python`` when it parses as Python, else ``text``).
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

import griffe

ROLE = re.compile(r":(?:meth|class|func|attr|mod|exc|data|obj):`(~?)([^`<>]+?)`")


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles into Markdown cross-references (see the module docstring)."""

    def __init__(self, documented: list[str] | None = None) -> None:
        super().__init__()
        self.documented = tuple(documented or ())

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = self._rewrite(obj, obj.docstring.value)

    def _is_documented(self, path: str) -> bool:
        return any(path == p or path.startswith(p + ".") for p in self.documented)

    def _rewrite(self, obj: griffe.Object, text: str) -> str:
        def replace(m: re.Match[str]) -> str:
            target = m.group(2).strip().lstrip(".")
            shown = target.rsplit(".", 1)[-1] if m.group(1) else target
            path = _resolve(obj, target)
            if path is not None and self._is_documented(path):
                return f"[`{shown}`][{path}]"
            return f"`{shown}`"

        return _literal_blocks(ROLE.sub(replace, text))


def _literal_blocks(text: str) -> str:
    """reST literal blocks (a line ending in ``::``, a blank line, an indented block) to fences."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.search(r"\S::\s*$", line) is None:
            out.append(line)
            i += 1
            continue
        out.append(re.sub(r"::\s*$", ":", line))
        i += 1
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
            if lines[i].strip() or block:
                block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        if block:
            code = textwrap.dedent("\n".join(block))
            out += ["", f"```{_language(code)}", *code.split("\n"), "```", ""]
    return "\n".join(out)


def _language(code: str) -> str:
    try:
        compile(code, "<docstring>", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return "text"
    return "python"


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_walk(member))  # type: ignore[arg-type]
    return found


def _scopes(obj: griffe.Object) -> list[griffe.Object]:
    """Where a name in ``obj``'s docstring is looked up: itself, its class, its module, the package."""
    scopes: list[griffe.Object] = []
    current: griffe.Object | None = obj
    while current is not None:
        if current.is_class or current.is_module:
            scopes.append(current)
        current = current.parent
    return scopes


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The canonical path of ``target`` as seen from ``obj``, or None."""
    parts = target.split(".")
    scopes = _scopes(obj)
    if len(parts) > 1 and parts[0] == scopes[-1].name:  # a full path: from the package
        scopes, parts = scopes[-1:], parts[1:]
    for scope in scopes:
        found: Any = scope
        for part in parts:
            try:
                found = found.members.get(part)
                if found is not None and found.is_alias:
                    found = found.final_target
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                found = None
            if found is None:
                break
        if found is not None:
            return str(found.path)
    return None
