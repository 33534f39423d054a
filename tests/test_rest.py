"""google.api.http REST routes, served by a real uvicorn server and called with httpx."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from google.rpc import error_details_pb2
from library.v1 import library_pb2 as lib
from restcheck.v1 import restcheck_pb2
from restcheck.v1 import restcheck_protobind as rc

import protobind
from protobind.http._rule import collect_bindings, parse_template

from .library_service import Library
from .servers import serve_asgi


async def _start(service: Library, *, ignore_unknown_fields: bool = False) -> tuple[str, Any]:
    """Serve ``service`` with the HTTP binding on 127.0.0.1; return (base URL, stop coroutine function)."""
    server = protobind.Server(
        [service], transport_options={"http": {"ignore_unknown_fields": ignore_unknown_fields}}
    )
    (url,) = await server.start("http://127.0.0.1:0")

    async def stop() -> None:
        await server.stop(grace=1.0)

    return url, stop


async def _start_routes_only(service: Library, **options: Any) -> tuple[str, Any]:
    """Serve only ``rest_routes(...)`` in a bare Starlette app (options the binding may not pass)."""
    from starlette.applications import Starlette

    from protobind.http._rest import rest_routes

    server = protobind.Server([service])
    app = Starlette(routes=rest_routes(server, **options))
    return await serve_asgi(app, http="h11")


@pytest.fixture
async def library() -> AsyncIterator[tuple[httpx.AsyncClient, Library]]:
    service = Library()
    base, stop = await _start(service)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            yield client, service
    finally:
        await stop()


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == code, body
    return body  # type: ignore[no-any-return]


# --- routes ----------------------------------------------------------------------------------------


async def test_get_with_nested_path_variable(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, service = library
    response = await client.get("/v1/shelves/1/books/2", headers={"x-user": "ada"})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "name": "shelves/1/books/2",
        "title": "Dune",
        "isbn": "9780441013593",
        "genre": "FICTION",
    }
    assert response.headers["x-served-by"] == "rest"
    assert response.headers["trailer-x-checksum"] == "abc"
    assert base64.b64decode(response.headers["trailer-x-raw-bin"] + "==") == b"\x00\x01"
    context = service.contexts[-1]
    assert context.transport == "http"
    assert context.method == "library.v1.Library/GetBook"
    assert context.metadata["x-user"] == "ada"
    assert context.peer.startswith("127.0.0.1:")
    assert context.deadline is None


async def test_path_values_are_percent_decoded(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, service = library
    # a multi-segment variable keeps %2F as it is, the rest is decoded
    response = await client.get("/v1/shelves/a%20b/books/c%2Fd%C3%A9")
    assert response.status_code == 200, response.text
    assert service.requests[-1].name == "shelves/a b/books/c%2Fdé"
    # ** takes any number of segments
    response = await client.get("/v1/files/docs/2024/report%2Fv2.txt")
    assert response.json() == {"path": "docs/2024/report%2Fv2.txt"}
    response = await client.get("/v1/files/x")
    assert response.json() == {"path": "x"}


async def test_single_segment_variable_is_fully_decoded_and_typed(
    library: tuple[httpx.AsyncClient, Library],
) -> None:
    client, service = library
    response = await client.get("/v1/shelves/by-id/42")
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "shelves/42", "id": "42"}
    assert service.requests[-1].id == 42
    body = _error(await client.get("/v1/shelves/by-id/forty-two"), 400, "invalid_argument")
    assert "path variable id" in body["message"] and "int64" in body["message"]


async def test_post_with_body_field_and_query(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, service = library
    book = {"title": "Emma", "author": "Austen", "genre": "FICTION", "tags": ["classic"], "pageCount": 474}
    response = await client.post("/v1/shelves/7/books", params={"bookId": "emma"}, json=book)
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "shelves/7/books/emma"
    request = service.requests[-1]
    assert request.parent == "shelves/7"
    assert request.book_id == "emma"
    assert request.book.title == "Emma" and request.book.page_count == 474
    # proto field names work in the query string too
    await client.post("/v1/shelves/7/books?book_id=x", json={})
    assert service.requests[-1].book_id == "x"
    # an empty body is an empty book
    response = await client.post("/v1/shelves/7/books")
    assert response.status_code == 200, response.text


async def test_patch_path_wins_over_body(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, service = library
    response = await client.patch(
        "/v1/shelves/1/books/2",
        params={"updateMask": "title,author"},
        json={"name": "shelves/9/books/9", "title": "New"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "shelves/1/books/2", "title": "New"}
    assert list(service.requests[-1].update_mask.paths) == ["title", "author"]


async def test_query_parameters(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, service = library
    query = (
        "page.size=3&page.token=t&tags=a&tags=b&genre=HISTORY&genres=1&genres=SCIENCE"
        "&includeArchived=true&published_after=2024-01-02T03:04:05Z&hasRating=false&minRating=4.5"
        "&maxIsbn=18446744073709551615&cursor=AAEC_w&maxAge=1.5s&offset=-3"
    )
    response = await client.get(f"/v1/shelves/s/books?{query}")
    assert response.status_code == 200, response.text
    assert response.json() == {"books": [{"name": "shelves/s/books/1"}], "nextPageToken": "next"}
    request = service.requests[-1]
    assert request.parent == "shelves/s"
    assert (request.page.size, request.page.token) == (3, "t")
    assert list(request.tags) == ["a", "b"]
    assert request.genre == lib.HISTORY
    assert list(request.genres) == [lib.FICTION, lib.SCIENCE]
    assert request.include_archived is True
    assert request.published_after.seconds == 1704164645
    assert request.HasField("has_rating") and request.has_rating.value is False
    assert request.min_rating == 4.5
    assert request.max_isbn == 2**64 - 1
    assert request.cursor == b"\x00\x01\x02\xff"
    assert (request.max_age.seconds, request.max_age.nanos) == (1, 500_000_000)
    assert request.offset == -3


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("page.size=abc", ["page.size", "int32"]),
        ("page.size=1.5", ["page.size"]),
        ("page.size=99999999999", ["page.size"]),
        ("maxIsbn=-1", ["maxIsbn", "uint64"]),
        ("genre=POETRY", ["genre", "HISTORY"]),
        ("includeArchived=maybe", ["includeArchived", "bool"]),
        ("minRating=high", ["minRating", "double"]),
        ("cursor=%40%40", ["cursor", "base64"]),
        ("published_after=yesterday", ["published_after", "Timestamp"]),
        ("maxAge=5", ["maxAge", "Duration"]),
        ("page.size=1&page.size=2", ["page.size", "2 times"]),
        ("unknown=1", ["unknown", "no such field"]),
        ("page.nope=1", ["page.nope", "no such field"]),
        ("parent=shelves/x", ["parent", "path"]),
        ("page=3", ["page", "message"]),
        ("filter=x", ["filter", "map"]),
        ("pages=x", ["pages", "repeated message"]),
        ("tags=%FF", ["UTF-8"]),
    ],
)
async def test_bad_query_parameters(
    library: tuple[httpx.AsyncClient, Library], query: str, words: list[str]
) -> None:
    client, service = library
    body = _error(await client.get(f"/v1/shelves/s/books?{query}"), 400, "invalid_argument")
    for word in words:
        assert word in body["message"], body
    assert not service.requests  # the handler never ran


async def test_delete(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, service = library
    response = await client.delete("/v1/shelves/1/books/2?force=true")
    assert response.status_code == 200, response.text
    assert response.json() == {}
    assert service.requests[-1].force is True


async def test_body_star(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, _ = library
    response = await client.post(
        "/v1/shelves", json={"name": "shelves/new", "theme": "sci-fi", "extra": {"a": [1]}}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "shelves/new", "theme": "sci-fi", "extra": {"a": [1.0]}}
    body = _error(await client.post("/v1/shelves?theme=x", json={}), 400, "invalid_argument")
    assert "body" in body["message"]
    body = _error(await client.post("/v1/shelves", content=b"{not json"), 400, "invalid_argument")
    assert "library.v1.Shelf" in body["message"]
    body = _error(await client.post("/v1/shelves", json={"colour": "red"}), 400, "invalid_argument")
    assert "colour" in body["message"]
    body = _error(await client.post("/v1/shelves", json={"id": "x"}), 400, "invalid_argument")


async def test_body_field_errors(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, _ = library
    _error(await client.post("/v1/shelves/1/books", content=b"[1, 2"), 400, "invalid_argument")
    _error(await client.post("/v1/shelves/1/books", json={"isbn": "x"}), 400, "invalid_argument")
    body = _error(await client.post("/v1/shelves/1/books?book.title=x", json={}), 400, "invalid_argument")
    assert "body" in body["message"]
    # no body rule: a body is refused rather than silently dropped
    body = _error(
        await client.request("GET", "/v1/shelves/1/books/2", content=b'{"name": "x"}'),
        400,
        "invalid_argument",
    )
    assert "query string" in body["message"]


async def test_response_body(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, _ = library
    response = await client.get("/v1/shelf-names", params={"limit": 1})
    assert response.status_code == 200, response.text
    assert response.json() == ["shelves/a"]
    response = await client.get("/v1/shelf-names")
    assert response.json() == ["shelves/a", "shelves/b"]


async def test_additional_bindings_and_custom_method(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, service = library
    response = await client.get("/v1/shelves/s1")
    assert response.json() == {"name": "shelves/s1"}
    response = await client.request("FETCH", "/v1/shelves/s2")
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "shelves/s2"}
    response = await client.get("/v1/shelves/by-id/5")
    assert response.json() == {"name": "shelves/5", "id": "5"}
    assert [r.name or str(r.id) for r in service.requests] == ["shelves/s1", "shelves/s2", "5"]


async def test_verb_suffix_and_put(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, _ = library
    response = await client.post("/v1/shelves/1/books/2:archive", json={"reason": "worn"})
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "shelves/1/books/2", "title": "worn"}
    response = await client.put("/v1/shelves/1/books/2/location", json={"toShelf": "shelves/3"})
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "shelves/3/books/2"}


async def test_wrong_method_is_405(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, _ = library
    response = await client.delete("/v1/shelves/1")
    body = _error(response, 405, "unimplemented")
    assert response.headers["allow"] == "FETCH, GET"
    assert "DELETE" in body["message"]


async def test_unknown_path_and_streaming_method_are_not_routed(
    library: tuple[httpx.AsyncClient, Library],
) -> None:
    client, _ = library
    assert (await client.get("/v1/nothing/here")).status_code == 404
    assert (await client.get("/v1/shelves/1/books:watch")).status_code == 404


async def test_streaming_methods_are_skipped_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    from protobind.http._rest import rest_routes

    with caplog.at_level(logging.WARNING, logger="protobind.http._rest"):
        routes = rest_routes(protobind.Server([Library()]), ignore_unknown_fields=False)
    assert routes
    assert any("library.v1.Library/WatchBooks" in r.getMessage() for r in caplog.records)


# --- errors, deadlines, cancellation ------------------------------------------------------------


async def test_rpc_error_is_connect_error_json(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, _ = library
    body = _error(await client.get("/v1/shelves/1/books/missing"), 404, "not_found")
    assert body["message"] == "no book shelves/1/books/missing"
    (detail,) = body["details"]
    assert detail["type"] == "google.rpc.ErrorInfo"
    info = error_details_pb2.ErrorInfo.FromString(base64.b64decode(detail["value"] + "=="))
    assert info.reason == "NO_BOOK"


async def test_exception_text_never_leaks(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, _ = library
    response = await client.get("/v1/shelves/1/books/boom")
    _error(response, 500, "internal")
    assert "secret" not in response.text


async def test_deadline_from_connect_timeout_ms(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, service = library
    response = await client.get("/v1/shelves/1/books/slow", headers={"Connect-Timeout-Ms": "100"})
    _error(response, 504, "deadline_exceeded")
    response = await client.get("/v1/shelves/1/books/2", headers={"Connect-Timeout-Ms": "5000"})
    assert response.status_code == 200
    remaining = service.contexts[-1].time_remaining()
    assert remaining is not None and 0 < remaining <= 5
    _error(
        await client.get("/v1/shelves/1/books/2", headers={"Connect-Timeout-Ms": "soon"}),
        400,
        "invalid_argument",
    )


async def test_client_disconnect_cancels_the_handler(library: tuple[httpx.AsyncClient, Library]) -> None:
    client, service = library
    with pytest.raises(httpx.ReadTimeout):
        await client.get("/v1/shelves/1/books/slow", timeout=0.3)
    await asyncio.wait_for(service.cancelled.wait(), 5)
    assert service.contexts[-1].cancelled()


async def test_ignore_unknown_fields() -> None:
    service = Library()
    base, stop = await _start(service, ignore_unknown_fields=True)
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            response = await client.post(
                "/v1/shelves?colour=red", json={"name": "shelves/x", "colour": "red"}
            )
            assert response.json() == {"name": "shelves/x"}
            response = await client.get("/v1/shelves/s/books?unknown=1&page.size=2")
            assert response.status_code == 200
            assert service.requests[-1].page.size == 2
            # a known field with a bad value is still an error
            _error(await client.get("/v1/shelves/s/books?page.size=x"), 400, "invalid_argument")
    finally:
        await stop()


async def test_body_size_limit() -> None:
    service = Library()
    base, stop = await _start_routes_only(service, ignore_unknown_fields=False, max_message_size=64)
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            response = await client.post("/v1/shelves", json={"theme": "x" * 100})
            body = _error(response, 413, "resource_exhausted")
            assert "64 bytes" in body["message"]

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
                for _ in range(10):
                    yield b"          "

            _error(await client.post("/v1/shelves", content=chunks()), 413, "resource_exhausted")
            response = await client.post("/v1/shelves", json={"theme": "x"})
            assert response.status_code == 200, response.text
        assert len(service.requests) == 1
    finally:
        await stop()


async def test_rest_routes_under_a_url_prefix() -> None:
    service = Library()
    server = protobind.Server([service])
    (url,) = await server.start("http://127.0.0.1:0/api")
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            assert url.endswith("/api")
            response = await client.get(f"{url}/v1/shelves/a%2Fb/books/c")
            assert response.status_code == 200, response.text
            assert service.requests[-1].name == "shelves/a%2Fb/books/c"
    finally:
        await server.stop(grace=1.0)


def test_importing_protobind_loads_no_http_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, protobind, protobind.http.openapi, protobind.http._rule; "
        "assert 'starlette' not in sys.modules and 'uvicorn' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- start-up checks -----------------------------------------------------------------------------


class _Conflicting(rc.ConflictingService):
    pass


class _Things(rc.ThingsService):
    pass


class _MoreThings(rc.MoreThingsService):
    pass


class _OtherVerb(rc.OtherVerbService):
    pass


class _UnknownField(rc.UnknownFieldService):
    pass


class _RepeatedPath(rc.RepeatedPathService):
    pass


class _BadTemplate(rc.BadTemplateService):
    pass


class _BadBody(rc.BadBodyService):
    pass


def _routes(*services: object) -> list[Any]:
    from protobind.http._rest import rest_routes

    return rest_routes(protobind.Server(services), ignore_unknown_fields=False)


def test_conflicting_routes_in_one_service() -> None:
    with pytest.raises(ValueError, match="conflicting REST routes") as info:
        _routes(_Conflicting())
    message = str(info.value)
    assert "restcheck.v1.Conflicting/GetThing (GET /v1/{name=things/*})" in message
    assert "restcheck.v1.Conflicting/FindThing (GET /v1/things/{name})" in message


async def test_http_binding_refuses_to_start_with_conflicting_routes() -> None:
    server = protobind.Server([_Conflicting()])
    with pytest.raises(ValueError, match="conflicting REST routes"):
        await server.start("http://127.0.0.1:0")
    assert server.urls == []


def test_conflicting_routes_across_services() -> None:
    with pytest.raises(ValueError, match=r"restcheck\.v1\.Things/GetThing.*restcheck\.v1\.MoreThings/LookUp"):
        _routes(_Things(), _MoreThings())


def test_same_template_with_other_method_is_fine() -> None:
    routes = _routes(_Things(), _OtherVerb())
    assert len(routes) == 1  # one route, two HTTP methods


@pytest.mark.parametrize(
    ("service", "words"),
    [
        (_UnknownField(), ["UnknownField/GetThing", "missing", "not a field"]),
        (_RepeatedPath(), ["RepeatedPath/GetThing", "tags", "repeated"]),
        (_BadTemplate(), ["BadTemplate/GetThing", "'**' must be the last segment"]),
        (_BadBody(), ["BadBody/PostThing", "thing", "not a field"]),
    ],
)
def test_bad_rules_fail_at_start_up(service: object, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        _routes(service)
    for word in words:
        assert word in str(info.value)


def test_unannotated_services_have_no_routes() -> None:
    from tests.conformance import Conformance

    assert _routes(Conformance()) == []
    assert restcheck_pb2.Thing().name == ""


# --- templates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/{name}", "/v1/abc", {"name": ("abc", False)}),
        ("/v1/{name}", "/v1/a/b", None),
        ("/v1/{name=shelves/*}", "/v1/shelves/x", {"name": ("shelves/x", True)}),
        ("/v1/{name=shelves/*}", "/v1/books/x", None),
        ("/v1/{a}/{b.c=x/*}:do", "/v1/1/x/2:do", {"a": ("1", False), "b.c": ("x/2", True)}),
        ("/v1/{a}:do", "/v1/1", None),
        ("/v1/*/x", "/v1/anything/x", {}),
        ("/v1/*/x", "/v1//x", None),
        ("/files/{path=**}", "/files", {"path": ("", True)}),
        ("/files/{path=**}", "/files/a/b/c", {"path": ("a/b/c", True)}),
        ("/v1/a%20b", "/v1/a%20b", {}),
    ],
)
def test_template_matching(template: str, path: str, expected: dict[str, tuple[str, bool]] | None) -> None:
    assert parse_template(template).match(path) == expected


@pytest.mark.parametrize(
    "template",
    [
        "v1/x",
        "/",
        "/v1//x",
        "/v1/{name",
        "/v1/{a{b}}",
        "/v1/{1abc}",
        "/v1/**/x",
        "/v1/{a}/{a}",
        "/v1/x:",
        "/v1/{a=b/**}/c",
    ],
)
def test_bad_templates(template: str) -> None:
    with pytest.raises(ValueError, match="path template"):
        parse_template(template)


def test_bindings_are_ordered_most_specific_first() -> None:
    from library.v1.library_protobind import LIBRARY_SERVICE_INFO

    order = [str(b.template) for b in collect_bindings([LIBRARY_SERVICE_INFO])]
    assert order.index("/v1/{name=shelves/*/books/*}:archive") < order.index("/v1/{name=shelves/*/books/*}")
    assert order.index("/v1/shelves/by-id/{id}") < order.index("/v1/{name=shelves/*}")


# --- CORS: the preflight allows the methods the routes answer -----------------------------------------


async def test_cors_preflight_allows_each_rest_method() -> None:
    origin = "https://app.example"
    server = protobind.Server([Library()], transport_options={"http": {"cors_origins": origin}})
    (url,) = await server.start("http://127.0.0.1:0")
    routes = {
        "GET": "/v1/shelves/1/books",
        "POST": "/v1/shelves/1/books",
        "PUT": "/v1/shelves/1/books/2/location",
        "PATCH": "/v1/shelves/1/books/2",
        "DELETE": "/v1/shelves/1/books/2",
        "FETCH": "/v1/shelves/1",
    }
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for verb, path in routes.items():
                preflight = await client.options(
                    path,
                    headers={
                        "origin": origin,
                        "access-control-request-method": verb,
                        "access-control-request-headers": "content-type",
                    },
                )
                assert preflight.status_code == 200, (verb, preflight.text)
                assert verb in preflight.headers["access-control-allow-methods"].split(", ")
                assert preflight.headers["access-control-allow-origin"] == origin
            deleted = await client.delete(routes["DELETE"], headers={"origin": origin})
            assert deleted.status_code == 200
            assert deleted.headers["access-control-allow-origin"] == origin
            # a method no route answers is still refused
            trace = await client.options(
                routes["GET"], headers={"origin": origin, "access-control-request-method": "TRACE"}
            )
            assert trace.status_code == 400
    finally:
        await server.stop(0)


async def test_cors_allow_methods_option_replaces_the_route_methods() -> None:
    origin = "https://app.example"
    options = {"cors_origins": origin, "cors_allow_methods": "get,post"}
    server = protobind.Server([Library()], transport_options={"http": options})
    (url,) = await server.start("http://127.0.0.1:0")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for verb, status in (("GET", 200), ("DELETE", 400)):
                preflight = await client.options(
                    "/v1/shelves/1/books/2",
                    headers={"origin": origin, "access-control-request-method": verb},
                )
                assert preflight.status_code == status, verb
    finally:
        await server.stop(0)
