"""The Library service (tests/protos/rest/library.proto) the REST tests serve: it records each
request and context, and a few book names trigger errors (missing, boom, slow)."""

from __future__ import annotations

import asyncio
from typing import Any

from google.protobuf import empty_pb2
from google.rpc import error_details_pb2
from library.v1 import library_pb2 as lib
from library.v1.library_protobind import LibraryService

import protobind


class Library(LibraryService):
    """Records each request and context; a few names trigger errors."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.contexts: list[protobind.Context] = []
        self.cancelled = asyncio.Event()

    def _seen(self, request: Any, context: protobind.Context) -> None:
        self.requests.append(request)
        self.contexts.append(context)

    async def get_book(self, request: lib.GetBookRequest, context: protobind.Context) -> lib.Book:
        self._seen(request, context)
        book_id = request.name.rpartition("/")[2]
        if book_id == "missing":
            raise protobind.RpcError(
                protobind.Code.NOT_FOUND,
                f"no book {request.name}",
                [error_details_pb2.ErrorInfo(reason="NO_BOOK", domain="library.test")],
            )
        if book_id == "boom":
            raise ValueError("secret internal detail")
        if book_id == "slow":
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        context.set_header("x-served-by", "rest")
        context.set_trailer("x-checksum", "abc")
        context.set_trailer("x-raw-bin", b"\x00\x01")
        return lib.Book(name=request.name, title="Dune", isbn=9780441013593, genre=lib.FICTION)

    async def create_book(self, request: lib.CreateBookRequest, context: protobind.Context) -> lib.Book:
        self._seen(request, context)
        book = lib.Book()
        book.CopyFrom(request.book)
        book.name = f"{request.parent}/books/{request.book_id or 'new'}"
        return book

    async def update_book(self, request: lib.UpdateBookRequest, context: protobind.Context) -> lib.Book:
        self._seen(request, context)
        return request.book

    async def list_books(
        self, request: lib.ListBooksRequest, context: protobind.Context
    ) -> lib.ListBooksResponse:
        self._seen(request, context)
        return lib.ListBooksResponse(
            books=[lib.Book(name=f"{request.parent}/books/1")], next_page_token="next"
        )

    async def delete_book(
        self, request: lib.DeleteBookRequest, context: protobind.Context
    ) -> empty_pb2.Empty:
        self._seen(request, context)
        return empty_pb2.Empty()

    async def create_shelf(self, request: lib.Shelf, context: protobind.Context) -> lib.Shelf:
        self._seen(request, context)
        return request

    async def get_shelf(self, request: lib.GetShelfRequest, context: protobind.Context) -> lib.Shelf:
        self._seen(request, context)
        return lib.Shelf(name=request.name or f"shelves/{request.id}", id=request.id)

    async def list_shelf_names(
        self, request: lib.ListShelfNamesRequest, context: protobind.Context
    ) -> lib.ListShelfNamesResponse:
        self._seen(request, context)
        names = ["shelves/a", "shelves/b"]
        return lib.ListShelfNamesResponse(names=names[: request.limit or None], total=len(names))

    async def archive_book(self, request: lib.ArchiveBookRequest, context: protobind.Context) -> lib.Book:
        self._seen(request, context)
        return lib.Book(name=request.name, title=request.reason)

    async def move_book(self, request: lib.MoveBookRequest, context: protobind.Context) -> lib.Book:
        self._seen(request, context)
        return lib.Book(name=f"{request.to_shelf}/books/{request.name.rpartition('/')[2]}")

    async def get_file(self, request: lib.GetFileRequest, context: protobind.Context) -> lib.File:
        self._seen(request, context)
        return lib.File(path=request.path)
