"""Settings from ``SENTINEL_*`` variables, ``SENTINEL_*_FILE`` secrets and systemd credentials."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from sentinel.platform import config
from sentinel.platform.config import DEFAULT_PORTS, Settings, get_settings, read_secret_file


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.upper().startswith("SENTINEL_") or key == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(key)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults() -> None:
    s = Settings()
    assert s.service == "tenant"
    assert (s.grpc_host, s.metrics_host) == ("127.0.0.1", "127.0.0.1")
    assert s.database_url.get_secret_value() == ""
    assert s.page_token_secret.get_secret_value() == ""
    assert s.jwt_public_keys_dir is None and s.jwt_signing_key_file is None
    assert (s.jwt_issuer, s.jwt_audience) == ("sentinel", "sentinel-api")
    assert (s.access_token_ttl_seconds, s.refresh_token_ttl_seconds) == (600, 30 * 24 * 3600)
    assert (s.argon2_time_cost, s.argon2_memory_cost_kib, s.argon2_parallelism) == (3, 65536, 4)
    assert [s.peer(p) for p in ("tenant", "user", "audit", "scheduler")] == [
        "127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053", "127.0.0.1:50054"]


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_SERVICE", "user")
    monkeypatch.setenv("SENTINEL_GRPC_PORT", "6000")
    monkeypatch.setenv("SENTINEL_DATABASE_POOL_SIZE", "3")
    monkeypatch.setenv("SENTINEL_JWT_PUBLIC_KEYS_DIR", "/etc/sentinel/keys")
    monkeypatch.setenv("GRPC_PORT", "7000")  # unprefixed: ignored
    s = Settings()
    assert (s.service, s.grpc_port, s.database_pool_size) == ("user", 6000, 3)
    assert s.jwt_public_keys_dir == Path("/etc/sentinel/keys")


def test_unknown_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_NO_SUCH_SETTING", "x")
    assert not hasattr(Settings(), "no_such_setting")


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_GRPC_PORT", "not-a-port")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.delenv("SENTINEL_GRPC_PORT")
    monkeypatch.setenv("SENTINEL_ARGON2_TIME_COST", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_settings_are_frozen_and_secrets_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_DATABASE_URL", "postgresql://svc:hunter2@db/sentinel")
    s = Settings()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.database_url)
    assert s.database_url.get_secret_value() == "postgresql://svc:hunter2@db/sentinel"
    with pytest.raises(ValidationError):
        s.service = "user"  # type: ignore[misc]


# --------------------------------------------------------------------------- _FILE variants


def test_file_variant(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "page-secret"
    secret.write_text("  s3cret-from-file-0123456789abcdef\n")
    monkeypatch.setenv("SENTINEL_PAGE_TOKEN_SECRET_FILE", str(secret))
    assert Settings().page_token_secret.get_secret_value() == "s3cret-from-file-0123456789abcdef"


def test_file_variant_for_a_non_secret_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "port").write_text("6123\n")
    monkeypatch.setenv("SENTINEL_GRPC_PORT_FILE", str(tmp_path / "port"))
    assert Settings().grpc_port == 6123


def test_direct_value_wins_over_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "db").write_text("postgresql://from-file")
    monkeypatch.setenv("SENTINEL_DATABASE_URL_FILE", str(tmp_path / "db"))
    monkeypatch.setenv("SENTINEL_DATABASE_URL", "postgresql://from-env")
    assert Settings().database_url.get_secret_value() == "postgresql://from-env"


def test_init_argument_wins_over_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "db").write_text("postgresql://from-file")
    monkeypatch.setenv("SENTINEL_DATABASE_URL_FILE", str(tmp_path / "db"))
    assert Settings(database_url="postgresql://kwarg").database_url.get_secret_value() == "postgresql://kwarg"


def test_empty_direct_value_does_not_shadow_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A unit that sets SENTINEL_DATABASE_URL= (empty) and the _FILE variant gets the file.
    (tmp_path / "db").write_text("postgresql://from-file")
    monkeypatch.setenv("SENTINEL_DATABASE_URL", "")
    monkeypatch.setenv("SENTINEL_DATABASE_URL_FILE", str(tmp_path / "db"))
    assert Settings().database_url.get_secret_value() == "postgresql://from-file"


def test_empty_file_variable_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_DATABASE_URL_FILE", "")
    assert Settings().database_url.get_secret_value() == ""


def test_file_variant_of_an_unknown_setting_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not read at all: a path to a missing file would raise otherwise.
    monkeypatch.setenv("SENTINEL_NOPE_FILE", "/nonexistent/secret")
    Settings()


def test_settings_that_are_paths_are_not_read_as_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # SENTINEL_JWT_SIGNING_KEY_FILE is the setting jwt_signing_key_file itself (a path), not a _FILE variant.
    key = tmp_path / "k1.key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    monkeypatch.setenv("SENTINEL_JWT_SIGNING_KEY_FILE", str(key))
    assert Settings().jwt_signing_key_file == key


def test_missing_file_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SENTINEL_REDIS_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        Settings()


def test_credentials_directory_resolves_relative_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "database-url").write_text("postgresql://from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("SENTINEL_DATABASE_URL_FILE", "database-url")
    monkeypatch.chdir(tmp_path)  # a relative path must not be read from the working directory
    assert Settings().database_url.get_secret_value() == "postgresql://from-credential"


def test_absolute_path_ignores_credentials_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "abs").write_text("absolute")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "elsewhere"))
    assert read_secret_file(str(tmp_path / "abs")) == "absolute"


def test_relative_path_without_credentials_directory_is_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "rel").write_text("relative\n")
    monkeypatch.chdir(tmp_path)
    assert read_secret_file("rel") == "relative"


# --------------------------------------------------------------------------- ports


def test_default_ports_match_the_design() -> None:
    assert DEFAULT_PORTS == {"tenant": (50051, 9101), "user": (50052, 9102),
                             "audit": (50053, 9103), "scheduler": (50054, 9104)}


@pytest.mark.parametrize(("service", "grpc_port", "metrics_port"), [
    ("tenant", 50051, 9101), ("user", 50052, 9102), ("audit", 50053, 9103), ("scheduler", 50054, 9104),
    ("other", 50050, 0),
])
def test_resolved_default_ports(service: str, grpc_port: int, metrics_port: int) -> None:
    s = Settings(service=service)
    assert (s.resolved_grpc_port, s.resolved_metrics_port) == (grpc_port, metrics_port)


def test_explicit_ports_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_SERVICE", "audit")
    monkeypatch.setenv("SENTINEL_GRPC_PORT", "6100")
    monkeypatch.setenv("SENTINEL_METRICS_PORT", "6200")
    s = Settings()
    assert (s.resolved_grpc_port, s.resolved_metrics_port) == (6100, 6200)


def test_metrics_port_zero_disables_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_METRICS_PORT", "0")
    assert Settings(service="user").resolved_metrics_port == 0


def test_peer_address_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_AUDIT_ADDR", "audit.internal:443")
    assert Settings().peer("audit") == "audit.internal:443"
    with pytest.raises(AttributeError):
        Settings().peer("nope")


def test_get_settings_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_SERVICE", "user")
    first = get_settings()
    monkeypatch.setenv("SENTINEL_SERVICE", "audit")
    assert get_settings() is first and first.service == "user"
    config.get_settings.cache_clear()
    assert get_settings().service == "audit"
