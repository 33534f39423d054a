"""``protobind breaking``: one breaking and one safe variant per rule, each side resolved against its own
roots, the output formats, ``--against git:REF``, and the same findings as ``buf breaking``."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protobind import cli
from protobind_codegen.breaking import LEVELS, RULES, Finding, breaking_changes
from protobind_codegen.breaking_sides import Side

from .conftest import GEN
from .support import ROOT

# Our own copy of the declarations in idl/protobind/v1/options.proto (numbers are the contract).
OPTIONS = """syntax = "proto3";
package protobind.v1;
import "google/protobuf/descriptor.proto";
extend google.protobuf.MethodOptions { bool oneway = 51201; bool durable = 51202; }
"""
P2 = 'syntax = "proto2"; package {pkg};'
ED = 'edition = "2023"; package {pkg};'
OPT = 'import "protobind/v1/options.proto";'
HTTP = 'import "google/api/annotations.proto";'
SVC = "message A { int32 a = 1; } message B { int32 b = 1; }"

Proto = str | dict[str, str] | None  # one file, several (name suffix -> text), or no file


@dataclass(frozen=True)
class Case:
    """``old`` -> ``breaking`` must report ``rule`` at ``level``; ``old`` -> ``safe`` must report nothing."""

    rule: str
    level: str
    old: Proto
    breaking: Proto
    safe: Proto


def _rpc(options: str = "", kind: str = "rpc M(A) returns (A)") -> str:
    return f"service S {{ {kind} {{ {options} }} }} {SVC}"


def _value(keep: bool, kind: str, name: str) -> str:
    """Field or enum value 1 named ``name``: present, or deleted with its number and name reserved."""
    return f"{kind}{name} = 1;" if keep else f'reserved 1; reserved "{name}";'


def _req(request: bool, response: bool) -> str:
    """Request message A and response-only message B, each keeping field 1 or not."""
    a, b = _value(request, "int32 ", "x"), _value(response, "int32 ", "x")
    return f"service S {{ rpc M(A) returns (B); }} message A {{ {a} }} message B {{ {b} }}"


def _req_enum(request: bool, response: bool) -> str:
    """Enum E used by the request, enum F only by the response, each keeping value 1 or not."""
    e, f = _value(request, "", "E_1"), _value(response, "", "F_1")
    return (
        "service S { rpc M(A) returns (B); } message A { E e = 1; } message B { F f = 1; } "
        f"enum E {{ E_0 = 0; {e} }} enum F {{ F_0 = 0; {f} }}"
    )


CASES = [
    Case("FILE_NO_DELETE", "FILE", "message A {}", None, "message A {} message B {}"),
    Case(
        "FILE_SAME_PACKAGE",
        "WIRE",
        "message A {}",
        'syntax = "proto3"; package {pkg}.v2; message A {}',
        "message A {} message B {}",
    ),
    Case(
        "FILE_SAME_SYNTAX",
        "FILE",
        "message A { string s = 1; }",
        P2 + " message A { optional string s = 1; }",
        "message A { string s = 1; string t = 2; }",
    ),
    Case("SERVICE_NO_DELETE", "WIRE", _rpc(), SVC, _rpc() + " service T { rpc N(B) returns (B); }"),
    Case(
        "SERVICE_NO_DELETE",
        "FILE",
        {"": _rpc(), "_b": "message X {}"},
        {"": SVC, "_b": 'import "{pkg}.proto"; service S { rpc M(A) returns (A); }'},
        {"": _rpc(), "_b": "message X {} message Y {}"},
    ),
    Case(
        "RPC_NO_DELETE",
        "WIRE",
        _rpc(),
        "service S {} " + SVC,
        f"service S {{ rpc M(A) returns (A); rpc N(B) returns (B); }} {SVC}",
    ),
    Case("RPC_SAME_REQUEST_TYPE", "WIRE", _rpc(), _rpc(kind="rpc M(B) returns (A)"), _rpc("/* same */")),
    Case("RPC_SAME_RESPONSE_TYPE", "WIRE", _rpc(), _rpc(kind="rpc M(A) returns (B)"), _rpc("/* same */")),
    Case(
        "RPC_SAME_CLIENT_STREAMING",
        "WIRE",
        _rpc(),
        _rpc(kind="rpc M(stream A) returns (A)"),
        _rpc("/* same */"),
    ),
    Case(
        "RPC_SAME_SERVER_STREAMING",
        "WIRE",
        _rpc(kind="rpc M(A) returns (stream A)"),
        _rpc(),
        _rpc(kind="rpc M(A) returns (stream A)"),
    ),
    Case(
        "RPC_SAME_IDEMPOTENCY_LEVEL",
        "WIRE",
        _rpc("option idempotency_level = NO_SIDE_EFFECTS;"),
        _rpc(),
        _rpc("option idempotency_level = NO_SIDE_EFFECTS; /* same */"),
    ),
    Case(
        "RPC_SAME_ONEWAY",
        "WIRE",
        OPT + _rpc("option (protobind.v1.oneway) = true;"),
        OPT + _rpc(),
        OPT + _rpc("option (protobind.v1.oneway) = true; option (protobind.v1.durable) = false;"),
    ),
    Case(
        "RPC_SAME_DURABLE",
        "WIRE",
        OPT + _rpc(),
        OPT + _rpc("option (protobind.v1.durable) = true;"),
        OPT + _rpc("option (protobind.v1.durable) = false;"),
    ),
    Case(
        "RPC_HTTP_ROUTE_NO_DELETE",
        "WIRE_JSON",
        HTTP + _rpc('option (google.api.http) = {get: "/v1/a/{a}"};'),
        HTTP + _rpc('option (google.api.http) = {post: "/v1/a/{a}" body: "*"};'),
        HTTP + _rpc('option (google.api.http) = {get: "/v1/a/{a}" additional_bindings {get: "/v2/a/{a}"}};'),
    ),
    Case(
        "RPC_SAME_HTTP_BODY",
        "WIRE_JSON",
        HTTP + _rpc('option (google.api.http) = {post: "/v1/a" body: "*"};'),
        HTTP + _rpc('option (google.api.http) = {post: "/v1/a" body: "a"};'),
        HTTP + _rpc('option (google.api.http) = {post: "/v1/a" body: "*"}; /* same */'),
    ),
    Case(
        "RPC_SAME_HTTP_RESPONSE_BODY",
        "WIRE_JSON",
        HTTP + _rpc('option (google.api.http) = {get: "/v1/a"};'),
        HTTP + _rpc('option (google.api.http) = {get: "/v1/a" response_body: "a"};'),
        HTTP + _rpc('option (google.api.http) = {get: "/v1/a" response_body: ""};'),
    ),
    Case(
        "MESSAGE_NO_DELETE",
        "FILE",
        "message A {} message B {}",
        "message A {}",
        "message A {} message B {} message C {}",
    ),
    Case(
        "MESSAGE_NO_DELETE",
        "FILE",
        {"": "message A {} message B {}", "_b": "message X {}"},
        {"": "message A {}", "_b": "message X {} message B {}"},
        {"": "message A {} message B {}", "_b": "message X {}"},
    ),
    Case(
        "MESSAGE_SAME_JSON_FORMAT",
        "WIRE_JSON",
        ED + " message A { int32 a = 1; }",
        ED + " message A { option features.json_format = LEGACY_BEST_EFFORT; int32 a = 1; }",
        ED + " message A { option features.json_format = ALLOW; int32 a = 1; }",
    ),
    Case(
        "MESSAGE_SAME_REQUIRED_FIELDS",
        "WIRE",
        P2 + " message A { optional int32 a = 1; }",
        P2 + " message A { optional int32 a = 1; required int32 b = 2; }",
        P2 + " message A { optional int32 a = 1; optional int32 b = 2; }",
    ),
    Case(
        "RESERVED_MESSAGE_NO_DELETE",
        "WIRE",
        'message A { reserved 5 to 9; reserved "x"; }',
        'message A { reserved 5 to 8; reserved "x"; }',
        'message A { reserved 4 to 10; reserved "x", "y"; }',
    ),
    Case(
        "EXTENSION_MESSAGE_NO_DELETE",
        "FILE",
        P2 + " message A { extensions 100 to 199; }",
        P2 + " message A {}",
        P2 + " message A { extensions 100 to 299; }",
    ),
    Case(
        "EXTENSION_NO_DELETE",
        "FILE",
        P2 + " message A { extensions 100 to 199; } extend A { optional int32 x = 100; }",
        P2 + " message A { extensions 100 to 199; }",
        P2
        + " message A { extensions 100 to 199; }"
        + " extend A { optional int32 x = 100; optional int32 y = 101; }",
    ),
    Case(
        "ONEOF_NO_DELETE",
        "FILE",
        "message A { oneof k { int32 a = 1; int32 b = 2; } }",
        "message A { int32 a = 1; int32 b = 2; }",
        "message A { oneof k { int32 a = 1; int32 b = 2; int32 c = 3; } }",
    ),
    Case(
        "FIELD_NO_DELETE",
        "FILE",
        "message A { int32 a = 1; int32 b = 2; }",
        'message A { int32 a = 1; reserved 2; reserved "b"; }',
        "message A { int32 a = 1; int32 b = 2; int32 c = 3; }",
    ),
    Case(
        "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED",
        "WIRE",
        "message A { int32 a = 1; int32 b = 2; }",
        "message A { int32 a = 1; }",
        "message A { int32 a = 1; reserved 2; }",
    ),
    Case(
        "FIELD_NO_DELETE_UNLESS_NAME_RESERVED",
        "WIRE_JSON",
        "message A { int32 a = 1; int32 b = 2; }",
        "message A { int32 a = 1; reserved 2; }",
        'message A { int32 a = 1; reserved 2; reserved "b"; }',
    ),
    Case(
        "FIELD_NO_DELETE_IN_JSON_REQUEST", "WIRE_JSON", _req(True, True), _req(False, True), _req(True, False)
    ),
    Case(
        "FIELD_SAME_NAME",
        "WIRE_JSON",
        "message A { int32 a = 1; }",
        "message A { int32 b = 1; }",
        "message A { int32 a = 1; int32 b = 2; }",
    ),
    Case(
        "FIELD_SAME_JSON_NAME",
        "WIRE_JSON",
        "message A { int32 a = 1; }",
        'message A { int32 a = 1 [json_name = "x"]; }',
        'message A { int32 a = 1 [json_name = "a"]; }',
    ),
    Case(
        "FIELD_SAME_TYPE",
        "FILE",
        "message A { int32 a = 1; }",
        "message A { uint32 a = 1; }",
        "message A { int32 a = 1; int64 b = 2; }",
    ),
    Case(
        "FIELD_WIRE_JSON_COMPATIBLE_TYPE",
        "WIRE_JSON",
        "message A { int32 a = 1; }",
        "message A { int64 a = 1; }",
        "message A { uint32 a = 1; }",
    ),
    Case(
        "FIELD_WIRE_COMPATIBLE_TYPE",
        "WIRE",
        "message A { int32 a = 1; }",
        "message A { sint32 a = 1; }",
        "message A { int64 a = 1; }",
    ),
    Case(
        "FIELD_SAME_CARDINALITY",
        "FILE",
        "message A { int32 a = 1; }",
        "message A { optional int32 a = 1; }",
        "message A { int32 a = 1; optional int32 b = 2; }",
    ),
    Case(
        "FIELD_WIRE_JSON_COMPATIBLE_CARDINALITY",
        "WIRE_JSON",
        "message A { repeated int32 a = 1; }",
        "message A { int32 a = 1; }",
        "message A { repeated uint32 a = 1; }",
    ),
    Case(
        "FIELD_WIRE_COMPATIBLE_CARDINALITY",
        "WIRE",
        "message A { repeated int32 a = 1; }",
        "message A { int32 a = 1; }",
        "message A { repeated int64 a = 1; }",
    ),
    Case(
        "FIELD_SAME_ONEOF",
        "WIRE",
        "message A { int32 a = 1; int32 b = 2; }",
        "message A { oneof k { int32 a = 1; } int32 b = 2; }",
        "message A { int32 a = 1; int32 b = 2; oneof k { int32 c = 3; } }",
    ),
    Case(
        "FIELD_SAME_DEFAULT",
        "WIRE",
        P2 + " message A { optional int32 a = 1 [default = 5]; }",
        P2 + " message A { optional int32 a = 1 [default = 6]; }",
        P2 + " message A { optional int64 a = 1 [default = 5]; }",
    ),
    Case(
        "FIELD_SAME_UTF8_VALIDATION",
        "FILE",
        ED + " message A { string s = 1; }",
        ED + " message A { string s = 1 [features.utf8_validation = NONE]; }",
        ED + " message A { string s = 1 [features.utf8_validation = VERIFY]; }",
    ),
    Case(
        "ENUM_NO_DELETE",
        "FILE",
        "enum E { E_0 = 0; } message A {}",
        "message A {}",
        "enum E { E_0 = 0; E_1 = 1; } message A {}",
    ),
    Case(
        "ENUM_SAME_TYPE",
        "FILE",
        ED + " enum E { E_0 = 0; }",
        ED + " enum E { option features.enum_type = CLOSED; E_0 = 0; }",
        ED + " enum E { option features.enum_type = OPEN; E_0 = 0; }",
    ),
    Case(
        "ENUM_SAME_JSON_FORMAT",
        "WIRE_JSON",
        ED + " enum E { E_0 = 0; }",
        ED + " enum E { option features.json_format = LEGACY_BEST_EFFORT; E_0 = 0; }",
        ED + " enum E { E_0 = 0; E_1 = 1; }",
    ),
    Case(
        "ENUM_VALUE_NO_DELETE",
        "FILE",
        "enum E { E_0 = 0; E_1 = 1; }",
        'enum E { E_0 = 0; reserved 1; reserved "E_1"; }',
        "enum E { E_0 = 0; E_1 = 1; E_2 = 2; }",
    ),
    Case(
        "ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED",
        "WIRE",
        "enum E { E_0 = 0; E_1 = 1; }",
        "enum E { E_0 = 0; }",
        "enum E { E_0 = 0; reserved 1; }",
    ),
    Case(
        "ENUM_VALUE_NO_DELETE_UNLESS_NAME_RESERVED",
        "WIRE_JSON",
        "enum E { E_0 = 0; E_1 = 1; }",
        "enum E { E_0 = 0; reserved 1; }",
        'enum E { E_0 = 0; reserved 1; reserved "E_1"; }',
    ),
    Case(
        "ENUM_VALUE_NO_DELETE_IN_JSON_REQUEST",
        "WIRE_JSON",
        _req_enum(True, True),
        _req_enum(False, True),
        _req_enum(True, False),
    ),
    Case(
        "ENUM_VALUE_SAME_NAME",
        "WIRE_JSON",
        "enum E { E_0 = 0; E_1 = 1; }",
        "enum E { E_0 = 0; E_ONE = 1; }",
        "enum E { E_0 = 0; E_1 = 1; E_ONE = 2; }",
    ),
    Case(
        "RESERVED_ENUM_NO_DELETE",
        "WIRE",
        'enum E { E_0 = 0; reserved 5 to 9; reserved "X"; }',
        'enum E { E_0 = 0; reserved 5 to 8; reserved "X"; }',
        'enum E { E_0 = 0; reserved 5 to 10; reserved "X", "Y"; }',
    ),
]


def _texts(proto: Proto, stem: str) -> dict[str, str]:
    if proto is None:
        return {}
    files = {"": proto} if isinstance(proto, str) else proto
    texts = {}
    for suffix, text in files.items():
        header = "" if text.startswith(("syntax", "edition")) else 'syntax = "proto3"; package {pkg};\n'
        texts[f"{stem}{suffix}.proto"] = (header + text).replace("{pkg}", stem)
    return texts


def _write(root: Path, texts: dict[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (root / name).write_text(text)


def _stem(i: int) -> str:
    return f"c{i:02d}"


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], list[Finding]]:
    """Every case compiled at once (one file set per variant): (variant, level) -> findings."""
    root = tmp_path_factory.mktemp("table")
    _write(root / "include" / "protobind" / "v1", {"options.proto": OPTIONS})
    for i, case in enumerate(CASES):
        for variant in ("old", "breaking", "safe"):
            _write(root / variant, _texts(getattr(case, variant), _stem(i)))
    includes = (str(root / "include"),)
    old = Side("OLD", (str(root / "old"),), includes)
    return {
        (variant, level): breaking_changes(old, Side("NEW", (str(root / variant),), includes), level)
        for variant in ("breaking", "safe")
        for level in LEVELS
    }


def _of_case(findings: list[Finding], i: int) -> list[Finding]:
    """The findings in case ``i``'s files (``cNN.proto``, ``cNN_b.proto``)."""
    names = (f"{_stem(i)}.proto", f"{_stem(i)}_")
    return [f for f in findings if Path(f.file).name.startswith(names)]


def test_every_rule_has_a_case() -> None:
    assert {case.rule for case in CASES} == set(RULES)
    assert all(case.level in RULES[case.rule].levels for case in CASES)


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c.rule}-{c.level}" for c in CASES])
def test_rule_breaking_and_safe_variants(table: dict[tuple[str, str], list[Finding]], i: int) -> None:
    case = CASES[i]
    found = _of_case(table["breaking", case.level], i)
    assert case.rule in {f.rule for f in found}, found
    assert _of_case(table["safe", case.level], i) == []
    # A stricter level never calls compatible what a weaker one calls breaking.
    for level in LEVELS[LEVELS.index(case.level) :]:
        assert _of_case(table["breaking", level], i), level


def test_map_changes_are_reported_on_the_field(tmp_path: Path) -> None:
    old = 'syntax = "proto3"; package m; message A {\n  map<string, string> labels = 1;\n}\n'
    new = 'syntax = "proto3"; package m; message A {\n  map<string, int32> labels = 1;\n}\n'
    _write(tmp_path / "old", {"m.proto": old})
    _write(tmp_path / "new", {"m.proto": new})
    for level in LEVELS:
        found = breaking_changes(
            Side("OLD", (str(tmp_path / "old"),)), Side("NEW", (str(tmp_path / "new"),)), level
        )
        assert len(found) == 1, found
        assert (found[0].line, found[0].column) == (2, 3)
        assert found[0].message == (
            "field 1 'labels' of message m.A changed type from map<string, string> to map<string, int32>"
        )
        assert "Entry" not in str(found[0])


def test_docs_list_every_rule_at_its_levels() -> None:
    rows = {}
    for line in (ROOT / "docs" / "cli.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 5 and cells[0].startswith("`") and cells[0].split("`")[1] in RULES:
            rows[cells[0].split("`")[1]] = frozenset(
                lv for lv, mark in zip(LEVELS, cells[1:4], strict=True) if mark
            )
    assert rows == {rule_id: rule.levels for rule_id, rule in RULES.items()}


def test_protobind_servers_reject_a_reserved_json_name() -> None:
    """Why FIELD_NO_DELETE_IN_JSON_REQUEST exists: if the runtime ever skips reserved names, narrow it."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    import protobind
    from protobind.codec import JSON

    file = descriptor_pb2.FileDescriptorProto(name="reserved.proto", package="reserved", syntax="proto3")
    message = file.message_type.add(name="A", reserved_name=["x"])
    message.reserved_range.add(start=2, end=3)
    field = descriptor_pb2.FieldDescriptorProto
    message.field.add(name="a", number=1, type=field.TYPE_INT32, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    request_type = message_factory.GetMessageClass(pool.FindMessageTypeByName("reserved.A"))
    assert JSON.decode(b'{"a": 1}', request_type).a == 1
    with pytest.raises(protobind.RpcError) as error:
        JSON.decode(b'{"a": 1, "x": 2}', request_type)
    assert error.value.code is protobind.Code.INVALID_ARGUMENT


# -- each side against its own roots ------------------------------------------------------------------

REQUEST_V1 = 'syntax = "proto3";\npackage shop.v1;\nmessage Item {\n  string id = 1;\n  int32 count = 2;\n}\n'
REQUEST_V2 = 'syntax = "proto3";\npackage shop.v1;\nmessage Item {\n  string id = 1;\n}\n'


@pytest.fixture
def versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for side, text in (("old", REQUEST_V1), ("new", REQUEST_V2)):
        _write(tmp_path / side / "shop" / "v1", {"shop.proto": text})
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["breaking", *args])
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


@pytest.mark.parametrize(
    "args",
    [
        ["old", "new"],
        ["old", "new", "-I", "old"],
        ["old", "new", "-I", "new"],
        ["old", "new", "-I", "old", "-I", "new"],
        ["old", "new", "-I", "new", "-I", "old"],
        ["old/shop/v1/shop.proto", "new/shop/v1/shop.proto", "-I", "old", "-I", "new"],
        ["old/shop/v1/shop.proto", "new/shop/v1/shop.proto", "-I", "new", "-I", "old"],
        ["old/shop/v1/shop.proto", "new/shop/v1/shop.proto", "-I", "old"],
        ["old/shop/v1/shop.proto", "new/shop/v1/shop.proto"],
        ["old/shop", "new/shop", "-I", "old", "-I", "new"],
        ["new", "--against", "old", "-I", "old"],
        ["old", "new", "-I", "."],
    ],
    ids=lambda args: " ".join(args),
)
def test_each_side_uses_its_own_files(
    versions: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    """Every one of these answered "no breaking changes", exit 0, before each side had its own roots."""
    code, out, err = _cli(capsys, *args)
    assert code == 1, (out, err)
    assert "new/shop/v1/shop.proto:3:1: FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED: field 2 'count'" in out
    assert err.strip() == "2 breaking change(s) at level WIRE_JSON"


def test_an_include_path_that_shadows_an_input_is_an_error(
    versions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(versions / "old", versions / "copy")
    code, out, err = _cli(capsys, "old", "new", "-I", "copy")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "include path" in err and "copy holds shop/v1/shop.proto" in err and "shadow" in err


def test_a_side_never_borrows_a_file_it_lacks(versions: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """NEW still imports a file it deleted: OLD's copy must not complete it."""
    _write(
        versions / "old" / "shop" / "v1",
        {"extra.proto": 'syntax = "proto3";\npackage shop.v1;\nmessage X {}\n'},
    )
    importer = REQUEST_V1.replace("package shop.v1;", 'package shop.v1;\nimport "shop/v1/extra.proto";')
    (versions / "new" / "shop" / "v1" / "shop.proto").write_text(importer)
    for extra in ([], ["-I", "old"], ["-I", "old", "-I", "new"]):
        code, out, err = _cli(capsys, "old", "new", *extra)
        assert code == 1 and out == "", extra
        assert "NEW: shop/v1/extra.proto: File not found" in err, err


def test_overlapping_sides_are_an_error(versions: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, ".", "new")
    assert code == 1 and out == "" and "overlap" in err and len(err.strip().splitlines()) == 1


# -- output ------------------------------------------------------------------------------------------------


def test_output_formats(versions: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "old", "new", "--format", "json")
    assert code == 1
    report = json.loads(out)
    assert report["level"] == "WIRE_JSON"
    assert {(f["file"], f["line"], f["column"], f["rule"]) for f in report["breaking"]} == {
        ("new/shop/v1/shop.proto", 3, 1, "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED"),
        ("new/shop/v1/shop.proto", 3, 1, "FIELD_NO_DELETE_UNLESS_NAME_RESERVED"),
    }
    code, out, _ = _cli(capsys, "old", "new", "--format", "github", "--level", "FILE")
    assert code == 1
    assert out.splitlines() == [
        "::error file=new/shop/v1/shop.proto,line=3,col=1,title=FIELD_NO_DELETE::"
        "field 2 'count' of message shop.v1.Item was deleted"
    ]
    code, out, err = _cli(capsys, "new", "old")
    assert (code, out, err) == (0, "no breaking changes (level WIRE_JSON)\n", "")
    code, out, _ = _cli(capsys, "new", "old", "--format", "json")
    assert code == 0 and json.loads(out) == {"level": "WIRE_JSON", "breaking": []}


def test_streaming_changes_name_the_transport_impact(tmp_path: Path) -> None:
    old = 'syntax = "proto3"; package s; service S { rpc M(A) returns (A); } message A {}'
    new = old.replace("rpc M(A) returns (A)", "rpc M(stream A) returns (stream A)")
    _write(tmp_path / "old", {"s.proto": old})
    _write(tmp_path / "new", {"s.proto": new})
    found = breaking_changes(Side("OLD", (str(tmp_path / "old"),)), Side("NEW", (str(tmp_path / "new"),)))
    assert {f.rule for f in found} == {"RPC_SAME_CLIENT_STREAMING", "RPC_SAME_SERVER_STREAMING"}
    assert all(
        "from unary to bidi streaming" in f.message and "HTTP/1.1 (UNIMPLEMENTED)" in f.message for f in found
    )


# -- --against git:REF -------------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo, check=True, capture_output=True,
    )  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    _git(tmp_path, "init", "-q")
    money = 'syntax = "proto3";\npackage vendor.v1;\nmessage Money { int64 units = 1; }\n'
    _write(tmp_path / "third_party" / "vendor" / "v1", {"money.proto": money})
    shop = REQUEST_V1.replace("package shop.v1;", 'package shop.v1;\nimport "vendor/v1/money.proto";')
    shop = shop.replace("  int32 count = 2;\n", "  int32 count = 2;\n  vendor.v1.Money price = 3;\n")
    _write(tmp_path / "proto" / "shop" / "v1", {"shop.proto": shop})
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "v1")
    _git(tmp_path, "tag", "v1.0")
    monkeypatch.chdir(tmp_path / "proto")
    yield tmp_path


def test_against_a_git_ref(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The vendored file changes too: v1.0's shop.proto compiles only with v1.0's copy of it.
    (repo / "third_party" / "vendor" / "v1" / "money.proto").write_text(
        'syntax = "proto3";\npackage vendor.v1;\nmessage Cash { int64 units = 1; }\n'
    )
    shop = repo / "proto" / "shop" / "v1" / "shop.proto"
    text = shop.read_text().replace("int32 count", "int64 count").replace("Money price", "Cash price")
    shop.write_text(text)
    code, out, err = _cli(capsys, ".", "--against", "git:v1.0", "-I", "../third_party")
    assert code == 1, err
    assert out.splitlines() == [
        "shop/v1/shop.proto:6:3: FIELD_WIRE_JSON_COMPATIBLE_TYPE: field 2 'count' of message shop.v1.Item "
        "changed type from int32 to int64",
        "shop/v1/shop.proto:7:3: FIELD_WIRE_JSON_COMPATIBLE_TYPE: field 3 'price' of message shop.v1.Item "
        "changed type from vendor.v1.Money to vendor.v1.Cash",
    ]
    code, out, err = _cli(
        capsys, "shop/v1/shop.proto", "--against", "git:v1.0", "-I", ".", "-I", "../third_party"
    )
    assert code == 1 and len(out.splitlines()) == 2, err
    _git(repo, "commit", "-q", "-am", "v2")
    code, out, err = _cli(capsys, ".", "--against", "git:HEAD", "-I", "../third_party")
    assert (code, out) == (0, "no breaking changes (level WIRE_JSON)\n"), err


def test_against_git_mistakes_are_one_line(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(repo / "proto" / "next", {"x.proto": 'syntax = "proto3";\npackage next;\n'})
    for args, message in (
        ([".", "--against", "git:no-such-tag"], "git:no-such-tag: no such revision"),
        (["next", "--against", "git:v1.0"], "next has no .proto files at git:v1.0"),
        (["/", "--against", "git:v1.0"], "/ is not in a git repository"),
        (["old", "new", "--against", "git:v1.0"], "give OLD_PATH NEW_PATH, or NEW_PATH --against"),
    ):
        code, out, err = _cli(capsys, *args)
        assert code == 1 and out == "", args
        assert len(err.strip().splitlines()) == 1 and message in err, err


# -- the same findings as buf -------------------------------------------------------------------------

BUF_VERSION = "1.75.0"
# above the suite's 300 s (pyproject.toml): the first test to run buf installs it (300 s at most)
pytestmark = pytest.mark.timeout(600)
# The cases buf can compile (protobind's options and google/api are not in its module).
BUF_HELD = [i for i, case in enumerate(CASES) if not any(imp in str(case.old) for imp in (OPT, HTTP))]


def _buf() -> Path:
    """The buf binary from npm's @bufbuild/buf, installed once into tests/.gen (git-ignored)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed")
    prefix = GEN / f"buf-{BUF_VERSION}"
    binary = prefix / "node_modules" / ".bin" / "buf"
    if not binary.exists():
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                f"@bufbuild/buf@{BUF_VERSION}",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return binary


# A buf id that names the same change as one of ours (Java's UTF-8 check follows the file's own).
BUF_TO_OURS = {"FIELD_SAME_JAVA_UTF8_VALIDATION": "FIELD_SAME_UTF8_VALIDATION"}


def _case_of(name: str) -> str:
    """``c07`` for ``new/c07_b.proto``: table findings are compared per case (a move is reported by
    buf where the element was, by protobind where it is now)."""
    return Path(name).name.split(".")[0].split("_")[0]


def _compare_with_buf(
    root: Path, new: str, level: str, key: Callable[[str], str]
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(buf's findings, protobind's) for ``root/new`` against ``root/old`` as {(key(file), rule)}."""
    for side in ("old", new):
        (root / side / "buf.yaml").write_text(f"version: v2\nbreaking:\n  use: [{level}]\n")
    result = subprocess.run(
        [str(_buf()), "breaking", new, "--against", "old", "--error-format", "json"],
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode in (0, 100), result.stderr
    by_buf = set()
    for finding in map(json.loads, result.stdout.splitlines()):
        name = finding.get("path") or finding["message"].split('"')[1]  # FILE_NO_DELETE: no path
        by_buf.add((key(name), BUF_TO_OURS.get(finding["type"], finding["type"])))
    ours = breaking_changes(Side("OLD", (str(root / "old"),)), Side("NEW", (str(root / new),)), level)
    return by_buf, {(key(f.file), f.rule) for f in ours}


@pytest.mark.parametrize("level", LEVELS)
def test_protobind_reports_everything_buf_reports(tmp_path: Path, level: str) -> None:
    """The rule table's changes, breaking and safe variants."""
    for variant in ("old", "breaking", "safe"):
        texts: dict[str, str] = {}
        for i in BUF_HELD:
            texts.update(_texts(getattr(CASES[i], variant), _stem(i)))
        _write(tmp_path / variant, texts)
    for variant in ("breaking", "safe"):
        by_buf, ours = _compare_with_buf(tmp_path, variant, level, _case_of)
        assert by_buf <= ours, sorted(by_buf - ours)
        if variant == "breaking":
            assert len(by_buf) >= len(BUF_HELD) // 3  # buf saw the changes (not an empty comparison)


# Several changes at once to a contract with imports, nested types, maps, oneofs and WKTs.
EDGE_CHANGES = [
    ("common/v1/money.proto", "int32 nanos = 3;", "int64 nanos = 3;"),
    ("common/v1/money.proto", "  STATUS_ACTIVE = 1;", "  reserved 1;"),
    ("shop/v1/types.proto", "map<string, int64> stock = 4;", "map<string, string> stock = 4;"),
    ("shop/v1/types.proto", "    int32 percent = 5;\n", ""),
    ("shop/v1/types.proto", "  string id = 1;\n", "  string id = 1;\n  int32 percent = 5;\n"),
    ("shop/v1/types.proto", "SIZE_S = 1", "SIZE_SMALL = 1"),
    ("shop/v1/types.proto", "optional string label = 11;", "string label = 11;"),
    ("shop/v1/types.proto", "  bool class = 13;", "  reserved 13;"),
    ("shop/v1/shop.proto", "rpc Tally(stream common.v1.Money)", "rpc Tally(common.v1.Money)"),
    ("shop/v1/shop.proto", "  rpc Import(Item.Variant) returns (google.protobuf.Empty);\n", ""),
    ("shop/v1/shop.proto", "service Nothing {}", "service Empty {}"),
]


@pytest.mark.parametrize("level", LEVELS)
def test_protobind_reports_everything_buf_reports_on_a_real_contract(tmp_path: Path, level: str) -> None:
    shutil.copytree(ROOT / "tests" / "protos" / "edge", tmp_path / "old")
    # buf resolves imports inside the module only: give it protobind's options as a file of its own
    options = tmp_path / "old" / "protobind" / "v1" / "options.proto"
    options.parent.mkdir(parents=True)
    shutil.copy(ROOT / "idl" / "protobind" / "v1" / "options.proto", options)
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    (tmp_path / "new" / "nopkg" / "plain.proto").unlink()
    for name, before, after in EDGE_CHANGES:
        path = tmp_path / "new" / name
        assert before in path.read_text(), before
        path.write_text(path.read_text().replace(before, after))
    by_buf, ours = _compare_with_buf(tmp_path, "new", level, lambda name: name.rpartition("new/")[2])
    assert by_buf <= ours, sorted(by_buf - ours)
    assert len(by_buf) >= 3
