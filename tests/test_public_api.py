"""The public surface: the public modules are :data:`PUBLIC`, and docs/architecture.md ("Public
API") lists each one's ``__all__``; every other module is internal. Every module declares ``__all__``
and every name in it has a docstring; importing protobind loads no transport library, and a
transport whose extra is missing says what to install."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys

import protobind

from .support import ROOT

#: The public modules: what applications import, then what a transport or a broker from another
#: package builds on. Every other module is internal (docs/architecture.md, "Public API").
PUBLIC = [
    "protobind",
    "protobind.auth",
    "protobind.config",
    "protobind.durable",
    "protobind.reflection",
    "protobind.sync",
    "protobind.telemetry",
    "protobind.workers",
    "protobind.cli",
    "protobind.testing",
    "protobind.testing.plugin",
    "protobind.testing.conformance",
    "protobind.testing.conformance.service",
    "protobind.grpc",
    "protobind.http",
    "protobind.http.openapi",
    "protobind.nats",
    "protobind.nats.embedded",
    "protobind.kafka.embedded",
    "protobind.inproc",
    "protobind.memory",
    "protobind.amqp",
    "protobind.mqtt",
    "protobind.kafka",
    # for transports and brokers
    "protobind.transport",
    "protobind.endpoints",
    "protobind.options",
    "protobind.method",
    "protobind.codec",
    "protobind.limits",
    "protobind.urls",
    "protobind.broker",
    "protobind.broker.base",
    "protobind.broker.server",
    "protobind.broker.client",
]

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


def test_import_loads_no_transport_library() -> None:
    code = (
        "import sys, protobind, protobind.conformance.v1.conformance_protobind\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('grpc', 'nats', 'starlette', 'uvicorn', 'pyqwest', 'aiohttp', 'httpx', 'jinja2', 'grpc_tools'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_missing_extra_gives_an_install_hint() -> None:
    code = (
        "import sys\n"
        "sys.modules['nats'] = None  # as if protobind[nats] were not installed\n"
        "import protobind\n"
        "try:\n"
        "    protobind.connect('nats://127.0.0.1:4222')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'protobind[nats]'" in out.stdout


def _documented() -> dict[str, set[str]]:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("## Public API", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and (module := re.fullmatch(r"`(protobind[a-z_.]*)`", cells[0])):
            rows[module[1]] = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[2]))
    return rows


def test_the_public_modules_and_their_all_are_documented() -> None:
    """docs/architecture.md has one row per public module, in this order, listing its ``__all__``."""
    documented = _documented()
    assert list(documented) == PUBLIC
    for name in PUBLIC:
        assert set(importlib.import_module(name).__all__) == documented[name], name


def test_the_public_modules_exist_and_are_not_private() -> None:
    modules = {info.name for info in pkgutil.walk_packages(protobind.__path__, "protobind.")}
    assert set(PUBLIC) - {"protobind"} <= modules
    assert not [name for name in PUBLIC if any(part.startswith("_") for part in name.split("."))]
    assert all(hasattr(protobind, name) for name in protobind.__all__)
