"""Generate Python code and type stubs for the protos into services/api/.

protoc names imports after the proto package (``from accrual.v1 import ...``);
the generated modules live at ``services.api.accrual.v1``, so their imports
are rewritten to match. The serialized descriptors are left untouched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "services" / "api"
GENERATED_NOTE = "Generated from protos/ by protos/generate.py; do not edit."
PY_IMPORT = re.compile(r"^(from|import) accrual\.v1", re.MULTILINE)
STUB_REFERENCE = re.compile(r"(?<![\w.])accrual\.v1\.")


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "accrual" / "v1").mkdir(parents=True)
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    plugins = Path(sys.executable).parent
    result = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
            f"--python_out={OUT}",
            f"--grpc_python_out={OUT}",
            f"--mypy_out={OUT}",
            f"--mypy_grpc_out={OUT}",
            *sources,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        # Only failures are worth showing; the mypy plugin chats on success.
        print(result.stdout + result.stderr, file=sys.stderr)  # noqa: T201
        return result.returncode
    for path in OUT.rglob("*.py*"):
        text = path.read_text()
        text = PY_IMPORT.sub(r"\1 services.api.accrual.v1", text)
        if path.suffix == ".pyi":
            text = STUB_REFERENCE.sub("services.api.accrual.v1.", text)
        path.write_text(text)
    for package in (OUT, OUT / "accrual", OUT / "accrual" / "v1"):
        (package / "__init__.py").write_text(f'"""{GENERATED_NOTE}"""\n')
    return 0


if __name__ == "__main__":
    sys.exit(main())
