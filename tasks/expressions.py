"""The grammar of a mapping leaf (a *source expression*), shared by the extract step (which LDAP
attributes to read) and the transform step (what value to build).

    expression   := alternative (" || " alternative)*      the first that yields a value
    alternative  := function "(" alternative ")"            lower, upper, trim
                  | "=" text                                a constant
                  | "$id" | "$dn"                           the entry's source id / DN
                  | "@" attribute                           a reference (see tasks.sync.transform)
                  | template                                "{givenName} {sn}"
                  | attribute                               an LDAP attribute

Examples: ``"=Employee"`` (a fixed userType), ``"title || =Staff"`` (a default when empty),
``"lower(mail)"``, ``"lower({uid}@example.org)"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

FUNCTIONS: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "upper": str.upper,
    "trim": str.strip,
}
_CALL = re.compile(r"^([A-Za-z_]+)\((.*)\)$")
_TEMPLATE_FIELD = re.compile(r"\{([^{}]+)\}")


def alternatives(expression: str) -> list[str]:
    """The alternatives of an expression, in order."""
    return [part.strip() for part in expression.split(" || ")]


def call(alternative: str) -> tuple[Callable[[str], str] | None, str]:
    """``(function, inner)`` for ``lower(x)``; ``(None, alternative)`` otherwise. An unknown
    function name raises ValueError (an LDAP attribute never holds parentheses)."""
    match = _CALL.match(alternative)
    if match is None:
        return None, alternative
    name, inner = match.groups()
    if name not in FUNCTIONS:
        raise ValueError(f"unknown function {name}() (known: {', '.join(sorted(FUNCTIONS))})")
    return FUNCTIONS[name], inner


def attributes(expression: str) -> set[str]:
    """The LDAP attributes an expression reads."""
    names: set[str] = set()
    for alternative in alternatives(expression):
        function, inner = call(alternative)
        while function is not None:
            function, inner = call(inner)
        if inner.startswith("=") or inner in ("$id", "$dn"):
            continue
        inner = inner.removeprefix("@")
        if "{" in inner:
            names.update(_TEMPLATE_FIELD.findall(inner))
        elif inner:
            names.add(inner)
    return names


def check(expression: str) -> None:
    """Raise ValueError when an expression does not follow the grammar."""
    for alternative in alternatives(expression):
        if not alternative:
            raise ValueError(f"{expression!r}: an empty alternative around ||")
        function, inner = call(alternative)
        while function is not None:
            function, inner = call(inner)
