"""Type-checker errors of three kinds of ``_pb2.pyi`` stubs over the same contract and user code.

    .venv/bin/python -m benchmarks.stubs

Generates the test suite's edge corpus (tests/protos/edge: maps, oneofs, optional, nested types,
well-known types, keyword names, enums, repeated, bytes, one-way and durable methods) three ways
and checks each with ``mypy --strict``, pyright and ``pyright --strict`` (as a typeCheckingMode),
over the stubs, the ``_protobind.py`` modules and tests/typing_user.py, a module that uses every
construct. It prints the error counts; codegen/protobind_codegen/stubs.py records the last run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from protobind_codegen.generate import generated_files
from protobind_codegen.protoc import compile_protos, standard_includes
from protobind_codegen.stubs import PYRIGHT_HEADER

ROOT = Path(__file__).resolve().parent.parent
EDGE = ROOT / "tests" / "protos" / "edge"
USER = ROOT / "tests" / "typing_user.py"


def _variants(out: Path) -> dict[str, Path]:
    files, names = compile_protos([str(EDGE)], [str(EDGE)])
    produced = generated_files(files, names)
    dirs = {}
    for variant in ("protoc --pyi_out", "mypy-protobuf", "mypy-protobuf + header (shipped)"):
        target = out / re.sub(r"\W+", "_", variant)
        target.mkdir()
        args = [sys.executable, "-m", "grpc_tools.protoc", f"-I{EDGE}"]
        args += [f"-I{i}" for i in standard_includes()] + [f"--python_out={target}"]
        if variant.startswith("protoc"):
            args.append(f"--pyi_out={target}")
        subprocess.run([*args, *names], check=True)
        for name, content in produced:
            if name.endswith(".pyi") and variant.startswith("protoc"):
                continue
            if name.endswith(".pyi") and variant == "mypy-protobuf":
                content = content.removeprefix(PYRIGHT_HEADER)
            (target / name).write_text(content)
        user = USER.read_text()
        if variant.startswith("protoc"):  # protoc types enum values as the enum class itself
            user = user.replace("Item.Variant.Size.ValueType", "Item.Variant.Size")
        (target / "user.py").write_text(user)
        dirs[variant] = target
    return dirs


def _checked(directory: Path) -> list[str]:
    names = [p.relative_to(directory) for p in directory.rglob("*")]
    return [*sorted(str(n) for n in names if n.name.endswith(("_pb2.pyi", "_protobind.py"))), "user.py"]


def mypy(directory: Path) -> int:
    env = dict(os.environ, MYPYPATH=os.pathsep.join([str(directory), str(ROOT / "runtime")]))
    args = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-version", "3.10"]
    args += ["--explicit-package-bases", "--config-file", os.devnull, *_checked(directory)]
    result = subprocess.run(args, capture_output=True, text=True, cwd=directory, env=env)
    return sum(": error:" in line for line in result.stdout.splitlines())


def pyright(directory: Path, mode: str) -> int:
    config = {"typeCheckingMode": mode, "pythonVersion": "3.10", "extraPaths": [".", str(ROOT / "runtime")]}
    (directory / "pyrightconfig.json").write_text(json.dumps(config))
    pyright_bin = Path(sys.executable).parent / "pyright"
    args = [str(pyright_bin), "--pythonpath", sys.executable, "--outputjson", *_checked(directory)]
    result = subprocess.run(args, capture_output=True, text=True, cwd=directory)
    report = json.loads(result.stdout)
    return sum(1 for d in report["generalDiagnostics"] if d["severity"] == "error")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'stubs':34} {'mypy --strict':>14} {'pyright':>8} {'pyright strict':>15}")
        for variant, directory in _variants(Path(tmp)).items():
            counts = (mypy(directory), pyright(directory, "standard"), pyright(directory, "strict"))
            print(f"{variant:34} {counts[0]:>14} {counts[1]:>8} {counts[2]:>15}", flush=True)


if __name__ == "__main__":
    main()
