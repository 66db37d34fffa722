"""HQ process configuration: flags over environment over defaults, the admin token file,
and the plaintext-only-on-loopback rule."""

from __future__ import annotations

import argparse
import re
import socket
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from storedvalue.cli import main
from storedvalue.cli.serve import add_arguments
from storedvalue.hq import addresses
from storedvalue.hq.config import ConfigError, HQConfig, load_config, redacted_url
from storedvalue.hq.services.offline import SyncLimits


def test_defaults_serve_loopback_from_a_sqlite_file_under_the_data_directory(
    tmp_path: Path,
) -> None:
    config = load_config(environ={"XDG_DATA_HOME": str(tmp_path)})

    assert config.listen == "127.0.0.1:50051"
    assert config.database_url == f"sqlite:///{tmp_path / 'storedvalue' / 'hq.sqlite3'}"
    assert config.admin_token_file == tmp_path / "storedvalue" / "admin-token"
    assert config.notifications_poll_seconds == 0.1
    assert not config.uses_tls


def test_the_admin_token_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path)}

    first = load_config(environ=env)
    second = load_config(environ=env)

    assert first.admin_token == second.admin_token
    assert first.admin_token_file is not None
    assert stat.S_IMODE(first.admin_token_file.stat().st_mode) == 0o600
    assert first.admin_token not in repr(first)


def test_flags_win_over_the_environment_which_wins_over_defaults(tmp_path: Path) -> None:
    env = {
        "XDG_DATA_HOME": str(tmp_path),
        "STOREDVALUE_LISTEN": "127.0.0.1:6000",
        "STOREDVALUE_DATABASE_URL": "sqlite:///from-env.db",
        "STOREDVALUE_ADMIN_TOKEN": "from-env",
    }

    from_env = load_config(environ=env)
    from_flags = load_config(environ=env, listen="localhost:7000",
                             database_url="postgresql+psycopg://u:secret@db/hq")

    assert (from_env.listen, from_env.database_url) == ("127.0.0.1:6000", "sqlite:///from-env.db")
    assert from_env.admin_token == "from-env"
    assert from_env.admin_token_file is None
    assert from_flags.listen == "localhost:7000"
    assert redacted_url(from_flags.database_url) == "postgresql+psycopg://u:***@db/hq"


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051", "10.1.2.3:1", ":50051"])
def test_plaintext_beyond_loopback_is_refused_without_tls(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError, match="plaintext is for loopback"):
        load_config(environ={"XDG_DATA_HOME": str(tmp_path)}, listen=listen)


def test_tls_allows_any_address_but_needs_both_files(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path)}
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"

    config = load_config(environ=env, listen="0.0.0.0:443", tls_cert_file=cert, tls_key_file=key)

    assert config.uses_tls
    with pytest.raises(ConfigError, match="both"):
        load_config(environ=env, listen="0.0.0.0:443", tls_cert_file=cert)


@pytest.mark.parametrize("listen", ["nonsense", "host:port", "127.0.0.1:99999"])
def test_a_malformed_listen_address_is_refused(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_config(environ={"XDG_DATA_HOME": str(tmp_path)}, listen=listen)


def test_the_unknown_card_limit_is_twenty_a_minute_unless_configured(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path)}
    assert load_config(environ=env).unknown_card_limit == 20
    assert load_config(environ=env, unknown_card_limit=500).unknown_card_limit == 500
    with pytest.raises(ConfigError, match="unknown-card limit"):
        load_config(environ=env, unknown_card_limit=0)


def test_serving_limits_come_from_flags_and_default_to_the_documented_values(
    tmp_path: Path,
) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path)}

    defaults = load_config(environ=env)
    given = load_config(environ=env, max_watchers=50, call_deadline_seconds=3.5,
                        max_streams_per_connection=8, keepalive_seconds=30,
                        keepalive_timeout_seconds=5, min_client_ping_seconds=20,
                        database_connections=6, event_loop="asyncio",
                        commit_gather_seconds=0)

    assert (defaults.max_watchers, defaults.call_deadline_seconds) == (20_000, 30.0)
    assert (defaults.commit_gather_seconds, given.commit_gather_seconds) == (0.005, 0)
    assert defaults.event_loop == "uvloop"
    assert (given.max_watchers, given.call_deadline_seconds, given.max_streams_per_connection,
            given.keepalive_seconds, given.keepalive_timeout_seconds,
            given.min_client_ping_seconds, given.database_connections, given.event_loop) == (
        50, 3.5, 8, 30, 5, 20, 6, "asyncio")


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("max_watchers", 0, "max watchers"),
    ("max_streams_per_connection", 0, "streams per connection"),
    ("call_deadline_seconds", 0.0, "call deadline"),
    ("keepalive_seconds", -1.0, "keepalive"),
    ("database_connections", 1, "database connections"),
    ("commit_gather_seconds", -0.001, "commit gather"),
    ("commit_gather_seconds", 2.0, "commit gather"),
    ("event_loop", "trio", "event loop"),
    ("processes", 0, "number of HQ processes"),
])
def test_a_serving_limit_that_cannot_work_is_refused_before_anything_is_created(
    tmp_path: Path, flag: str, value: object, message: str,
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ={"XDG_DATA_HOME": str(tmp_path)}, **{flag: value})  # type: ignore[arg-type]
    assert not (tmp_path / "storedvalue").exists()


def test_serve_help_shows_each_default_of_the_configuration_and_no_number_of_its_own() -> None:
    # Every value differs from the real default: a number written in the help itself shows.
    given = replace(
        HQConfig(), listen="127.0.0.1:6001", log_format="json", grace_period_seconds=12.5,
        database_connections=7, event_loop="asyncio", call_deadline_seconds=31.5,
        commit_gather_seconds=0.0075, max_watchers=1234, max_streams_per_connection=77,
        keepalive_seconds=61.5,
        keepalive_timeout_seconds=21.5, min_client_ping_seconds=9.5,
        notifications_poll_seconds=0.75, unknown_card_limit=17, tls_reload_seconds=3.5,
        processes=3,
        sync_limits=SyncLimits(max_transactions_per_batch=999, max_lines_per_transaction=55,
                               max_message_bytes=4321),
    )
    parser = argparse.ArgumentParser(prog="storedvalue serve")
    add_arguments(parser, given)
    options = " ".join(parser.format_help().split("options:", 1)[1].split())
    expected = {
        "--listen": "127.0.0.1:6001", "--log-format": "json", "--grace-period": "12.5",
        "--database-connections": "7", "--event-loop": "asyncio", "--call-deadline": "31.5",
        "--commit-gather": "0.0075", "--max-watchers": "1234", "--max-streams-per-connection": "77",
        "--keepalive": "61.5", "--keepalive-timeout": "21.5", "--min-client-ping": "9.5",
        "--notifications-poll": "0.75", "--max-batch-transactions": "999",
        "--max-transaction-lines": "55", "--max-message-bytes": "4321",
        "--unknown-card-limit": "17", "--tls-reload": "3.5", "--processes": "3",
    }

    for flag, default in expected.items():
        described = options.split(f"{flag} ", 1)[1].split(" --", 1)[0]
        assert f"default {default}" in described, (flag, described)
    shown = re.findall(r"default ([0-9][^ ),;]*)", options)
    assert sorted(shown) == sorted(v for v in expected.values() if v[0].isdigit())


def test_serve_help_shows_the_real_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    defaults = HQConfig()
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    options = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())

    assert f"default {defaults.max_watchers})" in options
    assert f"default {defaults.sync_limits.max_transactions_per_batch})" in options
    assert f"default {defaults.listen})" in options


def test_the_admin_token_file_lives_beside_a_sqlite_database_and_for_postgresql_in_the_data_dir(
    tmp_path: Path,
) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "data")}

    first = load_config(environ=env, database_url=f"sqlite:///{tmp_path / 'a' / 'hq.sqlite3'}")
    second = load_config(environ=env, database_url=f"sqlite:///{tmp_path / 'b' / 'hq.sqlite3'}")
    postgres = load_config(environ=env, database_url="postgresql+psycopg://u@db/hq")
    chosen = load_config(environ=env, database_url="postgresql+psycopg://u@db/hq",
                         admin_token_file=tmp_path / "pg-token")

    assert first.admin_token_file == tmp_path / "a" / "admin-token"
    assert second.admin_token_file == tmp_path / "b" / "admin-token"
    assert first.admin_token != second.admin_token  # two HQs, two databases, two tokens
    assert postgres.admin_token_file == tmp_path / "data" / "storedvalue" / "admin-token"
    assert chosen.admin_token_file == tmp_path / "pg-token"


def test_tls_files_and_the_health_port_also_come_from_the_environment(tmp_path: Path) -> None:
    env = {
        "XDG_DATA_HOME": str(tmp_path),
        "STOREDVALUE_TLS_CERT": "/etc/hq/cert.pem",
        "STOREDVALUE_TLS_KEY": "/etc/hq/key.pem",
        "STOREDVALUE_TLS_CLIENT_CA": "/etc/hq/tills-ca.pem",
        "STOREDVALUE_ADMIN_CLIENT_CA": "/etc/hq/admins-ca.pem",
        "STOREDVALUE_ADMIN_CERT_NAMES": "ops-1, ops-2",
        "STOREDVALUE_HEALTH_LISTEN": "127.0.0.1:50052",
    }

    config = load_config(environ=env, listen="0.0.0.0:443")

    assert config.uses_mutual_tls
    assert (config.tls_cert_file, config.tls_key_file) == (
        Path("/etc/hq/cert.pem"), Path("/etc/hq/key.pem"))
    assert config.tls_client_ca_file == Path("/etc/hq/tills-ca.pem")
    assert config.admin_client_ca_file == Path("/etc/hq/admins-ca.pem")
    assert config.admin_certificate_names == ("ops-1", "ops-2")
    assert config.health_listen == "127.0.0.1:50052"
    assert config.tls_reload_seconds == 10.0


def test_the_back_office_certificate_is_storedvalue_admin_unless_configured() -> None:
    tills_ca, admins_ca = Path("tills-ca.pem"), Path("admins-ca.pem")

    assert HQConfig(tls_client_ca_file=tills_ca).required_admin_certificate_names == {
        "storedvalue-admin"}
    assert HQConfig(admin_certificate_names=("ops",)).required_admin_certificate_names == {"ops"}
    any_name = HQConfig(tls_client_ca_file=tills_ca, admin_client_ca_file=admins_ca)
    assert any_name.required_admin_certificate_names == frozenset()
    assert any_name.admin_certificate_rule() == "issued by admins-ca.pem"


def test_admin_certificates_without_mutual_tls_are_refused(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path)}
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"

    with pytest.raises(ConfigError, match="need mutual TLS"):
        load_config(environ=env, tls_cert_file=cert, tls_key_file=key,
                    admin_certificate_names=("ops",))


@pytest.mark.parametrize("health", ["0.0.0.0:50052", "10.0.0.5:50052"])
def test_the_plaintext_health_port_must_be_on_loopback(tmp_path: Path, health: str) -> None:
    with pytest.raises(ConfigError, match=r"health port .* must be on a loopback address"):
        load_config(environ={"XDG_DATA_HOME": str(tmp_path)}, health_listen=health)


def test_one_hq_process_unless_more_are_asked_for_by_flag_or_environment(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path)}

    assert load_config(environ=env).processes == 1
    assert load_config(environ={**env, "STOREDVALUE_PROCESSES": "2"}).processes == 2
    assert load_config(environ={**env, "STOREDVALUE_PROCESSES": "2"}, processes=3).processes == 3


@pytest.mark.parametrize("value", ["two", "0", "-1"])
def test_a_process_count_from_the_environment_must_be_a_positive_number(
    tmp_path: Path, value: str,
) -> None:
    with pytest.raises(ConfigError, match=r"STOREDVALUE_PROCESSES|number of HQ processes"):
        load_config(environ={"XDG_DATA_HOME": str(tmp_path), "STOREDVALUE_PROCESSES": value})
    assert not (tmp_path / "storedvalue").exists()


def test_several_processes_cannot_share_a_sqlite_memory_database(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="memory database"):
        load_config(environ={"XDG_DATA_HOME": str(tmp_path)}, database_url="sqlite://",
                    processes=2)


def test_only_the_workers_of_one_hq_share_its_port() -> None:
    from storedvalue.hq.server import grpc_options

    def reuse(config: HQConfig) -> object:
        return dict(grpc_options(config))["grpc.so_reuseport"]

    assert reuse(HQConfig()) == 0
    assert reuse(HQConfig(processes=2)) == 1


def test_serve_checks_its_addresses_before_it_writes_the_admin_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(addresses, "ADDRESS_WAIT_SECONDS", 0.0)
    env = {"XDG_DATA_HOME": str(tmp_path)}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"

        with pytest.raises(ConfigError, match=f"^{taken} is already in use by another process"):
            load_config(environ=env, listen=taken, check_addresses=True)
        with pytest.raises(ConfigError, match=rf"^{taken} \(--health-listen\) is already in use"):
            load_config(environ=env, listen="127.0.0.1:0", health_listen=taken,
                        check_addresses=True)

    assert not list(tmp_path.iterdir()), "no data directory, no admin token file"
    assert load_config(environ=env, listen=taken, check_addresses=True).listen == taken


def test_an_unknown_host_is_named_as_such() -> None:
    expected = "cannot listen on no-such-host.invalid:50051: unknown host 'no-such-host.invalid'"
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}"):
        addresses.check_addresses("no-such-host.invalid:50051", None)
