"""The `ledger` command: keygen, tokens, migrate, and serve on the embedded server across restarts."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from ledger.core.checkpoint import open_checkpoint
from ledger.core.note import Verifier
from ledger.keys import read_key_file
from ledger.settings import KNOWN, Settings

from .server import running_server, server_env


def ledger(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def log_vkey(base: str, origin: str = "embedded.test/log") -> str:
    [vkey] = [k["vkey"] for k in httpx.get(f"{base}/v1/keys").json()["keys"] if k["key_name"] == origin]
    return str(vkey)


def test_keygen_writes_a_0600_key_and_prints_its_verifier_key(tmp_path: Path) -> None:
    out = tmp_path / "keys" / "ledger.key"
    result = ledger("keygen", "--out", str(out), env={"LEDGER_LOG_ORIGIN": "consent.example/log"})
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    vkey = result.stdout.strip().splitlines()[-1]
    verifier = Verifier.from_vkey(vkey)
    assert verifier.name == "consent.example/log"
    assert read_key_file(out).verifier.vkey == vkey
    again = ledger("keygen", "--out", str(out), env={})
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr


def test_token_create_and_revoke(database_url: str) -> None:
    env = {"LEDGER_DATABASE_URL": database_url}
    created = ledger("token", "create", "--name", "checker", "--scope", "consent:check", env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("cl_")
    assert len(token) > 40
    duplicate = ledger("token", "create", "--name", "checker", "--scope", "admin", env=env)
    assert duplicate.returncode == 2
    assert ledger("token", "revoke", "checker", env=env).returncode == 0
    assert ledger("token", "revoke", "checker", env=env).returncode == 1
    bad_scope = ledger("token", "create", "--name", "x", "--scope", "root", env=env)
    assert bad_scope.returncode == 2


def test_migrate_is_idempotent(empty_database_url: str) -> None:
    env = {"LEDGER_DATABASE_URL": empty_database_url}
    first = ledger("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_log" in first.stdout
    second = ledger("migrate", env=env)
    assert "0 migration(s) applied" in second.stdout


def test_serve_on_the_embedded_server_keeps_key_and_log_across_restarts(tmp_path: Path) -> None:
    env = {"LEDGER_DATA_DIR": str(tmp_path / "data"), "LEDGER_LOG_ORIGIN": "embedded.test/log"}
    with running_server(env) as base:
        first_note = httpx.get(f"{base}/v1/log/checkpoint").text
        vkey = log_vkey(base)
    key_file = tmp_path / "data" / "signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()
    # Another command reaches the same embedded database while no server runs.
    created = ledger("token", "create", "--name", "ops", "--scope", "audit:read", env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    with running_server(env) as base:
        assert httpx.get(f"{base}/v1/log/checkpoint").text == first_note
        assert log_vkey(base) == vkey
        proof = httpx.get(f"{base}/v1/log/proof/consistency?from=0&to=0", headers={"Authorization": f"Bearer {token}"})
        assert proof.status_code == 200
        # And while it serves: a token created by another process works at once.
        live = ledger("token", "create", "--name", "live", "--scope", "audit:read", env=env)
        assert live.returncode == 0, live.stderr
        headers = {"Authorization": f"Bearer {live.stdout.strip().splitlines()[-1]}"}
        assert httpx.get(f"{base}/v1/log/entries?start=0", headers=headers).status_code == 200
    checkpoint = open_checkpoint(first_note, [Verifier.from_vkey(vkey)], origin="embedded.test/log")
    assert checkpoint.size == 1  # the first start published the purpose registry as entry 0


def test_token_list_names_active_tokens_and_never_a_token(database_url: str) -> None:
    env = {"LEDGER_DATABASE_URL": database_url}
    created = ledger("token", "create", "--name", "lister", "--scope", "audit:read", env=env)
    token = created.stdout.strip().splitlines()[-1]
    ledger("token", "create", "--name", "gone", "--scope", "admin", env=env)
    ledger("token", "revoke", "gone", env=env)
    listed = ledger("token", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    [row] = [line.split("\t") for line in listed.stdout.splitlines() if line.startswith("lister\t")]
    assert row[1] == "audit:read"
    assert "gone" not in listed.stdout
    assert token not in listed.stdout + listed.stderr


def test_version() -> None:
    result = ledger("--version", env={})
    assert result.returncode == 0
    assert result.stdout.startswith("ledger 0.")


def test_keygen_warns_when_the_key_would_not_be_named_after_the_servers_origin(tmp_path: Path) -> None:
    unset = ledger("keygen", "--out", str(tmp_path / "a.key"), env={})
    assert unset.returncode == 0
    assert "LEDGER_LOG_ORIGIN is not set" in unset.stderr
    named = ledger("keygen", "--out", str(tmp_path / "b.key"), env={"LEDGER_LOG_ORIGIN": "x.example/log"})
    assert "warning" not in named.stderr
    other = ledger(
        "keygen", "--out", str(tmp_path / "c.key"), env={"LEDGER_LOG_ORIGIN": "x.example/log", "LEDGER_KEY_NAME": "y"}
    )
    assert "differs from the log origin" in other.stderr


COMMANDS = (
    ["serve"],
    ["migrate"],
    ["token", "create"],
    ["token", "list"],
    ["token", "revoke"],
    ["keygen"],
    ["export"],
    ["verify"],
    ["verify-state"],
    ["purposes", "publish"],
    ["verify-receipt"],
)


def test_help_lists_defaults_and_the_settings_each_command_reads() -> None:
    helps = {}
    for command in COMMANDS:
        result = ledger(*command, "--help", env={})
        assert result.returncode == 0, result.stderr
        helps[" ".join(command)] = result.stdout
    serve = helps["serve"]
    assert "--port PORT        the port to listen on (default: 8080)" in serve
    words = " ".join(serve.split())  # the epilog's lines are wrapped
    assert "(default: 127.0.0.1)" in serve
    assert "(default: LEDGER_WORKERS, else 1)" in serve
    # Every setting the ledger knows is listed, its _FILE variant beside it.
    for name in KNOWN:
        assert name in serve, name
    assert f"(default: {Settings().data_dir})" in words
    assert f"(default: {Settings().consistency_wait_ms})" in words
    for command in ("migrate", "token create", "token list", "token revoke", "export", "verify-state"):
        assert "LEDGER_DATABASE_URL, or LEDGER_DATABASE_URL_FILE" in helps[command], command
        assert "LEDGER_DATA_DIR" in helps[command], command
        assert "LEDGER_WORKERS" not in helps[command], command
    assert "LEDGER_SIGNING_KEY" in helps["verify-state"]
    assert "LEDGER_LOG_ORIGIN" in helps["keygen"]
    assert "LEDGER_DATABASE_URL" not in helps["keygen"]
    for command in ("verify", "verify-receipt", "keygen"):
        assert "LEDGER_DATA" not in helps[command], command
        assert "This command uses no database." in helps[command], command
    assert "(default: no lower bound)" in " ".join(helps["export"].split())
    top = ledger("--help", env={})
    assert "--help lists the LEDGER_* settings" in top.stdout


def test_a_new_admin_token_revokes_the_previous_one_and_says_so(database_url: str, tmp_path: Path) -> None:
    first, second = "first-admin-token-" + "a" * 32, "second-admin-token-" + "b" * 32
    env = server_env(database_url, tmp_path)

    def status(base: str, token: str) -> int:
        return httpx.get(f"{base}/v1/webhooks", headers={"Authorization": f"Bearer {token}"}).status_code

    with running_server({**env, "LEDGER_ADMIN_TOKEN": first}) as base:
        assert status(base, first) == 200
    assert "revoked" not in base.output()  # the first bootstrap replaces nothing
    with running_server({**env, "LEDGER_ADMIN_TOKEN": second}) as base:
        assert status(base, second) == 200
        assert status(base, first) == 401
    warnings = [line for line in base.output().splitlines() if "LEDGER_ADMIN_TOKEN" in line]
    assert len(warnings) == 1, base.output()
    assert "warning" in warnings[0].lower()  # a text or a JSON log line
    assert "the previous bootstrap admin token (created " in warnings[0]
    assert "is revoked" in warnings[0]
    assert first not in base.output()
    assert second not in base.output()
    with running_server({**env, "LEDGER_ADMIN_TOKEN": second}, workers=2) as base:
        assert status(base, second) == 200
    assert "revoked" not in base.output()  # the same value again: nothing replaced
    listed = ledger("token", "list", env=env)
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["LEDGER_ADMIN_TOKEN"]
