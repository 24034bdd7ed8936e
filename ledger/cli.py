"""The `ledger` command (CONTRACT section 4)."""

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from ledger import auth, embedded, keys, server
from ledger.core.errors import LedgerError
from ledger.errors import ConfigError
from ledger.settings import Settings, unknown_variables
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
        server.run("ledger.app:create_app", host=args.host, port=args.port, workers=workers)
    return 0


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
    for name in applied:
        print(f"applied {name}")
    print(f"{len(applied)} migration(s) applied; the schema is current")
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
