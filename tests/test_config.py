"""protobind.toml and its environment overrides."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import protobind
from protobind.config import Config, ConfigError, load_service
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import (
    ConformanceServiceClient,
    ConformanceServiceSyncClient,
)

from .conformance import SERVICE, Conformance

TOML = """
[server]
services = ["tests.conformance:Conformance"]
bind = ["grpc://127.0.0.1:0", "http://127.0.0.1:0"]
grace = 2.5

[server.options.grpc]
max_message_size = 1024

[clients]
greeter = "nats://127.0.0.1:4222"
billing-api = "grpc://127.0.0.1:50051"
"""


def test_load_file_and_env(tmp_path: Path) -> None:
    path = tmp_path / "protobind.toml"
    path.write_text(TOML)
    config = Config.load(path, env={})
    assert config.bind == ("grpc://127.0.0.1:0", "http://127.0.0.1:0")
    assert config.grace == 2.5
    assert config.transport_options["grpc"]["max_message_size"] == 1024
    assert config.client_url("greeter") == "nats://127.0.0.1:4222"
    env = {
        "PROTOBIND_BIND": "nats://127.0.0.1:4222, inproc://x",
        "PROTOBIND_CLIENT_GREETER": "grpc://127.0.0.1:1",
        "PROTOBIND_CLIENT_BILLING_API": "http://127.0.0.1:2",
    }
    config = Config.load(path, env=env)
    assert config.bind == ("nats://127.0.0.1:4222", "inproc://x")
    assert config.client_url("greeter") == "grpc://127.0.0.1:1"
    assert config.client_url("billing-api") == "http://127.0.0.1:2"
    with pytest.raises(ConfigError, match="PROTOBIND_CLIENT_NOPE"):
        config.client_url("nope")


def test_bad_config_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        Config.load(path, env={})
    path.write_text("[server]\nbind = 3\n")
    with pytest.raises(ConfigError, match=r"server\.bind must be a list of strings"):
        Config.load(path, env={})
    with pytest.raises(ConfigError, match="no such file"):
        Config.load(tmp_path / "missing.toml", env={})


def test_max_oneway_from_the_file_reaches_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "protobind.toml"
    path.write_text(TOML)
    assert Config.load(path, env={}).max_oneway == 1024
    path.write_text(TOML.replace("grace = 2.5", "grace = 2.5\nmax_oneway = 3"))
    assert Config.load(path, env={}).max_oneway == 3
    for bad in ("0", "-1", '"many"', "1.5"):
        path.write_text(TOML.replace("grace = 2.5", f"grace = 2.5\nmax_oneway = {bad}"))
        with pytest.raises(ConfigError, match=r"server\.max_oneway must be a whole number >= 1"):
            Config.load(path, env={})
    # `protobind serve` builds its Server with it
    from protobind import cli

    path.write_text(TOML.replace("grace = 2.5", "grace = 2.5\nmax_oneway = 3"))
    seen: list[int] = []
    monkeypatch.setattr(protobind.Server, "run", lambda self, *urls, **kw: seen.append(self.background.limit))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--config", str(path)])
    assert exit_info.value.code == 0 and seen == [3]


def test_load_service() -> None:
    assert isinstance(load_service("tests.conformance:Conformance"), Conformance)
    for spec, message in [
        ("nocolon", "MODULE:ATTR"),
        ("no_such_module_xyz:X", "cannot import"),
        ("tests.conformance:Missing", "no attribute"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_service(spec)


def test_telemetry_table_and_env(tmp_path: Path) -> None:
    path = tmp_path / "protobind.toml"
    path.write_text("[telemetry]\nenabled = true\nlog_successes = true\nmetrics = false\n")
    config = Config.load(path, env={})
    assert config.telemetry is not None
    assert config.telemetry.log_successes and not config.telemetry.metrics and config.telemetry.tracing
    assert Config.load(path, env={"PROTOBIND_TELEMETRY": "false"}).telemetry is None
    assert Config.load(None, env={}).telemetry is None
    on = Config.load(None, env={"PROTOBIND_TELEMETRY": "1", "PROTOBIND_CLIENT_GREETER": "inproc://g"})
    assert on.telemetry is not None and on.telemetry.tracing
    channel = on.connect("greeter")
    assert channel.url == "inproc://g" and channel.telemetry is on.telemetry
    path.write_text("[telemetry]\nenabled = true\ntracing = 'yes'\n")
    with pytest.raises(ConfigError, match=r"telemetry\.tracing must be true or false"):
        Config.load(path, env={})
    path.write_text("[telemetry]\ntracin = false\n")
    with pytest.raises(
        ConfigError, match=r"unknown key telemetry\.tracin \(did you mean telemetry\.tracing\?\)"
    ):
        Config.load(path, env={})
    with pytest.raises(ConfigError, match="PROTOBIND_TELEMETRY"):
        Config.load(None, env={"PROTOBIND_TELEMETRY": "maybe"})


def test_service_url_lookup_order(tmp_path: Path) -> None:
    path = tmp_path / "protobind.toml"

    def url_for(clients: dict[str, str], env: dict[str, str] | None = None, name: str | None = None) -> str:
        path.write_text("[clients]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in clients.items()))
        return Config.load(path, env=env or {}).service_url(SERVICE, name)

    # the full name beats the short name in snake_case, which beats `default`
    full, short, default = "grpc://full:1", "grpc://short:2", "grpc://default:3"
    assert url_for({"default": default, "conformance_service": short, SERVICE: full}) == full
    assert url_for({"default": default, "conformance_service": short}) == short
    assert url_for({"default": default}) == default
    assert url_for({"default": default, "other": "x://y"}, name="other") == "x://y"
    # an environment variable names the key with `_` for `.` and `-`, and overrides the file
    env = {"PROTOBIND_CLIENT_PROTOBIND_CONFORMANCE_V1_CONFORMANCESERVICE": "nats://e:4"}
    assert url_for({SERVICE: full}, env) == "nats://e:4"
    assert url_for({}, {"PROTOBIND_CLIENT_CONFORMANCE_SERVICE": "nats://e:5"}) == "nats://e:5"
    assert url_for({}, {"PROTOBIND_CLIENT_DEFAULT": "nats://e:6"}) == "nats://e:6"
    with pytest.raises(ConfigError) as info:
        url_for({"greeter": "grpc://g:1"})
    message = str(info.value)
    assert "'conformance_service'" in message and "'default'" in message
    assert "PROTOBIND_CLIENT_CONFORMANCE_SERVICE" in message
    with pytest.raises(ConfigError, match="PROTOBIND_CLIENT_NOPE"):
        url_for({"default": default}, name="nope")


async def test_configured_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``protobind.client`` / ``client_sync`` connect to the URL in ./protobind.toml, or to the one
    the environment names instead; the reply says which transport carried the call."""
    server = protobind.Server([Conformance()])
    grpc_url, http_url = await server.start("grpc://127.0.0.1:0", "http://127.0.0.1:0")
    try:
        (tmp_path / "protobind.toml").write_text(f'[clients]\nconformance_service = "{grpc_url}"\n')
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("PROTOBIND_CLIENT_CONFORMANCE_SERVICE", raising=False)
        assert await _transports() == ("grpc", "grpc")
        monkeypatch.setenv("PROTOBIND_CLIENT_CONFORMANCE_SERVICE", http_url)
        assert await _transports() == ("http", "http")
    finally:
        await server.stop(grace=1.0)


async def _transports() -> tuple[str, str]:
    """The transport of one call through each configured client (the sync one off this loop)."""
    async with protobind.client(ConformanceServiceClient) as client:
        via_async = (await client.unary(Request(text="a"), timeout=5)).transport

    def blocking() -> str:
        with protobind.client_sync(ConformanceServiceSyncClient) as client:
            return client.unary(Request(text="s"), timeout=5).transport

    return via_async, await asyncio.to_thread(blocking)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[server]\ngrase = 1\n", "unknown key server.grase (did you mean server.grace?)"),
        ("[server]\nmax_one_way = 3\n", "unknown key server.max_one_way (did you mean server.max_oneway?)"),
        ("[telemtry]\nenabled = true\n", "unknown key telemtry (did you mean telemetry?)"),
        (
            "[server.options.grcp]\nhealth = true\n",
            "unknown key server.options.grcp (did you mean server.options.grpc?)",
        ),
        ('[server]\nbnd = ["grpc://127.0.0.1:0"]\n', "unknown key server.bnd (did you mean server.bind?)"),
        ("[server]\nworkerz = 2\nzzz = 1\n", "unknown key server.workerz (did you mean server.workers?)"),
        ("qqq = 1\n", "unknown key qqq; known: server, clients, telemetry"),
        (
            "[server.options.grpc]\nmax_mesage_size = 1\n",
            "server.options.grpc: unknown grpc server option(s) max_mesage_size "
            "(did you mean max_message_size?)",
        ),
        (
            '[telemetry]\nexporter = "consol"\n',
            "unknown telemetry exporter 'consol' (did you mean 'console'?)",
        ),
        (
            '[telemetry]\notlp_protocol = "http"\n',
            "telemetry.otlp_protocol must be one of grpc, http/protobuf",
        ),
        ("[telemetry]\notlp_endpoint = 4317\n", "telemetry.otlp_endpoint must be a string"),
        ('[server]\naccess_log = "yes"\n', "server.access_log must be true or false"),
        ('[server]\nlog_level = "loud"\n', "server.log_level must be one of debug, info, warning, error"),
    ],
)
def test_unknown_and_bad_keys_are_errors_that_name_the_key(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "protobind.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Config.load(path, env={})
    assert str(info.value).startswith(f"{path}: {error}")


def test_protobind_serve_names_the_unknown_key(tmp_path: Path) -> None:
    """`bnd = [...]` used to start nothing with "nowhere to serve"; now the key is named."""
    import subprocess
    import sys

    path = tmp_path / "protobind.toml"
    path.write_text('[server]\nservices = ["tests.conformance:Conformance"]\nbnd = ["grpc://127.0.0.1:0"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "protobind", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"protobind serve: {path}: unknown key server.bnd (did you mean server.bind?)"
    )
    assert result.stderr.count("\n") == 1


def test_logging_and_exporter_settings(tmp_path: Path) -> None:
    path = tmp_path / "protobind.toml"
    path.write_text(
        '[server]\naccess_log = false\nlog_level = "WARNING"\n'
        '[telemetry]\nexporter = ["console", "otlp"]\notlp_endpoint = "http://collector:4318"\n'
        'otlp_protocol = "http/protobuf"\nservice_name = "shop"\n'
    )
    config = Config.load(path, env={})
    assert config.access_log is False and config.log_level == "warning"
    telemetry = config.telemetry
    assert telemetry is not None  # naming an exporter turns telemetry on
    assert telemetry.exporter == ("console", "otlp") and telemetry.otlp_endpoint == "http://collector:4318"
    assert telemetry.otlp_protocol == "http/protobuf" and telemetry.service_name == "shop"
    assert Config.load(path, env={"PROTOBIND_TELEMETRY": "false"}).telemetry is None
    path.write_text('[telemetry]\nenabled = false\nexporter = "console"\n')
    assert Config.load(path, env={}).telemetry is None
    assert Config.load(None, env={}).access_log is None
