"""Generate Python code and type stubs for the protos into services/api/.

protoc names imports after the proto package (``from accrual.v1 import ...``);
the generated modules live at ``services.api.accrual.v1``, so their imports
are rewritten to match. The serialized descriptors are left untouched.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "services" / "api"
PY_IMPORT = re.compile(r"^(from|import) accrual\.v1", re.MULTILINE)
STUB_REFERENCE = re.compile(r"(?<![\w.])accrual\.v1\.")


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "accrual" / "v1").mkdir(parents=True)
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    plugins = Path(sys.executable).parent
    status = protoc.main(
        [
            "protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
            f"--python_out={OUT}",
            f"--grpc_python_out={OUT}",
            f"--mypy_out={OUT}",
            f"--mypy_grpc_out={OUT}",
            *sources,
        ]
    )
    if status != 0:
        return int(status)
    for path in OUT.rglob("*.py*"):
        text = path.read_text()
        text = PY_IMPORT.sub(r"\1 services.api.accrual.v1", text)
        if path.suffix == ".pyi":
            text = STUB_REFERENCE.sub("services.api.accrual.v1.", text)
        path.write_text(text)
    for package in (OUT, OUT / "accrual", OUT / "accrual" / "v1"):
        (package / "__init__.py").write_text('"""Generated from protos/ by protos/generate.py."""\n')
    return 0


if __name__ == "__main__":
    sys.exit(main())
