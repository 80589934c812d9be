"""The documentation keeps up with the code: a short README, every module and every config key
documented."""

from __future__ import annotations

import types
import typing
from pathlib import Path

from pydantic import BaseModel

from tasks.config import Config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_the_readme_is_read_in_five_minutes() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024


def test_every_module_is_in_the_architecture_map() -> None:
    """A module under flows/, tasks/ or deployments/ missing from docs/architecture.md fails."""
    text = (DOCS / "architecture.md").read_text()
    modules = [
        path.relative_to(ROOT).as_posix()
        for folder in ("flows", "tasks", "deployments")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name != "__init__.py"
    ]
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"not in docs/architecture.md: {missing}"


def _models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for argument in typing.get_args(annotation):
        found += _models(argument)
    if isinstance(annotation, types.UnionType):
        for argument in annotation.__args__:
            found += _models(argument)
    return found


def config_keys(model: type[BaseModel] = Config) -> set[str]:
    """Every key of the config file, at every depth (field names)."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        for sub in _models(field.annotation):
            keys |= config_keys(sub)
    return keys


def test_every_config_key_is_in_the_configuration_reference() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = sorted(
        key for key in config_keys() if f"`{key}" not in text and f".{key}`" not in text
    )
    assert not missing, f"not in docs/configuration.md: {missing}"
