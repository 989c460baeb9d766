"""Build hook: generate the autoglm.v1 gRPC stubs from proto/ with the pinned grpcio-tools.

The generated ``*_pb2.py`` / ``*_pb2_grpc.py`` / ``*_pb2.pyi`` files are build outputs (ignored
by git, never edited by hand). They are regenerated on every build, editable installs included.
"""

from __future__ import annotations

import pathlib
from typing import ClassVar

from setuptools import Command, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

ROOT = pathlib.Path(__file__).parent
PROTO_ROOT = ROOT / "proto"


def generate_stubs() -> None:
    import grpc_tools
    from grpc_tools import protoc  # available in the isolated build env (pyproject requires)

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={PROTO_ROOT}",
        f"--pyi_out={PROTO_ROOT}",
        f"--grpc_python_out={PROTO_ROOT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed for {protos}")


class GenerateStubs(Command):
    description = "generate gRPC stubs from proto/"
    user_options: ClassVar[list] = []

    def initialize_options(self) -> None: ...

    def finalize_options(self) -> None: ...

    def run(self) -> None:
        generate_stubs()


class BuildPy(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


class EditableWheel(editable_wheel):
    def run(self) -> None:
        generate_stubs()
        super().run()


setup(
    cmdclass={"build_py": BuildPy, "editable_wheel": EditableWheel, "generate_stubs": GenerateStubs}
)
