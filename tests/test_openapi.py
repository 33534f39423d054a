"""The OpenAPI 3.1 document (protobind.openapi) and the `protobind openapi` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from library.v1.library_protobind import LIBRARY_SERVICE_INFO
from openapi_spec_validator import validate
from restcheck.v1 import restcheck_protobind as rc

from protobind.conformance.v1.conformance_protobind import CONFORMANCE_SERVICE_INFO
from protobind.http.openapi import openapi_document

from .support import ROOT

REST_PROTOS = ROOT / "tests" / "protos" / "rest"
LIBRARY_PROTO = REST_PROTOS / "library" / "v1" / "library.proto"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    doc = openapi_document(
        [LIBRARY_SERVICE_INFO, CONFORMANCE_SERVICE_INFO],
        title="Library",
        version="2.0",
        servers=["http://127.0.0.1:8080"],
    )
    validate(doc)
    return doc


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"][name]  # type: ignore[no-any-return]


def _parameters(operation: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in operation["parameters"] if p.get("in") == where}


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"] == {"title": "Library", "version": "2.0"}
    assert document["servers"] == [{"url": "http://127.0.0.1:8080"}]
    assert {t["name"] for t in document["tags"]} == {
        "library.v1.Library",
        "protobind.conformance.v1.ConformanceService",
    }
    operation_ids = [
        op["operationId"]
        for item in document["paths"].values()
        for key, op in item.items()
        if key in ("get", "post", "put", "patch", "delete")
    ]
    assert len(operation_ids) == len(set(operation_ids))


def test_connect_routes(document: dict[str, Any]) -> None:
    paths = document["paths"]
    get_book = paths["/library.v1.Library/GetBook"]
    assert set(get_book) == {"post"}
    post = get_book["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/library.v1.GetBookRequest"
    }
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/library.v1.Book"
    }
    assert post["responses"]["default"] == {"$ref": "#/components/responses/ConnectError"}
    # NO_SIDE_EFFECTS unary methods also answer GET with ?encoding=json&message=...
    lookup = paths["/protobind.conformance.v1.ConformanceService/Lookup"]
    query = _parameters(lookup["get"], "query")
    assert query["encoding"]["required"] and query["message"]["required"]
    assert query["message"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "conformance.v1.Request"
    )
    # streaming: enveloped bodies; bidi is not served over HTTP/1.1
    stream = paths["/protobind.conformance.v1.ConformanceService/ServerStream"]["post"]
    assert "application/connect+json" in stream["responses"]["200"]["content"]
    assert "/protobind.conformance.v1.ConformanceService/BidiStream" not in paths
    error = _schema(document, "protobind.ConnectError")
    assert "not_found" in error["properties"]["code"]["enum"]
    assert "ok" not in error["properties"]["code"]["enum"]


def test_rest_routes(document: dict[str, Any]) -> None:
    paths = document["paths"]
    get = paths["/v1/shelves/{shelves}/books/{books}"]["get"]
    assert get["operationId"] == "library.v1.Library.GetBook.rest"
    assert set(_parameters(get, "path")) == {"shelves", "books"}
    assert "shelves/{shelves}/books/{books}" in _parameters(get, "path")["books"]["description"]
    assert set(_parameters(get, "query")) == {"readMask"}
    assert "requestBody" not in get
    # the same template with other methods shares the path item
    item = paths["/v1/shelves/{shelves}/books/{books}"]
    assert {"get", "patch", "delete"} <= set(item)
    patch = item["patch"]
    assert patch["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/library.v1.Book"
    }
    assert set(_parameters(patch, "query")) == {"updateMask"}
    # query parameters: nested, repeated, enums, well-known types; not maps or repeated messages
    query = _parameters(paths["/v1/shelves/{shelves}/books"]["get"], "query")
    assert {
        "page.size",
        "page.token",
        "tags",
        "genre",
        "genres",
        "publishedAfter",
        "hasRating",
        "maxIsbn",
    } <= set(query)
    assert "parent" not in query and "filter" not in query and "pages" not in query
    assert query["tags"]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert query["genre"]["schema"] == {"$ref": "#/components/schemas/library.v1.Genre"}
    # body "*": no query parameters
    create_shelf = paths["/v1/shelves"]["post"]
    assert _parameters(create_shelf, "query") == {}
    assert create_shelf["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "library.v1.Shelf"
    )
    # response_body, additional bindings, verbs, custom methods, **
    names = paths["/v1/shelf-names"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert names == {"type": "array", "items": {"type": "string"}}
    by_id = paths["/v1/shelves/by-id/{id}"]["get"]
    assert by_id["operationId"] == "library.v1.Library.GetShelf.rest1"
    assert _parameters(by_id, "path")["id"]["schema"]["format"] == "int64"
    assert "post" in paths["/v1/shelves/{shelves}/books/{books}:archive"]
    assert "put" in paths["/v1/shelves/{shelves}/books/{books}/location"]
    assert "FETCH" in paths["/v1/shelves/{shelves}"]["x-protobind-methods"]
    assert (
        "Any number of segments"
        in _parameters(paths["/v1/files/{path}"]["get"], "path")["path"]["description"]
    )
    # a streaming method's rule is not a REST route
    assert not any(p.endswith(":watch") for p in paths)


def test_message_schemas(document: dict[str, Any]) -> None:
    book = _schema(document, "library.v1.Book")
    props = book["properties"]
    assert props["isbn"]["type"] == ["string", "integer"]
    assert props["cover"]["contentEncoding"] == "base64"
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert props["sequel"] == {  # recursion via $ref; the generated code carries the comments
        "$ref": "#/components/schemas/library.v1.Book",
        "description": "The next book of a series (a recursive reference).",
    }
    assert props["genre"] == {"$ref": "#/components/schemas/library.v1.Genre"}
    assert "ebookUrl" in props and "pageCount" in props and "subtitle" in props
    assert "At most one of `ebookUrl`, `pageCount`" in book["description"]
    assert len(book["allOf"]) == 1  # the oneof; proto3 optional `subtitle` is not one
    assert _schema(document, "library.v1.Genre")["enum"] == [
        "GENRE_UNSPECIFIED",
        "FICTION",
        "HISTORY",
        "SCIENCE",
    ]
    assert _schema(document, "google.protobuf.Timestamp")["format"] == "date-time"
    assert _schema(document, "google.protobuf.Duration")["type"] == "string"
    assert _schema(document, "google.protobuf.FieldMask")["type"] == "string"
    assert _schema(document, "google.protobuf.Struct")["type"] == "object"
    assert _schema(document, "google.protobuf.ListValue")["type"] == "array"
    assert "type" not in _schema(document, "google.protobuf.Value")
    assert _schema(document, "google.protobuf.Any")["required"] == ["@type"]
    assert _schema(document, "google.protobuf.Empty")["type"] == "object"
    assert _schema(document, "google.protobuf.Int32Value")["type"] == ["integer", "null"]
    assert _schema(document, "google.protobuf.Int64Value")["type"] == ["string", "integer", "null"]
    assert _schema(document, "google.protobuf.NullValue") == {"type": "null"}


def test_conflicting_routes_are_refused() -> None:
    with pytest.raises(ValueError, match="conflicting REST routes"):
        openapi_document([rc.CONFLICTING_SERVICE_INFO])


# --- protobind openapi ---------------------------------------------------------------------------


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protobind", "openapi", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_cli_writes_a_valid_document_with_comments(tmp_path: Path) -> None:
    out = tmp_path / "openapi.json"
    result = _cli(
        str(LIBRARY_PROTO), "-I", str(REST_PROTOS), "-o", str(out), "--server", "https://api.example.com"
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    validate(doc)
    assert doc["info"]["title"] == "library.v1.Library"
    assert doc["servers"] == [{"url": "https://api.example.com"}]
    # source comments become descriptions
    assert (
        doc["paths"]["/library.v1.Library/GetBook"]["post"]["description"]
        == "Gets a book by its resource name."
    )
    assert doc["tags"][0]["description"] == "Shelves of books."
    book = doc["components"]["schemas"]["library.v1.Book"]
    assert book["properties"]["name"]["description"] == "Resource name: shelves/{shelf}/books/{book}."
    assert "How the book is available." in book["description"]


def test_cli_prints_to_stdout() -> None:
    result = _cli(str(REST_PROTOS / "library"), "-I", str(REST_PROTOS))
    assert result.returncode == 0, result.stderr
    validate(json.loads(result.stdout))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["no/such.proto"], ["no/such.proto", "no such file"]),
        (
            [str(REST_PROTOS / "restcheck" / "v1" / "restcheck.proto"), "-I", str(REST_PROTOS)],
            ["protobind openapi:", "restcheck.v1."],
        ),
        (["broken.proto"], ["broken.proto:3:"]),
    ],
)
def test_cli_errors_are_one_line(args: list[str], words: list[str], tmp_path: Path) -> None:
    (tmp_path / "broken.proto").write_text(
        'syntax = "proto3";\npackage broken;\nmessage M { strin a = 1; }\n'
    )
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    for word in words:
        assert word in result.stderr, result.stderr


def test_cli_without_services(tmp_path: Path) -> None:
    proto = tmp_path / "plain.proto"
    proto.write_text('syntax = "proto3";\npackage plain;\nmessage M { string a = 1; }\n')
    result = _cli(str(proto))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "no services" in result.stderr


async def test_protobind_openapi_url_is_the_served_document_and_the_generated_one() -> None:
    """`protobind openapi http://...` reads the server's /openapi.json; a server of generated code
    serves what `protobind openapi` writes from the .proto files, comments included."""
    import asyncio

    import httpx
    from library.v1.library_protobind import LibraryService

    import protobind

    from .conformance import Conformance

    server = protobind.Server([LibraryService(), Conformance()])  # unimplemented: documents only
    (url,) = await server.start("http://127.0.0.1:0")
    try:
        fetched = await asyncio.to_thread(_cli, url)
        async with httpx.AsyncClient() as client:
            direct = (await client.get(f"{url}/openapi.json")).json()
    finally:
        await server.stop(grace=1.0)
    assert fetched.returncode == 0, fetched.stderr
    served = json.loads(fetched.stdout)
    assert served == direct
    written = _cli(
        str(LIBRARY_PROTO), str(ROOT / "idl" / "protobind" / "conformance" / "v1" / "conformance.proto"),
        "-I", str(REST_PROTOS), "-I", str(ROOT / "idl"),
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert served == json.loads(written.stdout)
    get_book = served["paths"]["/library.v1.Library/GetBook"]["post"]
    assert get_book["description"] == "Gets a book by its resource name."


def test_openapi_url_mistakes_are_one_line() -> None:
    for args, message in [
        (
            ["nats://127.0.0.1:1"],
            "a nats:// server serves no openapi document: give an http:// or https:// URL",
        ),
        (["http://127.0.0.1:8080", "--title", "x"], "--title is for .proto files"),
    ]:
        result = _cli(*args)
        assert result.returncode == 1
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
