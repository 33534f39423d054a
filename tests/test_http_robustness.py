"""The HTTP binding against careless and hostile clients (issue 9, items 9 and 13): one status for
every oversized body, honest ``Allow`` and ``OPTIONS``, slow bodies and connection floods bounded,
Connect protocol versions and GET parameters checked, base64 validated, short JSON errors. The
requests made through the ``raw`` fixture run over HTTP/1.1 and HTTP/2; the HTTP/2 forms of the
slow-body and connection limits are in test_http_h2_limits.py."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

import protobind

from .conformance import Conformance

SERVICE = "/protobind.conformance.v1.ConformanceService"
JSON_HEADERS = {"content-type": "application/json"}


@contextlib.asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[str, int]]:
    server = protobind.Server([Conformance()], transport_options={"http": options})
    (url,) = await server.start("http://127.0.0.1:0")
    try:
        yield url, int(url.rsplit(":", 1)[1])
    finally:
        await server.stop(0)


@pytest.fixture(params=["HTTP/1.1", "HTTP/2"])
async def raw(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a server with a 1000-byte message limit, over each HTTP version (h2c with prior
    knowledge for HTTP/2); every response is checked to have come over that version."""
    version: str = request.param

    async def same_version(response: httpx.Response) -> None:
        assert response.http_version == version

    http2 = version == "HTTP/2"
    async with (
        serving(max_message_size=1000) as (url, _),
        httpx.AsyncClient(
            base_url=url, http1=not http2, http2=http2, event_hooks={"response": [same_version]}
        ) as client,
    ):
        yield client


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert "Traceback" not in body["message"]
    return str(body["message"])


async def test_gzip_inflating_past_the_limit_is_413_like_a_plain_oversized_body(
    raw: httpx.AsyncClient,
) -> None:
    plain = json.dumps({"text": "x" * 2000}).encode()
    _error(await raw.post(f"{SERVICE}/Unary", content=plain, headers=JSON_HEADERS), 413, "resource_exhausted")
    bomb = gzip.compress(plain)
    assert len(bomb) < 1000
    headers = {**JSON_HEADERS, "content-encoding": "gzip"}
    message = _error(
        await raw.post(f"{SERVICE}/Unary", content=bomb, headers=headers), 413, "resource_exhausted"
    )
    assert "1000 bytes" in message
    # also on GET with compression=gzip
    query = {"encoding": "json", "compression": "gzip", "base64": "1", "message": _b64url(bomb)}
    _error(await raw.get(f"{SERVICE}/Lookup", params=query), 413, "resource_exhausted")


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")


async def test_options_and_allow_list_the_methods_a_route_takes(raw: httpx.AsyncClient) -> None:
    lookup = await raw.options(f"{SERVICE}/Lookup")  # marked NO_SIDE_EFFECTS: GET works too
    assert lookup.status_code == 204
    assert lookup.headers["allow"] == "GET, POST, OPTIONS"
    unary = await raw.options(f"{SERVICE}/Unary")
    assert unary.status_code == 204
    assert unary.headers["allow"] == "POST, OPTIONS"
    put = await raw.put(f"{SERVICE}/Lookup", content=b"{}")
    _error(put, 405, "unimplemented")
    assert put.headers["allow"] == "GET, POST, OPTIONS"
    get = await raw.get(f"{SERVICE}/Unary", params={"encoding": "json", "message": "{}"})
    _error(get, 405, "unimplemented")
    assert get.headers["allow"] == "POST, OPTIONS"


async def test_connect_protocol_version_other_than_1_is_refused(raw: httpx.AsyncClient) -> None:
    headers = {**JSON_HEADERS, "connect-protocol-version": "2"}
    message = _error(await raw.post(f"{SERVICE}/Unary", json={}, headers=headers), 400, "invalid_argument")
    assert "Connect-Protocol-Version" in message
    ok = await raw.post(f"{SERVICE}/Unary", json={"text": "v1"}, headers={"connect-protocol-version": "1"})
    assert ok.json()["text"] == "v1"
    query = {"encoding": "json", "message": "{}", "connect": "v2"}
    _error(await raw.get(f"{SERVICE}/Lookup", params=query), 400, "invalid_argument")
    stream = await raw.post(
        f"{SERVICE}/ServerStream",
        content=b"\x00\x00\x00\x00\x02{}",
        headers={"content-type": "application/connect+json", "connect-protocol-version": "0"},
    )
    _error(stream, 400, "invalid_argument")


async def test_connect_get_without_message_is_refused(raw: httpx.AsyncClient) -> None:
    message = _error(await raw.get(f"{SERVICE}/Lookup", params={"encoding": "json"}), 400, "invalid_argument")
    assert "message" in message
    ok = await raw.get(f"{SERVICE}/Lookup", params={"encoding": "json", "message": '{"text": "g"}'})
    assert ok.json()["text"] == "g"


@pytest.mark.parametrize("payload", ["!!!", "a", "ab$d", "aGk=x"])
async def test_bytes_field_with_invalid_base64_is_invalid_argument(
    raw: httpx.AsyncClient, payload: str
) -> None:
    message = _error(await raw.post(f"{SERVICE}/Unary", json={"payload": payload}), 400, "invalid_argument")
    assert message == 'invalid JSON for protobind.conformance.v1.Request: field "payload": not valid base64'
    for good in ("aGk", "aGk=", "-_-_", ""):
        assert (await raw.post(f"{SERVICE}/Unary", json={"payload": good})).status_code == 200


async def test_json_errors_are_short_and_name_the_field(raw: httpx.AsyncClient) -> None:
    message = _error(await raw.post(f"{SERVICE}/Unary", json={"nmae": "x"}), 400, "invalid_argument")
    assert message == 'invalid JSON for protobind.conformance.v1.Request: unknown field "nmae"'
    nested = _error(
        await raw.post(f"{SERVICE}/Unary", json={"behavior": {"sleepMs": "soon"}}), 400, "invalid_argument"
    )
    assert nested == (
        "invalid JSON for protobind.conformance.v1.Request: "
        'field "behavior.sleepMs": expected a 32-bit integer'
    )
    for bad in ({"text": 1}, {"tags": [1]}, {"when": "yesterday"}, {"labels": []}):
        text = _error(await raw.post(f"{SERVICE}/Unary", json=bad), 400, "invalid_argument")
        assert "Available Fields" not in text and "int()" not in text and len(text) < 160


async def _hold(port: int, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    return reader, writer


def _head(path: str, length: int, content_type: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\ncontent-length: {length}\r\n\r\n"
    ).encode()


async def test_body_timeout_answers_408_and_closes_slow_requests() -> None:
    async with serving(body_timeout=0.3) as (url, port):
        slow = [await _hold(port, _head(f"{SERVICE}/Unary", 100) + b'{"te') for _ in range(20)]
        stream = await _hold(
            port, _head(f"{SERVICE}/ServerStream", 100, "application/connect+json") + b"\x00"
        )
        try:
            for reader, _ in slow:
                answer = await asyncio.wait_for(reader.read(), 10)  # read() returns at EOF: closed
                assert answer.startswith(b"HTTP/1.1 408 ")
                assert b'"code":"deadline_exceeded"' in answer and b"body_timeout" in answer
            answer = await asyncio.wait_for(stream[0].read(), 10)
            assert answer.startswith(b"HTTP/1.1 200 ") and b"deadline_exceeded" in answer
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await client.post(f"{SERVICE}/Unary", json={"text": "on"})).json()["text"] == "on"
        finally:
            for _, writer in [*slow, stream]:
                writer.close()


async def test_max_connections_bounds_open_connections() -> None:
    async with serving(max_connections=2) as (url, port):
        idle = await _hold(port, b"")
        busy: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            async with httpx.AsyncClient(base_url=url) as client:  # the second connection is served
                assert (await client.post(f"{SERVICE}/Unary", json={"text": "2"})).json()["text"] == "2"
                # a third, while both others are open, is refused
                body = b"{}"
                busy = await _hold(port, _head(f"{SERVICE}/Unary", len(body)) + body)
                answer = await asyncio.wait_for(busy[0].read(), 10)
                assert answer.startswith(b"HTTP/1.1 503 ")
        finally:
            idle[1].close()
            if busy is not None:
                busy[1].close()


async def test_json_error_text_is_the_same_on_nats(
    raw: httpx.AsyncClient, harnesses: dict[str, Callable[[], str]]
) -> None:
    import nats

    server = protobind.Server([Conformance()])
    (url,) = await server.start(harnesses["nats"]())
    base, _, query = url.partition("?")
    prefix = dict(parse_qsl(query)).get("prefix", "")
    prefix += "." if prefix and not prefix.endswith(".") else ""
    nc = await nats.connect(base)
    try:
        subject = f"{prefix}protobind.conformance.v1.ConformanceService.Unary"
        for body in ({"nmae": "x"}, {"payload": "!!!"}):
            reply = await nc.request(
                subject, json.dumps(body).encode(), timeout=5, headers={"Content-Type": "application/json"}
            )
            over_nats = json.loads(reply.data)
            over_http = (await raw.post(f"{SERVICE}/Unary", json=body)).json()
            assert over_nats["code"] == over_http["code"] == "invalid_argument"
            assert over_nats["message"] == over_http["message"]
    finally:
        await nc.close()
        await server.stop(0)


def _headers_of(size: int) -> str:
    """Header lines adding up to about ``size`` bytes (counted as max_header_size counts them)."""
    return "".join(f"x-filler-{i}: {'v' * 968}\r\n" for i in range(size // 1000))


@pytest.mark.parametrize("parser", ["zttp", "h11", "httptools"])
@pytest.mark.parametrize("size", [12_000, 200_000], ids=["over-the-option", "over-the-parser"])
async def test_oversized_headers_are_431_without_echoing_them(parser: str, size: int) -> None:
    """Headers over max_header_size: 431 and RESOURCE_EXHAUSTED, never the headers themselves
    (just over the option: the app refuses; far over: the parser, which used to answer 400, or
    with httptools took 1 MB of headers). The server keeps serving."""
    async with serving(http_parser=parser, max_header_size=10_000) as (url, port):
        body = b'{"text":"x"}'
        for extra, expected in (
            (_headers_of(8_000), b"HTTP/1.1 200 "),
            (_headers_of(size), b"HTTP/1.1 431 "),
        ):
            head = _head(f"{SERVICE}/Unary", len(body)).replace(
                b"\r\n\r\n", b"\r\n" + extra.encode() + b"\r\n"
            )
            reader, writer = await _hold(port, head + body)
            try:
                answer = await asyncio.wait_for(reader.read(4096), 10)
            finally:
                writer.close()
            assert answer.startswith(expected), answer[:200]
        assert b'"code":"resource_exhausted"' in answer and b"max_header_size" in answer
        assert b"x-filler" not in answer and b"vvvv" not in answer
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.post(f"{SERVICE}/Unary", json={"text": "on"})).json()["text"] == "on"
