"""Key rotation against a real server and database: key A signs, the server restarts with key B
(A in LEDGER_TRUSTED_KEYS), and everything signed before and after still proves and verifies."""

import base64
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from standardwebhooks import Webhook

from ledger.core.checkpoint import Checkpoint, open_checkpoint, parse_body, sign_checkpoint
from ledger.core.errors import NoteError
from ledger.core.note import Signer, Verifier
from ledger.core.rfc6962 import leaf_hash
from ledger.core.tree import CompactRange
from ledger.core.webhooks import signed_content
from ledger.keys import write_key_file
from ledger.webhooks import webhook_verifier

from .conftest import ORIGIN
from .receiver import Receiver
from .server import ADMIN_TOKEN, Base, free_port, running_server, server_env

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def ledger(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def serve_until_exit(env: dict[str, str], within: float = 60) -> tuple[int, str]:
    """`ledger serve` expected to refuse: its exit status and stderr. Should it serve instead, it
    and its workers (its own process group) are stopped, and the status is the signal's."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    command = [sys.executable, "-m", "ledger", "serve", "--port", str(free_port())]
    with subprocess.Popen(
        command, env={**clean, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as proc:  # fmt: skip
        try:
            _, stderr = proc.communicate(timeout=within)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
    return proc.returncode, stderr


def delivered(base: str, webhook_id: str, count: int, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while True:
        deliveries = get(base, f"/v1/webhooks/{webhook_id}/deliveries").json()["deliveries"]
        if [d["status"] for d in deliveries].count("delivered") >= count:
            return
        assert time.monotonic() < deadline, f"not {count} deliveries recorded as delivered within {within} s"
        time.sleep(0.05)


def consent(device: str, purpose: str = "telemetry", action: str = "grant") -> dict[str, Any]:
    return {"device_id": device, "purpose": purpose, "action": action, "policy_version": 1}


def record(base: str, body: dict[str, Any], expect: int = 201, **headers: str) -> dict[str, Any]:
    response = httpx.post(f"{base}/v1/consents", json=body, headers={**ADMIN, **headers})
    assert response.status_code == expect, response.text
    return dict(response.json())


def get(base: str, path: str, **params: Any) -> httpx.Response:
    response = httpx.get(f"{base}{path}", params=params, headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return response


def log_keys(base: str) -> list[dict[str, Any]]:
    return [k for k in httpx.get(f"{base}/v1/keys").json()["keys"] if not k["key_name"].endswith("/webhooks")]


class Keys(NamedTuple):
    old: Signer
    new: Signer
    old_file: Path
    new_file: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    # The same name for both, as a rotation usually keeps it: only the key id tells them apart.
    old = write_key_file(tmp_path / "old.key", ORIGIN)
    new = write_key_file(tmp_path / "new.key", ORIGIN)
    return Keys(old, new, tmp_path / "old.key", tmp_path / "new.key")


def env_with(database_url: str, data_dir: Path, key: Path, *trusted: Signer, **extra: str) -> dict[str, str]:
    return server_env(
        database_url,
        data_dir,
        LEDGER_SIGNING_KEY=str(key),
        LEDGER_LOG_ORIGIN=ORIGIN,
        LEDGER_TRUSTED_KEYS=" ".join(s.verifier.vkey for s in trusted),
        **extra,
    )


class Before(NamedTuple):
    """What holders kept from before the rotation."""

    receipt: dict[str, Any]
    checkpoint: str
    time: str


def before_rotation(database_url: str, tmp_path: Path, keys: Keys) -> Before:
    with running_server(env_with(database_url, tmp_path / "a", keys.old_file)) as a:
        receipt = record(a, consent("dev-1"), **{"Idempotency-Key": "first-grant"})
        record(a, consent("dev-2", "pixverse_sharing"))
        checkpoint = get(a, "/v1/log/checkpoint").text
    return Before(receipt, checkpoint, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


@pytest.fixture
def rotated(database_url: str, tmp_path: Path, keys: Keys) -> Iterator[tuple[Base, Before]]:
    """Entries signed by the old key; then a server with the new key (trusting the old one)."""
    before = before_rotation(database_url, tmp_path, keys)
    with running_server(env_with(database_url, tmp_path / "b", keys.new_file, keys.old)) as b:
        yield b, before


def test_a_restarted_server_signs_with_the_new_key_and_lists_both(rotated: tuple[Base, Before], keys: Keys) -> None:
    b, before = rotated
    assert open_checkpoint(before.checkpoint, [keys.old.verifier]).size == 3  # registry entry + 2
    record(b, consent("dev-1", action="withdraw"))
    head = get(b, "/v1/log/checkpoint").text
    assert open_checkpoint(head, [keys.new.verifier]).size == 4
    with pytest.raises(NoteError, match="no signature by a known key"):
        open_checkpoint(head, [keys.old.verifier])
    listed = httpx.get(f"{b}/v1/keys").json()["keys"]
    logs = [k for k in listed if not k["key_name"].endswith("/webhooks")]
    assert [(k["vkey"], k["active"]) for k in logs] == [(keys.old.verifier.vkey, False), (keys.new.verifier.vkey, True)]
    # The webhook key is derived from the log key: the new one's, alone, is listed (and active).
    webhooks = [k for k in listed if k["key_name"].endswith("/webhooks")]
    assert [(k["vkey"], k["active"]) for k in webhooks] == [(webhook_verifier(keys.new).vkey, True)]


def test_entries_signed_under_the_old_key_are_still_served_and_proven(
    rotated: tuple[Base, Before], keys: Keys, tmp_path: Path
) -> None:
    b, before = rotated
    # Nothing signed by the new key yet: the latest checkpoint is the old key's, and reads prove against it.
    history = get(b, "/v1/devices/dev-1/history").json()["entries"]
    assert [r["checkpoint"] for r in history] == [before.checkpoint]
    assert get(b, "/v1/check", device_id="dev-1", purpose="telemetry", at=before.time).json()["allowed"] is True
    # A retried request from before the rotation gets its first receipt, under the old key's checkpoint.
    assert record(b, consent("dev-1"), expect=200, **{"Idempotency-Key": "first-grant"}) == before.receipt
    record(b, consent("dev-1", action="withdraw"))
    assert get(b, "/v1/check", device_id="dev-1", purpose="telemetry").json()["reason"] == "withdrawn"
    assert get(b, "/v1/check", device_id="dev-1", purpose="telemetry", at=before.time).json()["allowed"] is True
    assert httpx.get(f"{b}/health/ready").status_code == 200  # no old checkpoint was taken for a forgery

    old_receipt = tmp_path / "old-receipt.json"
    old_receipt.write_text(json.dumps(before.receipt))
    assert ledger("verify-receipt", str(old_receipt), "--key", keys.old.verifier.vkey).returncode == 0
    refused = ledger("verify-receipt", str(old_receipt), "--key", keys.new.verifier.vkey)
    assert refused.returncode == 1
    assert f"key id {keys.old.verifier.id.hex()}" in refused.stderr
    # The person's export across the rotation: both entries, proven against the newest checkpoint.
    mine = tmp_path / "mine.json"
    mine.write_text(get(b, "/v1/devices/dev-1/export").text)
    verified = ledger("verify-receipt", str(mine), "--key", keys.new.verifier.vkey)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.count("is in the signed log") == 2
    either = ledger("verify-receipt", str(mine), "--key", keys.old.verifier.vkey, "--key", keys.new.verifier.vkey)
    assert either.returncode == 0, either.stderr


def test_a_bundle_across_the_rotation_verifies_only_with_keys_the_auditor_gives(
    rotated: tuple[Base, Before], keys: Keys, database_url: str, tmp_path: Path
) -> None:
    b, before = rotated
    for i in range(3):
        record(b, consent(f"dev-after-{i}"))
    held = tmp_path / "held-checkpoint"
    held.write_text(before.checkpoint)
    old, new = keys.old.verifier.vkey, keys.new.verifier.vkey

    bundle = tmp_path / "bundle"
    assert ledger("export", "--out", str(bundle), env={"LEDGER_DATABASE_URL": database_url}).returncode == 0
    assert (bundle / "keys").read_text().split() == [old, new]
    with tarfile.open(fileobj=io.BytesIO(get(b, "/v1/export").content)) as tar:
        tar.extractall(tmp_path / "api", filter="data")
    assert (tmp_path / "api" / "keys").read_text() == (bundle / "keys").read_text()

    def verify(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return ledger("verify", str(directory), *args)

    for directory in (bundle, tmp_path / "api"):
        assert verify(directory, "--key", new).returncode == 0
    both = verify(bundle, "--key", old, "--key", new, "--previous-checkpoint", str(held))
    assert both.returncode == 0, both.stderr
    assert "consistent with the held checkpoint of size 3" in both.stdout
    # The held checkpoint was signed by the old key: the new key alone cannot vouch for it.
    only_new = verify(bundle, "--key", new, "--previous-checkpoint", str(held))
    assert only_new.returncode == 1
    assert (
        f"held checkpoint: no signature by a known key; signed by {ORIGIN} (key id {keys.old.verifier.id.hex()})"
        in (only_new.stderr)
    )
    # The bundle's keys file names the new key, but what an auditor did not give is not trusted.
    only_old = verify(bundle, "--key", old)
    assert only_old.returncode == 1
    assert f"FAILED: checkpoint: no signature by a known key; signed by {ORIGIN}" in only_old.stderr

    # A forger's bundle: one entry rewritten, a checkpoint signed by the forger's own key with the
    # log's key name, and that key added to the keys file. Given the log's keys, verify refuses it.
    forger = Signer.generate(ORIGIN)
    lines = (bundle / "entries.ndjson").read_bytes().splitlines()
    lines[-1] = lines[-1].replace(b'"grant"', b'"withdraw"')
    (bundle / "entries.ndjson").write_bytes(b"".join(line + b"\n" for line in lines))
    tree = CompactRange()
    for line in lines:
        tree.append(leaf_hash(line))
    (bundle / "checkpoint").write_text(sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root()), forger))
    (bundle / "keys").write_text(f"{old}\n{new}\n{forger.verifier.vkey}\n")
    fooled = verify(bundle, "--key", old, "--key", new, "--previous-checkpoint", str(held))
    assert fooled.returncode == 1
    assert "checkpoint: no signature by a known key" in fooled.stderr

    # A filtered export across the rotation: entries from both sides, each with its proof.
    part = tmp_path / "part"
    env = {"LEDGER_DATABASE_URL": database_url}
    assert ledger("export", "--out", str(part), "--start", "1", "--end", "5", env=env).returncode == 0
    assert verify(part, "--key", new).returncode == 0


def test_a_server_refuses_a_log_signed_by_a_key_it_does_not_trust(
    database_url: str, tmp_path: Path, keys: Keys
) -> None:
    before_rotation(database_url, tmp_path, keys)
    forgot = env_with(database_url, tmp_path / "b", keys.new_file)
    returncode, stderr = serve_until_exit(forgot)
    assert returncode == 2
    [line] = [line for line in stderr.splitlines() if "ledger:" in line]
    assert f"signed by {keys.old.verifier.vkey}, a key this server does not trust" in line
    assert "LEDGER_TRUSTED_KEYS" in line
    # verify-state is no different: the old key's checkpoints verify only when it is trusted.
    assert ledger("verify-state", env=forgot).returncode == 1
    state = ledger("verify-state", env=env_with(database_url, tmp_path / "b", keys.new_file, keys.old))
    assert state.returncode == 0, state.stderr


def test_a_rolling_rotation_with_both_keys_trusted_by_both_replicas(
    database_url: str, tmp_path: Path, keys: Keys
) -> None:
    """Step one of a rolling rotation trusts the new key on the old replicas; then replicas with
    the old and the new key sign in turn on one log, and each proves what the other signed."""
    old_env = env_with(database_url, tmp_path / "a", keys.old_file, keys.new)
    new_env = env_with(database_url, tmp_path / "b", keys.new_file, keys.old)
    with running_server(old_env) as a, running_server(new_env) as b:
        for i in range(3):
            record(a, consent(f"from-a-{i}"))
            record(b, consent(f"from-b-{i}"))
        for server, other in ((a, "from-b"), (b, "from-a")):
            for i in range(3):
                [receipt] = get(server, f"/v1/devices/{other}-{i}/history").json()["entries"]
                checkpoint = parse_body(receipt["checkpoint"].split("\n\n")[0] + "\n")
                assert checkpoint.size == 7
            assert httpx.get(f"{server}/health/ready").status_code == 200
            assert [k["active"] for k in log_keys(server)].count(True) == 1
        signers = {Verifier.from_vkey(k["vkey"]).id for k in log_keys(a)}
        assert signers == {keys.old.verifier.id, keys.new.verifier.id}


def test_devices_erased_before_the_rotation_stay_erased_with_the_old_key_as_tombstone_key(
    database_url: str, tmp_path: Path, keys: Keys
) -> None:
    """Without LEDGER_TOMBSTONE_KEY the tombstone key is derived from the log key: the old key
    file given as LEDGER_TOMBSTONE_KEY_FILE keeps deriving the same one."""
    with running_server(env_with(database_url, tmp_path / "a", keys.old_file)) as a:
        record(a, consent("erase-me"))
        assert httpx.post(f"{a}/v1/devices/erase-me/erase", headers=ADMIN).status_code == 201
        assert get(a, "/v1/check", device_id="erase-me", purpose="telemetry").json()["reason"] == "erased"
    kept = env_with(database_url, tmp_path / "b", keys.new_file, keys.old, LEDGER_TOMBSTONE_KEY_FILE=str(keys.old_file))
    with running_server(kept) as b:
        assert get(b, "/v1/check", device_id="erase-me", purpose="telemetry").json()["reason"] == "erased"
        record(b, consent("erase-me-too"))
        assert httpx.post(f"{b}/v1/devices/erase-me-too/erase", headers=ADMIN).status_code == 201
        assert get(b, "/v1/check", device_id="erase-me-too", purpose="telemetry").json()["reason"] == "erased"
    lost = env_with(database_url, tmp_path / "c", keys.new_file, keys.old)
    with running_server(lost) as c:
        # Still refused, but no longer known as erased: what the README's rotation steps warn about.
        decision = get(c, "/v1/check", device_id="erase-me", purpose="telemetry").json()
        assert (decision["allowed"], decision["reason"]) == (False, "no_consent")


def test_webhook_v1a_signatures_rotate_with_the_log_key(database_url: str, tmp_path: Path, keys: Keys) -> None:
    """The webhook key is derived from the log key: after the restart deliveries carry `v1a` by
    the new key's webhook key, the one /v1/keys lists; `v1` (the subscription's secret) stays."""
    receiver = Receiver().start()
    try:
        private = {"LEDGER_WEBHOOK_ALLOW_PRIVATE": "true"}
        with running_server(env_with(database_url, tmp_path / "a", keys.old_file, **private)) as a:
            created = httpx.post(f"{a}/v1/webhooks", json={"url": receiver.url, "events": ["consent.withdrawn"]},
                                 headers=ADMIN)  # fmt: skip
            assert created.status_code == 201, created.text
            secret = created.json()["secret"]
            record(a, consent("hooked"))
            record(a, consent("hooked", action="withdraw"))
            receiver.wait_for(1, 10)
            # The receiver answers before the sender records it: stopping earlier would leave the
            # delivery leased, and the next one of the subscription waiting for the lease to end.
            delivered(a, created.json()["id"], 1)
        with running_server(env_with(database_url, tmp_path / "b", keys.new_file, keys.old, **private)) as b:
            record(b, consent("hooked", action="withdraw"))
            before, after = receiver.wait_for(2, 10)
            [listed] = [
                k["vkey"] for k in httpx.get(f"{b}/v1/keys").json()["keys"] if k["key_name"].endswith("/webhooks")
            ]
    finally:
        receiver.stop()
    old_hooks, new_hooks = webhook_verifier(keys.old), webhook_verifier(keys.new)
    assert listed == new_hooks.vkey
    for got, signer, other in ((before, old_hooks, new_hooks), (after, new_hooks, old_hooks)):
        Webhook(secret).verify(got.body, got.headers)
        [v1a] = [p for p in got.headers["webhook-signature"].split(" ") if p.startswith("v1a,")]
        content = signed_content(got.headers["webhook-id"], int(got.headers["webhook-timestamp"]), got.body)
        signature = base64.b64decode(v1a.removeprefix("v1a,"))
        assert signer.verify(content, signature)
        assert not other.verify(content, signature)
