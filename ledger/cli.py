"""The `ledger` command (CONTRACT section 4)."""

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ledger import auth, embedded, keys, server
from ledger.core.errors import LedgerError, VerificationError
from ledger.core.note import Verifier
from ledger.errors import ConfigError
from ledger.settings import Settings, load_registry, unknown_variables
from ledger.storage import migrations
from ledger.storage.postgres import Store, create_pool

log = logging.getLogger("ledger")


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The configured database, or the embedded one (shared with a running `ledger serve`)."""
    url, server = asyncio.run(embedded.resolve_database(settings))
    try:
        yield url
    finally:
        if server is not None:
            server.cleanup()


async def _with_store(url: str, action):  # type: ignore[no-untyped-def]
    await migrations.migrate(url)
    store = Store(await create_pool(url, max_size=2))
    try:
        return await action(store)
    finally:
        await store.pool.close()


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    # Before anything imports prometheus_client: it picks its storage from this at import time.
    prepare_metrics_dir(settings)
    embedded.handle_sigterm()
    workers = args.workers or settings.workers
    with database(settings) as url:
        for name in asyncio.run(migrations.migrate(url)):
            log.info("applied migration %s", name)
        signer = keys.load_signer(settings)
        log.info("log origin %s, signing as %s", settings.log_origin, signer.verifier.vkey)
        # Workers are separate processes: hand them the resolved database and key so none of
        # them starts its own embedded server or generates a key of its own.
        os.environ["LEDGER_DATABASE_URL"] = url
        os.environ["LEDGER_SIGNING_KEY"] = str(settings.signing_key_path)
        log.info("serving on http://%s:%d with %d worker(s)", args.host, args.port, workers)
        reload_registry = registry_snapshot(settings)
        reload_registry()
        server.run("ledger.app:create_app", host=args.host, port=args.port, workers=workers, on_reload=reload_registry)
    return 0


def registry_snapshot(settings: Settings) -> Callable[[], None]:
    """Workers read the purpose registry from a snapshot this process writes after checking the
    file named by LEDGER_PURPOSES, at start and on every SIGHUP. A file that does not parse is
    reported and the registry in force stays: a typo must not take the service down."""
    source = settings.purposes
    snapshot = settings.data_dir / "purposes.in-force.toml"

    def refresh() -> None:
        if source is None:
            return
        try:
            load_registry(source)
            data = source.read_bytes()
        except (ConfigError, OSError) as exc:
            log.error("%s; keeping the purpose registry in force", exc)
            return
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        partial = snapshot.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(snapshot)
        os.environ["LEDGER_PURPOSES"] = str(snapshot)
        log.info("purpose registry from %s in force", source)

    return refresh


def prepare_metrics_dir(settings: Settings) -> None:
    """Workers share their metrics through files here; a fresh start must not count old workers."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    directory = settings.data_dir / "metrics" / str(os.getpid())
    shutil.rmtree(settings.data_dir / "metrics", ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def cmd_migrate(_: argparse.Namespace, settings: Settings) -> int:
    with database(settings) as url:
        applied = asyncio.run(migrations.migrate(url))
        invalid = asyncio.run(migrations.count_invalid_device_ids(url))
    for name in applied:
        print(f"applied {name}")
    print(f"{len(applied)} migration(s) applied; the schema is current")
    if invalid:
        print(
            f"{invalid} device(s) stored with a device_id the API no longer accepts (a trailing newline); "
            "they cannot be checked or erased by device_id: see README, 'Erasing a device_id the API refuses'"
        )
    return 0


def cmd_token_create(args: argparse.Namespace, settings: Settings) -> int:
    scopes = list(dict.fromkeys(args.scope))
    token = auth.new_token()

    async def create(store: Store) -> None:
        await store.create_token(args.name, auth.token_hash(token), scopes)

    with database(settings) as url:
        try:
            asyncio.run(_with_store(url, create))
        except LedgerError as exc:
            if "api_tokens_active_name" in str(exc):
                raise ConfigError(f"an active token named {args.name!r} exists; revoke it first") from None
            raise
    print(f"created token {args.name!r} with scopes {', '.join(scopes)}; it is shown only once:")
    print(token)
    return 0


def cmd_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def revoke(store: Store) -> int:
        return await store.revoke_token(args.name)

    with database(settings) as url:
        count = asyncio.run(_with_store(url, revoke))
    if not count:
        print(f"no active token named {args.name!r}", file=sys.stderr)
        return 1
    print(f"revoked token {args.name!r}")
    return 0


def cmd_keygen(args: argparse.Namespace, settings: Settings) -> int:
    name = settings.key_name or settings.log_origin
    try:
        signer = keys.write_key_file(Path(args.out), name)
    except FileExistsError:
        raise ConfigError(f"{args.out} exists; refusing to overwrite a key") from None
    print(f"wrote a new Ed25519 key named {name!r} to {args.out} (mode 0600); its verifier key:")
    print(signer.verifier.vkey)
    return 0


def _progress(what: str, done: int, total: int) -> None:
    if sys.stderr.isatty() or done == total:
        sys.stderr.write(f"\r\x1b[K{what}: {done:,} of {total:,}" + ("\n" if done == total else ""))
        sys.stderr.flush()


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from ledger import export
    from ledger.core.entry import parse_time

    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        raise ConfigError(f"--since/--until: {exc}") from None

    async def run(store: Store) -> export.Plan:
        p = await export.plan(store, args.start, args.end, since, until)
        await export.write_directory(store, p, Path(args.out), _progress)
        return p

    with database(settings) as url:
        p = asyncio.run(_with_store(url, run))
    kind = "filtered, with inclusion proofs" if p.filtered else "the whole log"
    files = [export.ENTRIES, export.CHECKPOINT, export.KEYS] + ([export.PROOFS] if p.filtered else [])
    print(f"exported {p.entry_count:,} entries ({kind}) under a checkpoint of size {p.tree_size}")
    print(f"to {args.out}: {', '.join(files)}")
    return 0


def _verifier(key: str) -> Verifier:
    text = Path(key).read_text().strip() if Path(key).is_file() else key
    try:
        return Verifier.from_vkey(text)
    except LedgerError as exc:
        raise ConfigError(f"--key: not a verifier key ({exc})") from None


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                raise VerificationError(f"{path.name} line {number} does not end with a newline: the file was cut")
            yield line[:-1]


def cmd_verify(args: argparse.Namespace, _: Settings) -> int:
    from ledger import export
    from ledger.core.verify import verify_bundle

    bundle = Path(args.bundle)
    verifier = _verifier(args.key)
    proofs = bundle / export.PROOFS
    held = Path(args.previous_checkpoint).read_text() if args.previous_checkpoint else None

    def progress(done: int) -> None:
        if done % 100_000 == 0:
            _progress("verified", done, done)

    try:
        report = verify_bundle(
            _lines(bundle / export.ENTRIES),
            (bundle / export.CHECKPOINT).read_text(),
            [verifier],
            _lines(proofs) if proofs.exists() else None,
            held,
            progress,
        )
    except FileNotFoundError as exc:
        print(f"FAILED: {exc.filename} is missing from the bundle", file=sys.stderr)
        return 1
    except VerificationError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    cp = report.checkpoint
    scope = (
        "the whole log"
        if report.full
        else f"entries {report.first_index} to {(report.first_index or 0) + report.entries - 1}"
    )
    print(f"OK: {report.entries:,} entries ({scope}) verify against checkpoint {cp.origin} size {cp.size}")
    if report.previous is not None:
        print(f"OK: consistent with the held checkpoint of size {report.previous.size}")
    elif report.full:
        print("note: without --previous-checkpoint, truncation or rewriting before this checkpoint cannot be ruled out")
    return 0


def cmd_verify_receipt(args: argparse.Namespace, _: Settings) -> int:
    from ledger.core.verify import verify_receipt

    try:
        entry = verify_receipt(Path(args.receipt).read_bytes(), [_verifier(args.key)])
    except VerificationError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"OK: entry {entry.index} ({entry.action} {entry.purpose}, {entry.occurred_at}) is in the signed log")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ledger", description="Consent Ledger: a signed, append-only consent log.")
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, help="server processes (default LEDGER_WORKERS, else 1)")
    serve.set_defaults(run=cmd_serve)

    commands.add_parser("migrate", help="apply pending migrations").set_defaults(run=cmd_migrate)

    token = commands.add_parser("token", help="manage API tokens").add_subparsers(dest="action", required=True)
    create = token.add_parser("create", help="create a token; prints it as the last line")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", required=True, action="append", choices=auth.SCOPES)
    create.set_defaults(run=cmd_token_create)
    revoke = token.add_parser("revoke", help="revoke the active token with this name")
    revoke.add_argument("name")
    revoke.set_defaults(run=cmd_token_revoke)

    keygen = commands.add_parser("keygen", help="write a new Ed25519 signing key; prints its verifier key last")
    keygen.add_argument("--out", required=True)
    keygen.set_defaults(run=cmd_keygen)

    export = commands.add_parser("export", help="write an audit bundle to a directory")
    export.add_argument("--out", required=True)
    export.add_argument("--start", type=int, help="first index")
    export.add_argument("--end", type=int, help="one past the last index")
    export.add_argument("--since", help="recorded at or after this RFC 3339 time")
    export.add_argument("--until", help="recorded before this RFC 3339 time")
    export.set_defaults(run=cmd_export)

    verify = commands.add_parser("verify", help="verify an audit bundle offline; exit 0 only if all verifies")
    verify.add_argument("bundle")
    verify.add_argument("--key", required=True, help="the verifier key (or a file holding it)")
    verify.add_argument("--previous-checkpoint", help="a checkpoint held from earlier, to rule out truncation")
    verify.set_defaults(run=cmd_verify)

    receipt = commands.add_parser("verify-receipt", help="verify one receipt offline")
    receipt.add_argument("receipt")
    receipt.add_argument("--key", required=True, help="the verifier key (or a file holding it)")
    receipt.set_defaults(run=cmd_verify_receipt)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in unknown_variables(os.environ):
        print(f"ledger: warning: {name} is not a setting the ledger knows (a typo?)", file=sys.stderr)
    try:
        settings = Settings.from_env()
        code: int = args.run(args, settings)
    except ConfigError as exc:
        print(f"ledger: error: {exc}", file=sys.stderr)
        return 2
    except LedgerError as exc:
        print(f"ledger: error: {exc}", file=sys.stderr)
        return 1
    return code
