"""One error tree: every exception the project defines lives in services/errors.py under one root."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import services
from services.errors import FallbackRoutingError, GatewayError, envelope


def project_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module in pkgutil.walk_packages(services.__path__, "services."):
        loaded = importlib.import_module(module.name)
        for name, value in vars(loaded).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("services.")
            ):
                found[f"{value.__module__}.{name}"] = value
    return found


def test_every_project_exception_is_in_the_one_tree() -> None:
    """Defined in services/errors.py (re-exports elsewhere are the same class), under one root."""
    exceptions = project_exceptions()
    assert len(exceptions) > 10
    for where, cls in exceptions.items():
        assert cls.__module__ == "services.errors", where
        assert issubclass(cls, FallbackRoutingError), where


def test_every_client_facing_error_renders_the_envelope() -> None:
    """Each GatewayError has a 4xx/5xx status, an OpenAI type and renders as the envelope."""
    for cls in {c for c in project_exceptions().values() if issubclass(c, GatewayError)}:
        assert 400 <= cls.status <= 599, cls
        assert envelope("m", cls.type, cls.code).startswith(b'{"error":{"message":"m"')
