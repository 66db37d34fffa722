"""The v1 contract as other parties see it: descriptors, other languages, the built wheel."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor

from storedvalue.v1 import back_office_service_pb2, errors_pb2, terminal_service_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
PROTO_FILES = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))

UNARY = (False, False)
SERVER_STREAM = (False, True)

EXPECTED_RPCS: dict[str, dict[str, tuple[bool, bool]]] = {
    "storedvalue.v1.TerminalService": {
        "LockCard": UNARY,
        "UnlockCard": UNARY,
        "Redeem": UNARY,
        "GetCard": UNARY,
        "IssueCard": UNARY,
        "AddValue": UNARY,
        "CompleteOffline": UNARY,
        "SyncOfflineBatch": UNARY,
        "GetParameters": UNARY,
        "WatchParameters": SERVER_STREAM,
        "ReportTerminalStatus": UNARY,
    },
    "storedvalue.v1.BackOfficeService": {
        "UpdateParameters": UNARY,
        "ListParameterVersions": UNARY,
        "ListLocks": UNARY,
        "ForceUnlockCard": UNARY,
        "ListOfflineExceptions": UNARY,
        "ResolveOfflineException": UNARY,
        "ListJournalEntries": UNARY,
        "RegisterTerminal": UNARY,
        "RotateTerminalCredential": UNARY,
        "ListTerminals": UNARY,
        "GetTerminalSyncStatus": UNARY,
        "GetStoreParameters": UNARY,
        "ListParameterChanges": UNARY,
        "RevokeTerminal": UNARY,
        "SetTerminalStore": UNARY,
    },
}


def _services() -> dict[str, descriptor.ServiceDescriptor]:
    return {
        s.full_name: s
        for module in (terminal_service_pb2, back_office_service_pb2)
        for s in module.DESCRIPTOR.services_by_name.values()
    }


def test_every_rpc_is_in_the_descriptors_with_its_streaming_kind() -> None:
    services = _services()
    assert set(services) == set(EXPECTED_RPCS)
    for name, expected in EXPECTED_RPCS.items():
        actual = {
            m.name: (m.client_streaming, m.server_streaming) for m in services[name].methods
        }
        assert actual == expected, name


def test_every_mutating_request_carries_a_request_id() -> None:
    reads = ("Get", "List", "Watch")
    for service in _services().values():
        for method in service.methods:
            if method.name.startswith(reads):
                continue
            fields = method.input_type.fields_by_name
            assert "request_id" in fields, f"{method.full_name} has no request_id"
            assert fields["request_id"].number == 1


def test_money_is_integer_minor_units_everywhere() -> None:
    seen: set[str] = set()

    def walk(message: descriptor.Descriptor) -> None:
        if message.full_name in seen:
            return
        seen.add(message.full_name)
        for field in message.fields:
            assert field.type not in (field.TYPE_FLOAT, field.TYPE_DOUBLE), field.full_name
            if field.message_type is not None:
                walk(field.message_type)

    for service in _services().values():
        for method in service.methods:
            walk(method.input_type)
            walk(method.output_type)
    money = terminal_service_pb2.RedeemRequest.DESCRIPTOR.fields_by_name["amount"].message_type
    assert money is not None
    assert money.fields_by_name["amount_minor"].type == descriptor.FieldDescriptor.TYPE_INT64


def test_error_reasons_are_prefixed_upper_snake_names() -> None:
    names = [v.name for v in errors_pb2.ErrorReason.DESCRIPTOR.values]
    assert names[0] == "ERROR_REASON_UNSPECIFIED"
    for name in names:
        assert name.startswith("ERROR_REASON_")
        assert name == name.upper()
    for required in ("CARD_NOT_FOUND", "CARD_LOCKED", "LOCK_NOT_HELD", "INSUFFICIENT_FUNDS",
                     "CURRENCY_MISMATCH", "INVALID_AMOUNT", "REQUEST_ID_REUSED"):
        assert f"ERROR_REASON_{required}" in names


def test_plain_protoc_reproduces_the_committed_python_byte_for_byte(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--python_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", *PROTO_FILES],
        cwd=PROTOS, check=True,
    )
    produced = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py"))
    assert produced, "protoc produced nothing"
    for rel in produced:
        assert filecmp.cmp(tmp_path / rel, ROOT / "generated" / rel, shallow=False), rel


def _system_protoc() -> str:
    protoc = shutil.which("protoc")
    if protoc is None:
        pytest.skip("no system protoc (Debian package protobuf-compiler)")
    return protoc


@pytest.mark.parametrize(("language", "suffix"), [("csharp", ".cs"), ("java", ".java")])
def test_other_languages_generate_from_the_protos(
    tmp_path: Path, language: str, suffix: str
) -> None:
    protoc = _system_protoc()
    result = subprocess.run(
        [protoc, "-I.", f"--{language}_out={tmp_path}", *PROTO_FILES],
        cwd=PROTOS, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    outputs = {p.name for p in tmp_path.rglob(f"*{suffix}")}
    expected = {"TerminalServiceProto", "BackOfficeServiceProto"} if language == "java" else {
        "TerminalService", "BackOfficeService"}
    assert {name.removesuffix(suffix) for name in outputs} >= expected
    if language == "java":
        assert (tmp_path / "dev" / "storedvalue" / "v1" / "LockCardRequest.java").exists()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as users get it: one wheel."""
    dist = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
         str(ROOT)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (built,) = dist.glob("storedvalue-*.whl")
    return built


@pytest.mark.slow
def test_generated_modules_import_from_a_built_wheel(tmp_path: Path, wheel: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    # Drop the source roots an editable install puts on sys.path, so only the wheel can
    # provide storedvalue; third-party packages still come from site-packages.
    probe = (
        "import sys\n"
        f"roots = {[str(ROOT / d) for d in ('generated', 'server', 'client')]!r}\n"
        f"sys.path = [{str(target)!r}] + [p for p in sys.path if p not in roots]\n"
        "from storedvalue.v1 import terminal_service_pb2, terminal_service_pb2_grpc\n"
        "import storedvalue.hq, storedvalue.terminal, storedvalue.cli\n"
        "where = terminal_service_pb2.__file__\n"
        "assert where.startswith(sys.path[0]), where\n"
        "print(terminal_service_pb2_grpc.TerminalServiceStub.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "TerminalServiceStub"


HQ_ONLY = ("sqlalchemy", "alembic", "psycopg", "uvloop", "grpc_reflection")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_till_installs_the_wheel_without_hqs_database_stack_and_serve_names_the_extra(
    tmp_path: Path, wheel: Path
) -> None:
    # The one test that installs from the package index: pip resolves the till's
    # dependencies (grpcio, protobuf, cryptography, ...) and unpacks them into a fresh
    # venv. That is network and disk work, not this project's code: 48 s with the CPUs
    # loaded 4 to 1 (load average 8 on 2 cores), past the suite's 120 s in CI runs where
    # the wheel's build (this module's fixture) fell into the same test. The venv is
    # made without pip (ensurepip alone took 12 s of it) and pip runs from this
    # interpreter with --python, installing into the venv as its own pip would.
    venv = tmp_path / "till-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python, storedvalue = venv / "bin" / "python", venv / "bin" / "storedvalue"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "XDG_DATA_HOME": str(tmp_path)}
    env.pop("VIRTUAL_ENV", None)
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                                "--quiet", str(wheel)],
                               capture_output=True, text=True, env=env, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr

    probe = (
        "import importlib.util, sys\n"
        "import storedvalue.terminal, storedvalue.cli\n"
        "for command in (None, 'terminal', 'admin'):\n"
        "    storedvalue.cli.build_parser(command)\n"
        f"absent = [m for m in {HQ_ONLY!r} if importlib.util.find_spec(m) is not None]\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('storedvalue.hq'))\n"
        "print(absent, loaded, storedvalue.terminal.__file__)\n"
    )
    imported = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=env,
                              cwd=tmp_path)
    terminal_help = subprocess.run([storedvalue, "terminal", "--help"], capture_output=True,
                                   text=True, env=env, cwd=tmp_path)
    admin_help = subprocess.run([storedvalue, "admin", "--help"], capture_output=True,
                                text=True, env=env, cwd=tmp_path)
    serve_help = subprocess.run([storedvalue, "serve", "--help"], capture_output=True,
                                text=True, env=env, cwd=tmp_path)
    serve = subprocess.run([storedvalue, "serve"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=60)

    assert imported.returncode == 0, imported.stderr
    # None of HQ's extra is installed, and the terminal library and CLI load no HQ module.
    assert imported.stdout.startswith("[] [] "), imported.stdout
    assert imported.stdout.split()[-1].startswith(str(venv)), imported.stdout
    assert terminal_help.returncode == 0, terminal_help.stderr
    assert "--terminal-id" in terminal_help.stdout
    assert admin_help.returncode == 0, admin_help.stderr
    assert serve_help.returncode == 0, serve_help.stderr  # the help needs no extra
    assert "storedvalue[hq]" in serve_help.stdout
    assert serve.returncode == 2
    assert "pip install 'storedvalue[hq]'" in serve.stderr, serve.stderr
    assert "Traceback" not in serve.stderr
    assert not (tmp_path / "storedvalue").exists()  # nothing created before refusing
