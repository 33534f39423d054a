"""Every public module declares ``__all__`` and every public name has a docstring; ``protobind``'s
``__all__`` is exactly the names the README and docs present as its API."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import protobind

# Generated protobuf modules and the committed conformance stubs are not hand-written API.
_GENERATED = (".conformance", ".v1")


def _public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(protobind.__path__, "protobind."):
        parts = info.name.split(".")
        if any(part.startswith("_") for part in parts) or any(g in info.name for g in _GENERATED):
            continue
        names.append(info.name)
    return names


def test_every_public_module_declares_all() -> None:
    missing = [name for name in _public_modules() if not hasattr(importlib.import_module(name), "__all__")]
    assert missing == []


def test_every_public_name_has_a_docstring() -> None:
    missing = []
    for name in _public_modules():
        module = importlib.import_module(name)
        if not module.__doc__:
            missing.append(name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or obj.__module__ != name:
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{name}.{attr}")
            if inspect.isclass(obj):
                for member, value in vars(obj).items():
                    if member.startswith("_"):
                        continue
                    function = (
                        value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                    )
                    if inspect.isfunction(function) and not inspect.getdoc(getattr(obj, member)):
                        missing.append(f"{name}.{attr}.{member}")
    assert missing == []


def test_all_names_exist() -> None:
    for name in _public_modules():
        module = importlib.import_module(name)
        assert [attr for attr in module.__all__ if not hasattr(module, attr)] == [], name
