"""Builds the kvstore package, generating its gRPC stubs from the node's
protocol (proto/kv.proto at the repository's top, or KV_PROTO)."""

import os
import pathlib
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent


def proto_file() -> pathlib.Path:
    """The protocol the stubs are generated from."""
    path = pathlib.Path(os.environ.get("KV_PROTO", HERE.parent.parent / "proto" / "kv.proto"))
    if not path.is_file():
        raise SystemExit(
            f"kvstore: {path} not found; build from a checkout of the repository "
            "or set KV_PROTO to the node's kv.proto"
        )
    return path


class BuildWithStubs(build_py):
    """build_py that first writes kvstore/_proto/kv_pb2*.py."""

    def run(self):
        from grpc_tools import protoc  # a build requirement

        out = pathlib.Path(self.build_lib)
        with tempfile.TemporaryDirectory() as tmp:
            # Placed as kvstore/_proto/kv.proto, so that the generated
            # modules import each other by their package path.
            staged = pathlib.Path(tmp) / "kvstore" / "_proto" / "kv.proto"
            staged.parent.mkdir(parents=True)
            shutil.copyfile(proto_file(), staged)
            target = out / "kvstore" / "_proto"
            target.mkdir(parents=True, exist_ok=True)
            (target / "__init__.py").write_text('"""Generated from proto/kv.proto."""\n')
            code = protoc.main(
                [
                    "grpc_tools.protoc",
                    f"-I{tmp}",
                    f"--python_out={out}",
                    f"--grpc_python_out={out}",
                    str(staged),
                ]
            )
            if code != 0:
                raise SystemExit(f"kvstore: protoc failed on {proto_file()} (exit {code})")
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
