"""The OpenAPI and AsyncAPI documents of ``.proto`` files, for ``protobind openapi|asyncapi PATHS``.

The files are compiled with source info, so proto comments become descriptions (the generated
code carries the same comments to a server, so its documents say the same). The commands, and
the documents of a running server, are :mod:`protobind.cli._documents`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from protobind.cli._documents import ASYNCAPI_SCHEMES
from protobind.method import ServiceInfo

if TYPE_CHECKING:
    from protobind.broker._asyncapi import Bindings

__all__ = ["asyncapi_from_files", "openapi_from_files"]


def _contract(args: argparse.Namespace) -> tuple[list[ServiceInfo], list[Any], str]:
    """The services of ``args.paths``, the compiled files (with their comments) and the title."""
    from .descriptors import build_pool, services_in
    from .protoc import compile_protos

    files, names = compile_protos(args.paths, args.include)
    services = services_in(build_pool(files), names)
    if not services:
        raise ValueError(f"no services declared in {', '.join(args.paths)}")
    title = args.title or (services[0].name if len(services) == 1 else "protobind API")
    # every file's comments, imports too: the generated code carries the same to a server
    return services, list(files), title


def openapi_from_files(args: argparse.Namespace) -> dict[str, Any]:
    """The OpenAPI document of the ``.proto`` files ``protobind openapi`` was given."""
    from protobind.http.openapi import openapi_document

    services, sources, title = _contract(args)
    return openapi_document(
        services, title=title, version=args.api_version, servers=args.server, source_files=sources
    )


def asyncapi_from_files(args: argparse.Namespace) -> dict[str, Any]:
    """The AsyncAPI document of the ``.proto`` files ``protobind asyncapi`` was given (NATS, or MQTT
    5 or Kafka by ``--protocol`` or the ``--server`` URLs)."""
    from protobind.broker._asyncapi import asyncapi_document

    services, sources, title = _contract(args)
    schemes = {url.partition("://")[0] for url in args.server}
    known = [scheme for found in ASYNCAPI_SCHEMES.values() for scheme in found]
    for url in args.server:
        if url.partition("://")[0] not in known:
            given = ", ".join(f"{scheme}://" for scheme in known[:-1]) + f" or {known[-1]}://"
            raise ValueError(f"--server {url!r}: give a {given} URL")
    protocol = args.protocol or next(
        (p for p, known in ASYNCAPI_SCHEMES.items() if schemes & set(known)), "nats"
    )
    for url in args.server:
        if url.partition("://")[0] not in ASYNCAPI_SCHEMES[protocol]:
            given = " or ".join(f"{scheme}://" for scheme in ASYNCAPI_SCHEMES[protocol])
            raise ValueError(f"--server {url!r}: give a {given} URL")
    bindings: Bindings | None = None
    if protocol == "mqtt":  # the subjects written as the topics an MQTT server uses
        from protobind.mqtt._connection import MqttBindings

        bindings = MqttBindings()
    elif protocol == "kafka":  # topics and Kafka bindings (needs aiokafka, connects nowhere)
        from protobind.kafka._connection import KafkaBroker
        from protobind.kafka._options import settings_from

        kafka = args.server[0] if args.server else "kafka://127.0.0.1:9092"
        bindings = KafkaBroker(settings_from(kafka, {"prefix": args.prefix})).asyncapi_bindings()
    return asyncapi_document(
        services,
        title=title,
        version=args.api_version,
        servers=args.server,
        prefix=args.prefix,
        queue_group=args.queue_group,
        source_files=sources,
        bindings=bindings,
    )
