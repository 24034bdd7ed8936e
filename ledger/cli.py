"""The `ledger` command (CONTRACT section 4)."""

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple, NoReturn
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ledger import auth, embedded, keys, logs, metrics_dir, server
from ledger.core.entry import format_time
from ledger.core.errors import LedgerError, VerificationError
from ledger.core.note import Verifier
from ledger.core.registry import RegistryEntry
from ledger.errors import ConfigError, MigrationError, NameTaken, StorageError
from ledger.progress import Progress, Steps
from ledger.settings import Settings, load_registry, unknown_variables
from ledger.storage import Stores, create_pool, migrations, open_stores
from ledger.storage.tokens import TokenListing
from ledger.usage import HelpFormatter, environment, setting_names

log = logging.getLogger("ledger")


def tell(message: str) -> None:
    """A line for the person at the terminal, on stderr: stdout is the command's result."""
    print(message, file=sys.stderr)


@contextlib.contextmanager
def database(
    settings: Settings, *, read_only: bool = False, supervise: bool = False, announce: Callable[[str], None] = tell
) -> Iterator[str]:
    """The configured database, or the embedded one (shared with a running `ledger serve`), after
    `announce` has named it. A `read_only` command creates nothing: no data directory, no cluster,
    no database (it fails naming where it looked). With `supervise`, an embedded server that dies
    is started again until this exits."""
    if settings.embedded and not read_only:
        ensure_data_dir(settings)
    announce(f"database: {database_description(settings)}")  # a URL that does not parse fails here
    url, server = asyncio.run(embedded.resolve_database(settings, create=not read_only))
    try:
        if supervise and server is not None:
            with embedded.Supervisor(server):
                yield url
        else:
            yield url
    finally:
        if server is not None:
            server.cleanup()


async def _with_store(url: str, action, *, read_only: bool = False):  # type: ignore[no-untyped-def]
    if read_only:
        await require_current_schema(url)
    else:
        await migrations.migrate(url)
    store = open_stores(await create_pool(url, max_size=2))
    try:
        return await action(store)
    finally:
        await store.pool.close()


async def require_current_schema(url: str) -> None:
    """Commands that only read do not migrate: a schema older than this ledger is an upgrade
    half done (or the wrong database), which `ledger migrate` or the server should finish, not a
    read that happened to run a newer version of the CLI."""
    missing = await migrations.unapplied(url)
    if missing is None:
        raise ConfigError(
            "this database holds no ledger (no schema_migrations table); this command only reads and "
            "creates nothing: point LEDGER_DATABASE_URL at the server's database, or run `ledger migrate`"
        )
    if missing:
        raise MigrationError(
            f"the database schema lacks migration(s) {', '.join(missing)} of this ledger version; this command "
            "only reads and migrates nothing: run `ledger migrate` (or start `ledger serve`) first"
        )


def ensure_data_dir(settings: Settings) -> None:
    """Create the data directory and prove it writable, or say in one line why not."""
    directory = settings.data_dir
    try:
        if directory.exists() and not directory.is_dir():
            raise ConfigError(f"LEDGER_DATA_DIR={directory}: not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigError(f"LEDGER_DATA_DIR={directory}: cannot create or write to it ({exc.strerror})") from None


class Address(NamedTuple):
    """Where a database URL points, without its user, password or other parameters."""

    host: str  # a name, an address, a socket directory, or libpq's comma-separated host list
    port: int | None  # None with a host list, whose ports are in `host`
    name: str  # empty: libpq's default, the user's name

    @property
    def server(self) -> str:
        if self.port is None:
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self) -> str:
        if self.host.startswith("/"):  # a socket directory: libpq takes it as a parameter
            return f"postgresql:///{quote(self.name)}?host={quote(self.host)}&port={self.port}"
        return f"postgresql://{self.server}/{quote(self.name)}"


def database_address(url: str) -> Address:
    try:
        parts = urlsplit(url)
        name = unquote(parts.path.lstrip("/"))
        if "," in parts.netloc:  # libpq's host list: leave it to the driver
            return Address(parts.netloc.rpartition("@")[2], None, name)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(f"LEDGER_DATABASE_URL: not a valid URL ({exc})") from None
    host = host or parse_qs(parts.query).get("host", ["localhost"])[0]  # ?host=/run/postgresql: a socket
    return Address(host, port or 5432, name)


def database_description(settings: Settings) -> str:
    """What `database:` says: the embedded data directory, or the URL's host, port and database
    name, never its user, password or parameters (a `?password=` would be in those)."""
    if settings.database_url is None:
        return f"embedded in {settings.data_dir}"
    return database_address(settings.database_url).url()


def database_label(settings: Settings) -> str:
    """Where the database is, for messages: host, port and database name, never the password."""
    if settings.database_url is None:
        return f"the embedded PostgreSQL in {settings.data_dir / 'postgres'}"
    address = database_address(settings.database_url)
    return f"the database {address.name or '(default)'!r} at {address.server}"


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    # Refused before anything is started or logged: a busy port must not look like a server.
    server.check_address(args.host, args.port)
    ensure_data_dir(settings)
    # Before anything imports prometheus_client: it picks its storage from this at import time.
    prepare_metrics_dir(settings)
    embedded.handle_sigterm()
    workers = args.workers if args.workers is not None else settings.workers
    if settings.embedded:
        # The postmaster becomes this process's child once pg_ctl exits, so that when it dies
        # this process can reap it and start another (see embedded.Supervisor).
        embedded.adopt_orphans()
    with database(settings, supervise=True, announce=log.info) as url:
        for name in asyncio.run(migrations.migrate(url)):
            log.info("applied migration %s", name)
        signer = keys.load_signer(settings)
        trusted = keys.log_keys(signer, settings.trusted_keys)
        asyncio.run(_with_store(url, lambda store: keys.check_signers(store.log, trusted)))  # else each worker fails
        log.info("log origin %s, signing as %s", settings.log_origin, signer.verifier.vkey)
        # Workers are separate processes: hand them the resolved database and key so none of
        # them starts its own embedded server or generates a key of its own.
        os.environ["LEDGER_DATABASE_URL"] = url
        os.environ["LEDGER_SIGNING_KEY"] = str(settings.signing_key_path)
        server.check_address(args.host, args.port)  # taken while the database started?
        log.info("serving on http://%s:%d with %d worker(s)", args.host, args.port, workers)
        # The purpose registry is not reloaded on SIGHUP: it lives in the log and changes with
        # `ledger purposes publish` (or PUT /v1/purposes), at one index for every replica.
        server.run("ledger.app:create_app", host=args.host, port=args.port, workers=workers)
    return 0


def prepare_metrics_dir(settings: Settings) -> None:
    """This server's workers share their metrics through files in a directory of its own; other
    servers on the same data directory keep theirs (see ledger.metrics_dir)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        directory = metrics_dir.claim(settings.data_dir / "metrics")
    except OSError as exc:
        raise ConfigError(
            f"LEDGER_DATA_DIR={settings.data_dir}: cannot create metrics files ({exc.strerror})"
        ) from None
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

    async def create(store: Stores) -> None:
        await store.tokens.create_token(args.name, auth.token_hash(token), scopes)

    with database(settings) as url:
        try:
            asyncio.run(_with_store(url, create))
        except NameTaken as exc:
            raise ConfigError(str(exc)) from None
    print(f"created token {args.name!r} with scopes {', '.join(scopes)}; it is shown only once:")
    print(token)
    return 0


def cmd_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def revoke(store: Stores) -> int:
        return await store.tokens.revoke_token(args.name)

    with database(settings) as url:
        count = asyncio.run(_with_store(url, revoke))
    if not count:
        return fail(f"no active token named {args.name!r}", 1)
    print(f"revoked token {args.name!r}")
    return 0


def cmd_token_list(_: argparse.Namespace, settings: Settings) -> int:
    async def listing(store: Stores) -> list[TokenListing]:
        return await store.tokens.active()

    with database(settings, read_only=True) as url:
        tokens = asyncio.run(_with_store(url, listing, read_only=True))
    for t in tokens:
        print(f"{t.name}\t{','.join(t.scopes)}\t{format_time(t.created_at)}")
    print(f"{len(tokens)} active token(s); tokens themselves are never stored, only their SHA-256", file=sys.stderr)
    return 0


def cmd_keygen(args: argparse.Namespace, settings: Settings) -> int:
    name = settings.key_name or settings.log_origin
    try:
        signer = keys.write_key_file(Path(args.out), name)
    except FileExistsError:
        raise ConfigError(f"{args.out} exists; refusing to overwrite a key") from None
    if not os.environ.get("LEDGER_LOG_ORIGIN", "").strip():
        print(
            f"ledger: warning: LEDGER_LOG_ORIGIN is not set, so the key is named after the default origin "
            f"{name!r}; servers with another origin would sign checkpoints whose key name differs from it",
            file=sys.stderr,
        )
    elif name != settings.log_origin:
        print(
            f"ledger: warning: the key name {name!r} differs from the log origin {settings.log_origin!r}",
            file=sys.stderr,
        )
    print(f"wrote a new Ed25519 key named {name!r} to {args.out} (mode 0600); its verifier key:")
    print(signer.verifier.vkey)
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from ledger import export
    from ledger.core.entry import parse_time

    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        raise ConfigError(f"--since/--until: {exc}") from None

    async def run(store: Stores) -> export.Plan:
        p = await export.plan(store.log, args.start, args.end, since, until)
        with Steps() as progress:
            await export.write_directory(store.log, p, Path(args.out), progress)
        return p

    with database(settings, read_only=True) as url:
        p = asyncio.run(_with_store(url, run, read_only=True))
    kind = "filtered, with inclusion proofs" if p.filtered else "the whole log"
    files = [export.ENTRIES, export.CHECKPOINT, export.KEYS] + ([export.PROOFS] if p.filtered else [])
    print(f"exported {p.entry_count:,} entries ({kind}) under a checkpoint of size {p.tree_size}")
    print(f"to {args.out}: {', '.join(files)}")
    return 0


def read_text(path: Path, what: str) -> str:
    """A text file the user named, or one line saying why it cannot be read."""
    try:
        return path.read_bytes().decode()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: not UTF-8 text") from None


def _verifier(key: str) -> Verifier:
    text = read_text(Path(key), "--key").strip() if Path(key).is_file() else key
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
    verifiers = [_verifier(key) for key in args.key]
    proofs = bundle / export.PROOFS
    held = read_text(Path(args.previous_checkpoint), "--previous-checkpoint") if args.previous_checkpoint else None
    if not bundle.is_dir():
        print(f"FAILED: {bundle} is not a bundle directory", file=sys.stderr)
        return 1

    try:
        with Progress("verified", every=100_000) as progress:
            report = verify_bundle(
                _lines(bundle / export.ENTRIES),
                (bundle / export.CHECKPOINT).read_bytes().decode(),
                verifiers,
                _lines(proofs) if proofs.exists() else None,
                held,
                progress.update,
            )
    except FileNotFoundError as exc:
        print(f"FAILED: {exc.filename} is missing from the bundle", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"FAILED: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    except UnicodeDecodeError:
        print(f"FAILED: {bundle / export.CHECKPOINT} is not UTF-8 text", file=sys.stderr)
        return 1
    except LedgerError as exc:
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
    """One receipt, or a person's export (or a history): every receipt in it."""
    from ledger.core.verify import verify_receipts

    verifiers = [_verifier(key) for key in args.key]
    path = Path(args.receipt)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the receipt ({exc.strerror})") from None
    try:
        found = verify_receipts(data, verifiers)
    except (LedgerError, UnicodeError) as exc:
        # LedgerError: VerificationError and whatever the decoding reports about a malformed
        # receipt; UnicodeError: bytes that are not text at all.
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    for entry in found.entries:
        if isinstance(entry, RegistryEntry):
            purposes = ", ".join(sorted(entry.registry.purposes))
            print(f"OK: entry {entry.index} (registry of {purposes}, {entry.recorded_at}) is in the signed log")
        else:
            print(f"OK: entry {entry.index} ({entry.action} {entry.purpose}, {entry.occurred_at}) is in the signed log")
    if found.bound:
        print(f"OK: the salt shows these {len(found.entries)} entries are those of device {found.device_id}")
    return 0


def cmd_purposes_publish(args: argparse.Namespace, settings: Settings) -> int:
    """Publish a registry file into the log: checked first (nothing is appended if it does not
    parse), then appended as a registry entry under the log lock, unless it is the one in force."""
    from ledger.appender import Appender, Unchanged
    from ledger.core.consistency import consistency_token

    registry = load_registry(Path(args.file), what="")
    signer = keys.load_signer(settings)

    async def publish(store: Stores) -> tuple[str, int, int]:
        await store.log.register_key(signer.verifier)
        appender = Appender(store.log, signer, settings.log_origin)
        await appender.start()
        try:
            outcome = await appender.publish(registry)
        finally:
            await appender.stop()
        if isinstance(outcome, Unchanged):
            return "unchanged", outcome.entry_index, outcome.tree_size
        return "published", outcome.entry.index, outcome.tree_size

    with database(settings) as url:
        what, index, size = asyncio.run(_with_store(url, publish))
    if what == "unchanged":
        print(f"{args.file} is the registry in force (log entry {index}): nothing appended")
    else:
        print(f"published {args.file} as log entry {index}; every replica decides with it from that index on")
    print(consistency_token(size))
    return 0


def cmd_verify_state(_: argparse.Namespace, settings: Settings) -> int:
    from ledger.state_check import verify_state

    def server_verifiers() -> list[Verifier]:
        path = settings.signing_key_path
        if not path.exists():
            raise ConfigError(
                f"no signing key at {path}: set LEDGER_SIGNING_KEY or LEDGER_DATA_DIR as the server has them"
            )
        return keys.log_keys(keys.read_key_file(path), settings.trusted_keys)

    async def run(store: Stores):  # type: ignore[no-untyped-def]
        bar: Progress | None = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            bar = bar or Progress("refolded", total)
            bar.update(done)

        try:
            return await verify_state(store.log, verifiers, progress)
        finally:
            if bar is not None:
                bar.close()

    # The database first: a data directory without one is the mistake to name, not its missing key.
    with database(settings, read_only=True) as url:
        verifiers = server_verifiers()
        try:
            report = asyncio.run(_with_store(url, run, read_only=True))
        except VerificationError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
    for difference in report.differences:
        print(f"differs: {difference.describe()}")
    if report.differences:
        print(f"FAILED: {len(report.differences)} state row(s) differ from the log", file=sys.stderr)
        return 1
    print(f"OK: {report.entries:,} entries verify against the signed checkpoint; {report.rows:,} state rows match")
    return 0


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake told in one line (the usage is one --help away), and help that
    shows defaults and settings (ledger.usage)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _bounded(what: str, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not a {what} ({low} to {high})")
        return value

    return parse


def _token_name(text: str) -> str:
    if not text.strip() or not text.isprintable() or len(text) > 128:
        raise argparse.ArgumentTypeError("a token name is 1 to 128 printable characters")
    return text


# The settings each command reads, for its --help (ledger.usage adds their defaults).
DATABASE = ("LEDGER_DATABASE_URL", "LEDGER_DATA_DIR")
KEY = ("LEDGER_SIGNING_KEY", "LEDGER_LOG_ORIGIN", "LEDGER_KEY_NAME")
NO_SETTINGS: tuple[str, ...] = ()


def _command(
    commands: "argparse._SubParsersAction[Parser]", name: str, summary: str, reads: Sequence[str]
) -> argparse.ArgumentParser:
    """A subcommand whose help says what it does and, below its options, which settings it reads."""
    return commands.add_parser(
        name, help=summary, description=summary[0].upper() + summary[1:] + ".", epilog=environment(reads)
    )


def parser() -> argparse.ArgumentParser:
    top = Parser(
        prog="ledger",
        description="Consent Ledger: a signed, append-only consent log.",
        epilog="Each command's --help lists the LEDGER_* settings it reads, with their defaults\n"
        "(`ledger serve --help` lists all of them).",
    )
    top.add_argument("--version", action="version", version=f"ledger {version('consent-ledger')}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _command(commands, "serve", "migrate the database, then run the HTTP service", setting_names())
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    serve.add_argument("--port", type=_bounded("port", 1, 65535), default=8080, help="the port to listen on")
    serve.add_argument(
        "--workers", type=_bounded("worker count", 1, 256), help="server processes (default: LEDGER_WORKERS, else 1)"
    )
    serve.set_defaults(run=cmd_serve)

    _command(commands, "migrate", "apply pending migrations", DATABASE).set_defaults(run=cmd_migrate)

    token = commands.add_parser("token", help="manage API tokens", description="Manage API tokens.")
    tokens = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = _command(tokens, "create", "create a token; prints it as the last line", DATABASE)
    create.add_argument("--name", required=True, type=_token_name, help="1 to 128 printable characters")
    create.add_argument(
        "--scope", required=True, action="append", choices=auth.SCOPES, help="a scope to grant; give it once per scope"
    )
    create.set_defaults(run=cmd_token_create)
    listing = _command(tokens, "list", "the active tokens: name, scopes, created (never the token)", DATABASE)
    listing.set_defaults(run=cmd_token_list)
    revoke = _command(tokens, "revoke", "revoke the active token with this name", DATABASE)
    revoke.add_argument("name", type=_token_name, help="the token's name")
    revoke.set_defaults(run=cmd_token_revoke)

    keygen = _command(commands, "keygen", "write a new Ed25519 signing key; prints its verifier key last", KEY[1:])
    keygen.add_argument("--out", required=True, help="the key file to write (mode 0600; never overwritten)")
    keygen.set_defaults(run=cmd_keygen)

    export = _command(commands, "export", "write an audit bundle to a directory (reads only)", DATABASE)
    export.add_argument(
        "--out", required=True, help="the bundle directory (created if missing; a bundle in it is replaced)"
    )
    export.add_argument("--start", type=int, help="first index (default: 0)")
    export.add_argument("--end", type=int, help="one past the last index (default: the latest checkpoint's size)")
    export.add_argument("--since", help="recorded at or after this RFC 3339 time (default: no lower bound)")
    export.add_argument("--until", help="recorded before this RFC 3339 time (default: no upper bound)")
    export.set_defaults(run=cmd_export)

    verify = _command(
        commands, "verify", "verify an audit bundle offline; exit 0 only if all of it verifies", NO_SETTINGS
    )
    verify.add_argument("bundle", help="the bundle directory (`ledger export --out`)")
    verify.add_argument(
        "--key", action="append", required=True, help="a verifier key you trust (or its file); repeat for earlier keys"
    )
    verify.add_argument(
        "--previous-checkpoint", help="a checkpoint held from earlier, to rule out truncation (default: none)"
    )
    verify.set_defaults(run=cmd_verify)

    state = _command(
        commands,
        "verify-state",
        "refold the signed log and compare the projection's state table; exit 1 on a difference (reads only)",
        (*DATABASE, "LEDGER_SIGNING_KEY", "LEDGER_TRUSTED_KEYS"),
    )
    state.set_defaults(run=cmd_verify_state)

    purposes = commands.add_parser("purposes", help="the purpose registry", description="The purpose registry.")
    registry = purposes.add_subparsers(dest="action", required=True, metavar="ACTION")
    publish = _command(
        registry,
        "publish",
        "publish a registry file into the log; prints its index, and the consistency token last",
        (*DATABASE, *KEY),
    )
    publish.add_argument("file", help="a TOML registry (the LEDGER_PURPOSES format)")
    publish.set_defaults(run=cmd_purposes_publish)

    receipt = _command(
        commands, "verify-receipt", "verify one receipt, or every receipt of a person's export, offline", NO_SETTINGS
    )
    receipt.add_argument("receipt", help="a receipt, a person's export or a history (JSON)")
    receipt.add_argument(
        "--key", action="append", required=True, help="a verifier key you trust (or its file); repeat for earlier keys"
    )
    receipt.set_defaults(run=cmd_verify_receipt)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Every mistake ends in one line on stderr and a non-zero exit: 2 for a
    wrong argument or setting, 1 for everything else (a database that cannot be reached, a file
    that cannot be written, a bundle that does not verify), never in a traceback."""
    args = parser().parse_args(argv)
    for name in unknown_variables(os.environ):
        print(f"ledger: warning: {name} is not a setting the ledger knows (a typo?)", file=sys.stderr)
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_format)
        try:
            code: int = args.run(args, settings)
        except StorageError as exc:
            if settings.embedded:
                raise
            raise StorageError(f"{database_label(settings)}: {exc}") from None
    except ConfigError as exc:
        return fail(str(exc), 2)
    except LedgerError as exc:
        return fail(str(exc), 1)
    except OSError as exc:
        return fail(f"{exc.filename}: {exc.strerror}" if exc.filename else f"{type(exc).__name__}: {exc}", 1)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as exc:
        # A bug, not bad input; still one line, saying so.
        return fail(f"unexpected {type(exc).__name__}: {exc} (a bug: please report it)", 1)
    return code


def fail(message: str, code: int) -> int:
    print(f"ledger: error: {message}", file=sys.stderr)
    return code
