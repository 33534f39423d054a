"""``protobind breaking OLD NEW``: the changes in NEW that break clients (or servers) built from OLD.

Checked, by full name: removed services, methods, messages, fields and enum values; a method
whose request or response type or streaming kind changed; a field whose number, type, label
(repeated/optional/map) or oneof membership changed; a field number reused under another name
without the old one being reserved. Additions are never breaking. Wire compatibility is the
rule: renaming a field keeps the binary encoding but breaks JSON, so it is reported too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from google.protobuf import descriptor_pb2

from .protoc import compile_protos

FieldProto = descriptor_pb2.FieldDescriptorProto


def _messages(
    prefix: str, messages: Iterable[descriptor_pb2.DescriptorProto]
) -> Iterable[tuple[str, descriptor_pb2.DescriptorProto]]:
    for message in messages:
        name = f"{prefix}.{message.name}" if prefix else message.name
        yield name, message
        yield from _messages(name, message.nested_type)


def _enums(
    prefix: str, file_or_message: descriptor_pb2.FileDescriptorProto | descriptor_pb2.DescriptorProto
) -> Iterable[tuple[str, descriptor_pb2.EnumDescriptorProto]]:
    for enum in file_or_message.enum_type:
        yield (f"{prefix}.{enum.name}" if prefix else enum.name), enum


class _Index:
    def __init__(self, files: Sequence[descriptor_pb2.FileDescriptorProto], names: Sequence[str]) -> None:
        wanted = [f for f in files if f.name in set(names)]
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.services: dict[str, descriptor_pb2.ServiceDescriptorProto] = {}
        for file in wanted:
            for name, message in _messages(file.package, file.message_type):
                self.messages[name] = message
                self.enums.update(_enums(name, message))
            self.enums.update(_enums(file.package, file))
            for service in file.service:
                self.services[f"{file.package}.{service.name}" if file.package else service.name] = service


def _field_shape(field: FieldProto, message: descriptor_pb2.DescriptorProto) -> str:
    label = {1: "", 2: "required ", 3: "repeated "}[field.label]
    if field.proto3_optional:
        label = "optional "
    kind = field.type_name.lstrip(".") if field.type_name else FieldProto.Type.Name(field.type)[5:].lower()
    oneof = ""
    if field.HasField("oneof_index") and not field.proto3_optional:
        oneof = f" in oneof {message.oneof_decl[field.oneof_index].name}"
    return f"{label}{kind}{oneof}"


def compare(old: _Index, new: _Index) -> list[str]:
    problems: list[str] = []
    for name, service in old.services.items():
        if name not in new.services:
            problems.append(f"service {name} was removed")
            continue
        new_methods = {m.name: m for m in new.services[name].method}
        for method in service.method:
            full = f"{name}/{method.name}"
            changed = new_methods.get(method.name)
            if changed is None:
                problems.append(f"method {full} was removed")
                continue
            for what in ("input_type", "output_type"):
                before, after = getattr(method, what), getattr(changed, what)
                if before != after:
                    label = "request" if what == "input_type" else "response"
                    problems.append(f"method {full}: {label} type changed from {before[1:]} to {after[1:]}")
            if (method.client_streaming, method.server_streaming) != (
                changed.client_streaming,
                changed.server_streaming,
            ):
                problems.append(f"method {full}: streaming kind changed")
    for name, message in old.messages.items():
        if name not in new.messages:
            problems.append(f"message {name} was removed")
            continue
        after = new.messages[name]
        new_by_number = {f.number: f for f in after.field}
        new_by_name = {f.name: f for f in after.field}
        for field in message.field:
            where = f"field {name}.{field.name}"
            same_number = new_by_number.get(field.number)
            if same_number is None:
                if field.name in new_by_name:
                    moved = new_by_name[field.name].number
                    problems.append(f"{where}: number changed from {field.number} to {moved}")
                elif not any(r.start <= field.number < r.end for r in after.reserved_range):
                    problems.append(f"{where} (#{field.number}) was removed without reserving its number")
                continue
            if same_number.name != field.name:
                problems.append(
                    f"{where} (#{field.number}) was renamed to {same_number.name} (breaks JSON clients)"
                )
            before_shape, after_shape = _field_shape(field, message), _field_shape(same_number, after)
            if before_shape != after_shape:
                problems.append(
                    f"{where} (#{field.number}): type changed from {before_shape} to {after_shape}"
                )
    for name, enum in old.enums.items():
        if name not in new.enums:
            problems.append(f"enum {name} was removed")
            continue
        after_numbers = {v.number: v.name for v in new.enums[name].value}
        for value in enum.value:
            if value.number not in after_numbers:
                problems.append(f"enum value {name}.{value.name} (= {value.number}) was removed")
            elif after_numbers[value.number] != value.name:
                problems.append(
                    f"enum value {name}.{value.name} (= {value.number}) was renamed to "
                    f"{after_numbers[value.number]} (breaks JSON clients)"
                )
    return problems


def breaking_changes(
    old_paths: Sequence[str], new_paths: Sequence[str], includes: Sequence[str] = ()
) -> list[str]:
    """Human-readable breaking changes from ``old_paths`` to ``new_paths`` (empty: compatible)."""
    old = _Index(*compile_protos(old_paths, includes))
    new = _Index(*compile_protos(new_paths, includes))
    return compare(old, new)
