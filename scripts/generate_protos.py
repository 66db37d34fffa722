"""Regenerate generated/ from protos/: messages, gRPC stubs, their .pyi typing stubs, and the
descriptor set (with the protos' comments) that HQ serves through reflection.

The import path of the generated modules equals the proto package (``storedvalue.v1``)
because protoc runs with protos/ as its only include root, so plain
``python -m grpc_tools.protoc -I protos --python_out=generated --grpc_python_out=generated``
reproduces the .py files byte for byte.

Usage:
    python scripts/generate_protos.py          # rewrite generated/
    python scripts/generate_protos.py --check  # exit 1 if generated/ is stale
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED = ROOT / "generated"
PACKAGE_DIR = Path("storedvalue") / "v1"
# Every file of the contract and its imports, with source info (the comments), so that
# reflection clients (grpcurl describe, buf curl) show the documentation.
DESCRIPTOR_SET = PACKAGE_DIR / "descriptor_set.binpb"

# Written beside the generated modules so that storedvalue.v1 is a typed regular package
# while storedvalue itself stays a PEP 420 namespace shared with server/ and client/.
EXTRA_FILES = {
    "__init__.py": '"""Generated from protos/storedvalue/v1 by scripts/generate_protos.py."""\n',
    "py.typed": "",
}


def _plugin(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the project's dev extra (mypy-protobuf)")
    return found


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE_DIR).glob("*.proto"))
    (out / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--descriptor_set_out={out / DESCRIPTOR_SET}",
        "--include_source_info",
        "--include_imports",
        *protos,
    ]
    done = subprocess.run(cmd, cwd=PROTOS, capture_output=True, text=True)
    if done.returncode != 0:  # mypy-protobuf chatters on success; show output only on failure
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"protoc failed with exit code {done.returncode}")
    for name, text in EXTRA_FILES.items():
        (out / PACKAGE_DIR / name).write_text(text)


def _tree(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = _tree(fresh), _tree(GENERATED)
        stale = sorted(want ^ have)
        stale += sorted(
            name for name in want & have if not filecmp.cmp(fresh / name, GENERATED / name, False)
        )
    if stale:
        print("generated/ is stale; run: python scripts/generate_protos.py", file=sys.stderr)
        for name in stale:
            print(f"  differs: generated/{name}", file=sys.stderr)
        return 1
    print("generated/ is fresh")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated/ is stale")
    args = parser.parse_args()
    if args.check:
        return check()
    if GENERATED.exists():
        shutil.rmtree(GENERATED)
    generate(GENERATED)
    print(f"wrote {GENERATED.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
