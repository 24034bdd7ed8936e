"""Every `ledger` command given junk arguments and junk files: one line naming the problem and a
non-zero exit, never a traceback. Tests run as root, so file modes do not stop a read: the
unreadable file is /proc/self/mem (a read at offset 0 fails with EIO) and paths through a file."""

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.keys import write_key_file

from .server import free_port

PASSWORD = "hunter2-secret-password"


def ledger(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`ledger ARGS` in a session of its own: a server that wrongly started is stopped with its workers.
    A `serve` without a port gets a free one, so that the mistake under test, not a busy 8080, answers."""
    if args and args[0] == "serve" and "--port" not in args:
        args = (*args, "--port", str(free_port()))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger", *args],
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def junk(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files that are not what a command expects, by name."""
    root = tmp_path_factory.mktemp("junk")
    (root / "garbage").write_bytes(bytes(range(256)) * 8)
    (root / "empty").write_bytes(b"")
    (root / "a-file").write_text("just text\n")
    (root / "directory").mkdir()
    (root / "bundle-of-garbage").mkdir()
    for name in ("entries.ndjson", "checkpoint", "keys", "proofs.ndjson"):
        (root / "bundle-of-garbage" / name).write_bytes(bytes(range(256)) * 4)
    (root / "bundle-of-text").mkdir()
    (root / "bundle-of-text" / "entries.ndjson").write_text('{"not": "an entry"}\n[1,2]\nnull\n')
    (root / "bundle-of-text" / "checkpoint").write_text("not a note\n")
    (root / "bundle-with-directories").mkdir()
    for name in ("entries.ndjson", "checkpoint"):
        (root / "bundle-with-directories" / name).mkdir()
    for i, doc in enumerate(
        [
            {},
            [],
            None,
            "a string",
            {"entry": 5},
            {"entry": "x", "leaf": 7},
            {"entry": {"index": -1}, "leaf": "", "leaf_hash": "zz", "checkpoint": 3, "inclusion_proof": "no"},
            {"entry": {}, "leaf": "{}", "leaf_hash": "00" * 32, "checkpoint": "x\n\n", "inclusion_proof": ["zz"]},
        ]
    ):
        (root / f"receipt-{i}.json").write_text(json.dumps(doc))
    write_key_file(root / "signing.key", "junk.test/log")
    return {p.name: p for p in root.iterdir()}


def files(junk: dict[str, Path]) -> dict[str, str]:
    """Every kind of bad file path."""
    return {
        "missing": str(junk["a-file"].parent / "missing"),
        "directory": str(junk["directory"]),
        "garbage": str(junk["garbage"]),
        "empty": str(junk["empty"]),
        "unreadable": "/proc/self/mem",
        "through-a-file": str(junk["a-file"] / "below"),
    }


def cases(junk: dict[str, Path], database_url: str, tmp: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    db = {"LEDGER_DATABASE_URL": database_url, "LEDGER_DATA_DIR": str(tmp / "data")}
    unreachable = {"LEDGER_DATABASE_URL": f"postgresql://ledger:{PASSWORD}@127.0.0.1:1/ledger"}
    bad_urls = [
        f"postgresql://ledger:{PASSWORD}@127.0.0.1:abc/ledger",
        f"postgresql://ledger:{PASSWORD}@127.0.0.1:99999/ledger",
        f"postgresql://ledger:{PASSWORD}@nonexistent.invalid/ledger",
        f"postgresql://ledger:{PASSWORD}@[::1/ledger",
        "postgresql://root@127.0.0.1:5432/test?sslmode=bogus",
    ]
    bad_files = files(junk)
    port = str(free_port())
    key = str(junk["signing.key"])
    vkey_file = str(tmp / "vkey")
    yield [], {}
    yield ["bogus"], {}
    yield ["--port", "1"], {}
    yield ["token"], {}
    yield ["token", "bogus"], {}
    for bad_port in ("99999", "-1", "0", "abc", ""):
        yield ["serve", "--port", bad_port], db
    for workers in ("0", "-3", "many", "100000"):
        yield ["serve", "--workers", workers], db
    yield ["serve", "--host", "nonexistent.invalid"], db
    yield ["serve", "--host", "192.0.2.1"], db  # TEST-NET-1: not an address of this machine
    for name, path in bad_files.items():
        if name not in ("missing", "directory"):  # both are fine data directories
            yield ["serve", "--port", port], {**db, "LEDGER_DATA_DIR": path}
        yield ["serve", "--port", port], {**db, "LEDGER_SIGNING_KEY": path}
        yield ["serve", "--port", port], {**db, "LEDGER_PURPOSES": path}
    yield ["serve"], {**unreachable, "LEDGER_DATA_DIR": str(tmp / "data")}
    for url in bad_urls:
        yield ["serve"], {"LEDGER_DATABASE_URL": url, "LEDGER_DATA_DIR": str(tmp / "data")}
        yield ["migrate"], {"LEDGER_DATABASE_URL": url}
        yield ["token", "create", "--name", "x", "--scope", "admin"], {"LEDGER_DATABASE_URL": url}
    yield ["migrate"], unreachable
    yield ["migrate"], {"LEDGER_DATA_DIR": bad_files["through-a-file"]}
    yield ["token", "create", "--name", "x", "--scope", "admin"], unreachable
    yield ["token", "create", "--name", "x", "--scope", "root"], db
    yield ["token", "create", "--name", "", "--scope", "admin"], db
    yield ["token", "create", "--name", "a\nb", "--scope", "admin"], db
    yield ["token", "create", "--name", "x" * 1000, "--scope", "admin"], db
    yield ["token", "create", "--scope", "admin"], db
    yield ["token", "revoke"], db
    yield ["token", "revoke", ""], db
    yield ["token", "revoke", "x"], unreachable
    yield ["token", "revoke", "nobody"], db  # not junk, but not there: exit 1, one line
    yield ["keygen"], {}
    for name in ("directory", "through-a-file", "unreadable"):
        yield ["keygen", "--out", bad_files[name]], {}
    yield ["keygen", "--out", "/proc/no/such/dir/key"], {}
    yield ["export"], db
    yield ["export", "--out", str(tmp / "out"), "--start", "abc"], db
    yield ["export", "--out", str(tmp / "out"), "--start", "-5"], db
    yield ["export", "--out", str(tmp / "out"), "--start", "5", "--end", "2"], db
    yield ["export", "--out", str(tmp / "out"), "--start", "99999999999999999999999"], db
    yield ["export", "--out", str(tmp / "out"), "--since", "yesterday"], db
    yield ["export", "--out", str(tmp / "out"), "--until", "2024-13-45T99:99:99Z"], db
    for name in ("through-a-file", "garbage", "unreadable"):
        yield ["export", "--out", bad_files[name]], db
    yield ["export", "--out", str(tmp / "out")], unreachable
    yield ["verify"], {}
    yield ["verify", str(tmp)], {}
    for path in bad_files.values():
        yield ["verify", path, "--key", key], {}
        yield ["verify", str(junk["bundle-of-text"]), "--key", path], {}
        yield ["verify", str(junk["bundle-of-text"]), "--key", vkey_file, "--previous-checkpoint", path], {}
    for bundle in ("bundle-of-garbage", "bundle-of-text", "bundle-with-directories"):
        yield ["verify", str(junk[bundle]), "--key", vkey_file], {}
    yield ["verify", str(junk["bundle-of-text"]), "--key", "not a key"], {}
    yield ["verify-receipt"], {}
    yield ["verify-receipt", str(junk["receipt-0.json"])], {}
    for path in bad_files.values():
        yield ["verify-receipt", path, "--key", vkey_file], {}
        yield ["verify-receipt", str(junk["receipt-7.json"]), "--key", path], {}
    for i in range(8):
        yield ["verify-receipt", str(junk[f"receipt-{i}.json"]), "--key", vkey_file], {}


def test_every_command_given_junk_fails_in_one_line(junk: dict[str, Path], database_url: str, tmp_path: Path) -> None:
    vkey = ledger("keygen", "--out", str(tmp_path / "k"), env={}).stdout.strip().splitlines()[-1]
    (tmp_path / "vkey").write_text(vkey + "\n")
    failures = []
    for args, env in cases(junk, database_url, tmp_path):
        try:
            result = ledger(*args, env=env)
        except subprocess.TimeoutExpired:
            failures.append(f"ledger {args} with {env}: still running after 60 s")
            continue
        output = result.stdout + result.stderr
        problems = [line for line in result.stderr.splitlines() if line.startswith(("ledger", "FAILED"))]
        if (
            result.returncode == 0
            or "Traceback" in output
            or "unexpected" in output
            or PASSWORD in output
            or len(problems) != 1
            or result.stderr.strip().splitlines()[-1] != problems[0]  # last, after any "database:" line
        ):
            failures.append(f"ledger {args} with {env}: exit {result.returncode}\n{output[-2000:]}")
    assert not failures, f"{len(failures)} commands misbehaved:\n\n" + "\n\n".join(failures)


def test_an_unreachable_database_is_named_without_its_password(tmp_path: Path) -> None:
    url = f"postgresql://ledger:{PASSWORD}@127.0.0.1:1/consents"
    for args in (["serve"], ["migrate"], ["token", "revoke", "x"]):
        result = ledger(*args, env={"LEDGER_DATABASE_URL": url, "LEDGER_DATA_DIR": str(tmp_path)})
        assert result.returncode == 1, result.stderr
        assert "'consents' at 127.0.0.1:1" in result.stderr
        assert PASSWORD not in result.stdout + result.stderr
        assert "serving on" not in result.stderr


def test_a_port_in_use_is_refused_before_serving(database_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"LEDGER_DATABASE_URL": database_url, "LEDGER_DATA_DIR": str(tmp_path)}
        result = ledger("serve", "--port", str(port), env=env)
    assert result.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert "serving on" not in result.stderr
    assert "Listening" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "argument --port: 99999 is not a port (1 to 65535)"),
        (["--port", "-1"], "argument --port: -1 is not a port"),
        (["--port", "abc"], "argument --port: 'abc' is not a whole number"),
        (["--workers", "0"], "argument --workers: 0 is not a worker count"),
    ],
)
def test_invalid_serve_arguments_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = ledger("serve", *args, env={"LEDGER_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"ledger serve: error: {message}")
    assert not (tmp_path / "postgres").exists()  # nothing started


def test_a_data_directory_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = ledger("serve", env={"LEDGER_DATA_DIR": str(tmp_path / "file" / "data")})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"ledger: error: LEDGER_DATA_DIR={tmp_path / 'file' / 'data'}: cannot create or write to it (Not a directory)"
    )


def test_an_embedded_server_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = ledger("migrate", env={"LEDGER_DATA_DIR": str(data)})
    assert created.returncode == 0, created.stderr
    (data / "postgres" / "PG_VERSION").write_text("9\n")  # a cluster of another major version
    result = ledger("serve", env={"LEDGER_DATA_DIR": str(data)})
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("ledger")]
    assert len(lines) == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == lines[0]  # after the line naming the database
    assert f"the embedded PostgreSQL in {data / 'postgres'} cannot start" in lines[0]
    assert "incompatible" in lines[0]
    assert "Traceback" not in result.stderr


def test_a_malformed_key_file_is_one_line(junk: dict[str, Path], database_url: str, tmp_path: Path) -> None:
    env = {"LEDGER_DATABASE_URL": database_url, "LEDGER_DATA_DIR": str(tmp_path)}
    result = ledger("serve", env={**env, "LEDGER_SIGNING_KEY": str(junk["garbage"])})
    assert result.returncode == 2
    assert f"LEDGER_SIGNING_KEY={junk['garbage']}" in result.stderr
    assert "Traceback" not in result.stderr


def test_embedded_mode_without_pgserver_names_the_extra(tmp_path: Path) -> None:
    code = "import sys; sys.modules['pgserver'] = None; from ledger.cli import main; sys.exit(main(['migrate']))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")} | {"LEDGER_DATA_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "ledger: error: LEDGER_DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
        "pip install 'consent-ledger[embedded]'"
    )
