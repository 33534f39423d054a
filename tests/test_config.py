"""protobind.toml and its environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from protobind.config import Config, ConfigError, load_service

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


def test_load_service() -> None:
    from tests.conformance import Conformance

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
    path.write_text("[telemetry]\nexporter = 'otlp'\n")
    with pytest.raises(ConfigError, match=r"unknown key telemetry\.exporter"):
        Config.load(path, env={})
    with pytest.raises(ConfigError, match="PROTOBIND_TELEMETRY"):
        Config.load(None, env={"PROTOBIND_TELEMETRY": "maybe"})
