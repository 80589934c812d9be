"""The folders of ``tasks/`` say what their code may touch (docs/architecture.md): an import
that crosses a layer's line, a pure decision module that imports a network or database
library, or an import of another module's private name fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "tasks.config",
    "tasks.errors",
    "tasks.expressions",
    "tasks.logs",
    "tasks.batching",
    "tasks.results",
}
ALLOWED = {
    "base": BASE,
    "tasks.ldap": BASE | {"tasks.ldap", "tasks.state"},
    "tasks.scim": BASE | {"tasks.scim"},
    "tasks.state": BASE | {"tasks.state"},
    "tasks.sync": BASE | {"tasks.sync", "tasks.ldap", "tasks.scim", "tasks.state"},
    "tasks.reconcile": BASE
    | {"tasks.reconcile", "tasks.ldap", "tasks.scim", "tasks.sync", "tasks.state"},
    "tasks.sso": BASE | {"tasks.sso", "tasks.ldap", "tasks.state", "tasks.sync"},
}
WHOLE = {"tasks.report", "tasks.check"}
"""Base modules that report on or check everything."""
PURE = {
    "tasks.sync.transform",
    "tasks.sync.plan",
    "tasks.sync.group_plan",
    "tasks.sync.guard",
    "tasks.reconcile.classify",
    "tasks.reconcile.compact",
    "tasks.ldap.dn",
    "tasks.ldap.syncrepl",
    "tasks.expressions",
    "tasks.sso.policy",
    "tasks.sso.throttle",
}
"""Decision modules: no network or database library of their own."""
IO_LIBRARIES = (
    "ldap3.core.connection",
    "ldap3.strategy",
    "requests",
    "sqlalchemy",
    "socket",
    "urllib3",
)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "tasks").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            continue
        found[".".join(parts)] = path
    return found


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every ``from X import names`` and ``import X`` in a file."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [a.name for a in node.names]
            if node.module == "tasks" or node.module.startswith("tasks."):
                for name in names:  # `from tasks.ldap import syncrepl`: a module
                    candidate = f"{node.module}.{name}"
                    if candidate in modules():
                        found.append((candidate, []))
                        break
                else:
                    found.append((node.module, names))
            else:
                found.append((node.module, names))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    return "base" if len(parts) == 2 else ".".join(parts[:2])


def test_every_import_stays_within_its_layer() -> None:
    crossing = []
    for module, path in modules().items():
        if module in WHOLE:
            continue
        allowed = ALLOWED[layer(module)]
        for imported, _ in imports(path):
            if not imported.startswith("tasks."):
                continue
            if not any(imported == a or imported.startswith(a + ".") for a in allowed):
                crossing.append(f"{module} imports {imported}")
    assert not crossing, crossing


def test_decision_modules_touch_no_network_or_database() -> None:
    touching = [
        f"{module} imports {imported}"
        for module, path in modules().items()
        if module in PURE
        for imported, names in imports(path)
        if imported.startswith(IO_LIBRARIES)
        or (imported == "ldap3" and set(names) & {"Connection", "Server"})
    ]
    assert not touching, touching


def test_no_module_imports_another_modules_private_names() -> None:
    private = [
        f"{path.relative_to(ROOT)} imports {imported}.{name}"
        for folder in ("flows", "tasks", "deployments")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for imported, names in imports(path)
        if imported.startswith(("flows", "tasks", "deployments"))
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not private, private
