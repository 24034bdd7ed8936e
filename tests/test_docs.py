"""README.md and docs/: links stay inside the repository, and the reference says what the code does.

Each test reads the documents as text and compares them with the code they describe (the
settings parser, the app's routes, the problem types, the benchmark figures) or runs what they
show (the receipt verifier of docs/log-format.md).
"""

import json
import random
import re
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.routes import HTTPRoute
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from ledger.app import create_app
from ledger.core.batch import Draft, seal_batch
from ledger.core.entry import Entry, entry_bytes
from ledger.core.note import Signer
from ledger.core.tree import CompactRange
from ledger.errors import ConfigError
from ledger.settings import KNOWN, Settings, parse

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
DOCUMENTS = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# What GitHub turns into a link without any markup: URLs, www. names, e-mail addresses, <scheme:...>.
AUTOLINK = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+|\bwww\.\S+|[\w.+-]+@[\w-]+\.[\w.-]+|<[a-z][a-z0-9+.-]*:[^>]*>")
SETTING = re.compile(r"\bLEDGER_[A-Z0-9_]*[A-Z0-9]\b")


def prose(text: str) -> str:
    """The text as it renders: code blocks and code spans removed (they hold no links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            base = slug(match.group(1))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def table_rows(text: str, start: str) -> list[list[str]]:
    """The cells of the first table after the line that starts with `start` (a heading)."""
    section = text.split(f"\n{start}", 1)[1]
    rows = []
    started = False
    for line in section.splitlines():
        if line.startswith("|"):
            started = True
            if not re.fullmatch(r"\|[-:| ]+\|", line.strip()):  # not the |---|---| line
                rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif started:
            break
    return rows[1:]  # without the header


def section(text: str, heading: str) -> str:
    level = heading.split(" ")[0]
    body = text.split(f"\n{heading}\n", 1)[1]
    return re.split(rf"\n{level} ", body, maxsplit=1)[0]


# -- links ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_stay_inside_the_repository_and_resolve(document: Path) -> None:
    text = prose(document.read_text())
    outside = AUTOLINK.findall(text)
    assert not outside, f"{document.name} links outside the repository: {outside}"
    for target in LINK.findall(text):
        assert not re.match(r"[a-z][a-z0-9+.-]*:", target), f"{document.name}: {target} leaves the repository"
        path_part, _, anchor = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        assert linked.is_relative_to(ROOT), f"{document.name}: {target} points outside the repository"
        assert linked.exists(), f"{document.name}: {target} names a file that does not exist"
        if anchor:
            assert linked.suffix == ".md", f"{document.name}: {target}: an anchor into a file that is not Markdown"
            assert anchor in anchors(linked), f"{document.name}: {target}: no such heading in {linked.name}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_outside_the_repository_is_referred_to(document: Path) -> None:
    text = document.read_text()
    assert "CONTRACT" not in text
    assert "../shared" not in text


def test_readme_lists_every_document_in_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    for document in sorted(DOCS.iterdir()):
        assert f"](docs/{document.name})" in readme, f"README's Documentation list lacks docs/{document.name}"


def test_the_link_checker_sees_what_it_must() -> None:
    """The checks above catch what they are for (they would pass vacuously otherwise)."""
    assert AUTOLINK.findall(prose("see https://example.com and www.example.org or a@b.org")) == [
        "https://example.com",
        "www.example.org",
        "a@b.org",
    ]
    assert AUTOLINK.findall(prose("`https://in.code` and\n```\nhttps://in.block\n```\n")) == []
    assert LINK.findall(prose("[a](docs/api.md#routes) ![b](x.png) `[c](d)`")) == ["docs/api.md#routes", "x.png"]
    assert slug("Integrity: only what the signed log backs is served") == (
        "integrity-only-what-the-signed-log-backs-is-served"
    )
    assert slug("`consistency=` and `at=`") == "consistency-and-at"
    assert "routes" in anchors(DOCS / "api.md")


# -- configuration -------------------------------------------------------------------------------

CONFIGURATION = (DOCS / "configuration.md").read_text()


def documented_settings() -> dict[str, list[str]]:
    return {row[0].strip("`"): row for row in table_rows(CONFIGURATION, "## Settings")}


def test_configuration_documents_exactly_the_settings_the_code_reads() -> None:
    assert set(documented_settings()) == KNOWN


def test_readme_configuration_table_names_exactly_the_settings() -> None:
    rows = table_rows((ROOT / "README.md").read_text(), "### Configuration")
    named = {name for row in rows for name in SETTING.findall(row[0])}
    assert named == KNOWN


def test_every_ledger_variable_in_the_code_is_documented() -> None:
    """Also those read outside ledger/settings.py (LEDGER_DEBUG)."""
    in_code = {name for path in (ROOT / "ledger").rglob("*.py") for name in SETTING.findall(path.read_text())}
    missing = sorted(in_code - set(SETTING.findall(CONFIGURATION)))
    assert not missing, f"docs/configuration.md does not mention {missing}"


@pytest.mark.parametrize("field", ["consistency_wait_ms", "max_staleness_ms", "cache_size", "workers"])
def test_numeric_defaults_and_ranges_are_the_codes(field: str) -> None:
    name = f"LEDGER_{field.upper()}"
    _, default, accepted, _ = documented_settings()[name]
    assert int(default.replace(",", "")) == getattr(Settings(), field)
    low, high = (int(n) for n in re.findall(r"[0-9]+", accepted.replace(",", "")))
    for value in (low, high):
        assert getattr(parse({name: str(value)}), field) == value
    for value in (low - 1, high + 1):
        with pytest.raises(ConfigError, match=name):
            parse({name: str(value)})


def test_the_boolean_values_listed_are_those_accepted() -> None:
    _, default, accepted, _ = documented_settings()["LEDGER_WEBHOOK_ALLOW_PRIVATE"]
    assert default == "false"
    yes, no = accepted.split(" or ")
    for words, expected in ((yes, True), (no, False)):
        for word in re.findall(r"`([^`]+)`", words):
            for spelling in (word, word.upper()):
                assert parse({"LEDGER_WEBHOOK_ALLOW_PRIVATE": spelling}).webhook_allow_private is expected


# -- the API reference ---------------------------------------------------------------------------

API = (DOCS / "api.md").read_text()


def test_every_route_of_the_app_is_in_the_api_table() -> None:
    rows = {row[0] for row in table_rows(API, "## Routes")}
    routes = [r for r in create_app(Settings()).routes if isinstance(r, HTTPRoute)]
    assert routes
    for route in routes:
        if route.path_format == "/schema/{path}":  # Litestar's 404 for other schema files
            continue
        for method in sorted(route.methods - {"OPTIONS", "HEAD"}):
            assert f"`{method} {route.path_format}`" in rows, f"docs/api.md lacks {method} {route.path_format}"


def test_every_problem_type_is_in_the_api_errors_table() -> None:
    documented = {(row[0], row[1].strip("`")) for row in table_rows(API, "**Errors** are RFC 9457")}
    source = (ROOT / "ledger" / "api" / "problems.py").read_text()
    raised = set(re.findall(r'problem\(([0-9]{3}), "([a-z-]+)"', source))
    assert raised
    assert raised <= documented, raised - documented


# -- figures -------------------------------------------------------------------------------------

README = (ROOT / "README.md").read_text()


def numbers(text: str) -> set[float]:
    # Not the 50 of "p50": a figure starts a word.
    return {float(n.replace(",", "")) for n in re.findall(r"(?<![\w.])[0-9][0-9,]*(?:\.[0-9]+)?", text)}


@pytest.mark.parametrize(
    ("document", "heading", "column"),
    [("README.md", "## Operations", 1), ("docs/operations.md", "## Sizing", 1)],
)
def test_sizing_figures_are_the_benchmark_sections(document: str, heading: str, column: int) -> None:
    """Every figure in the sizing tables is one the README's Benchmarks section reports, so a
    re-run benchmark cannot leave a stale copy behind (derived figures go in parentheses)."""
    measured = numbers(section(README, "## Benchmarks"))
    rows = table_rows((ROOT / document).read_text(), heading)
    assert rows
    for row in rows:
        figure = re.sub(r"\([^)]*\)", "", row[column])
        assert numbers(figure), row
        assert numbers(figure) <= measured, f"{document}: {row[column]} is not in README's Benchmarks"


# -- the log format ------------------------------------------------------------------------------

LOG_FORMAT = (DOCS / "log-format.md").read_text()


def block_after(marker: str) -> str:
    return LOG_FORMAT.split(f"<!-- {marker} -->\n```", 1)[1].split("\n", 1)[1].split("\n```\n", 1)[0]


def sketch() -> SimpleNamespace:
    namespace: dict[str, object] = {}
    exec(compile(block_after("receipt-verifier"), "docs/log-format.md", "exec"), namespace)
    return SimpleNamespace(**namespace)


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(public).verify(message, signature)
    except (BadSignatureError, ValueError):
        return False
    return True


def example_vkey() -> str:
    [vkey] = re.findall(r"^[^\s+]+\+[0-9a-f]{8}\+[A-Za-z0-9+/=]+$", LOG_FORMAT, re.M)
    return vkey


def test_the_example_receipt_verifies_with_the_sketch_and_the_example_key() -> None:
    receipt = json.loads(block_after("example-receipt"))
    entry = sketch().check_receipt(receipt, example_vkey(), ed25519_verify)
    assert entry["index"] == 1
    assert entry["action"] == "grant"
    assert receipt["leaf"] in LOG_FORMAT  # the canonical-bytes example is this receipt's leaf


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: r.update(leaf=r["leaf"].replace('"grant"', '"withdraw"')),
        lambda r: r.update(entry={**r["entry"], "purpose": "telemetry"}),
        lambda r: r.update(index=2),
        lambda r: r.update(leaf_hash="00" * 32),
        lambda r: r.update(inclusion_proof=["00" * 32]),
        lambda r: r.update(inclusion_proof=[*r["inclusion_proof"], r["inclusion_proof"][0]]),
        lambda r: r.update(checkpoint=r["checkpoint"].replace("\n2\n", "\n3\n", 1)),
        lambda r: r.update(leaf=r["leaf"].replace(":", ": ", 1)),
    ],
    ids=["leaf", "entry", "index", "leaf-hash", "proof", "proof-too-long", "checkpoint-size", "not-canonical"],
)
def test_the_sketch_refuses_an_altered_receipt(tamper) -> None:  # type: ignore[no-untyped-def]
    receipt = json.loads(block_after("example-receipt"))
    tamper(receipt)
    with pytest.raises(ValueError):
        sketch().check_receipt(receipt, example_vkey(), ed25519_verify)


def test_the_sketch_refuses_another_key() -> None:
    receipt = json.loads(block_after("example-receipt"))
    other = Signer.generate("consent-ledger.localhost/log").verifier.vkey
    with pytest.raises(ValueError, match="not signed by this key"):
        sketch().check_receipt(receipt, other, ed25519_verify)


def test_the_sketch_verifies_receipts_the_service_makes_for_every_position() -> None:
    """Receipts sealed by the service's own code, for every index of trees up to 40 entries, with
    evidence that exercises the canonical encoding."""
    verifier = sketch()
    signer = Signer.generate("docs.test/log")
    tree = CompactRange()
    rng = random.Random(13)
    for size in range(1, 41):
        drafts = [
            Draft(
                id=f"00000000-0000-4000-8000-{size:012d}",
                device_id="d",
                purpose="telemetry",
                action=rng.choice(["grant", "withdraw"]),
                policy_version=1,
                occurred_at="2026-11-29T17:29:28.788018Z",
                actor="user",
                method="api",
                evidence={"é\n\x00\u2028": 'quote " backslash \\ \x7f 😀', "z": "", "A": "/"},
            )
        ]
        batch = seal_batch(tree, drafts, ["a" * 64], "2026-11-29T17:29:28.811995Z", "docs.test/log", signer)
        tree = batch.tree
        for sealed in batch.sealed:
            receipt = {
                "index": sealed.entry.index,
                "entry": msgspec.to_builtins(sealed.entry),
                "leaf": sealed.leaf.decode(),
                "leaf_hash": sealed.leaf_hash.hex(),
                "checkpoint": sealed.checkpoint,
                "inclusion_proof": [h.hex() for h in sealed.inclusion_proof],
            }
            assert verifier.check_receipt(receipt, signer.verifier.vkey, ed25519_verify)["index"] == size - 1


def test_the_sketch_follows_the_rfc6962_inclusion_vectors() -> None:
    vectors = json.loads((ROOT / "tests" / "vectors" / "rfc6962.json").read_text())
    verifier = sketch()
    for probe in vectors["inclusion"]:
        leaf = verifier.leaf_hash(bytes.fromhex(vectors["leaves"][probe["index"]]))
        proof = [bytes.fromhex(h) for h in probe["proof"]]
        root = verifier.root_from_inclusion_proof(probe["index"], probe["size"], leaf, proof)
        assert root.hex() == vectors["roots"][probe["size"] - 1]


@given(
    evidence=st.dictionaries(st.text(min_size=1, max_size=64), st.text(max_size=256), max_size=16),
    policy_version=st.integers(1, 2**31 - 1),
    index=st.integers(0, 2**53),
    expires=st.booleans(),
)
def test_pythons_json_module_writes_the_canonical_bytes(
    evidence: dict[str, str], policy_version: int, index: int, expires: bool
) -> None:
    """docs/log-format.md: json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    gives exactly the entry bytes."""
    entry = Entry(
        v=1,
        id="95f4b01d-abf3-44d6-8d6f-f9724d33a7bc",
        index=index,
        subject="a" * 64,
        purpose="telemetry",
        action="grant",
        policy_version=policy_version,
        occurred_at="2026-11-29T17:29:28.788018Z",
        recorded_at="2026-11-29T17:29:28.811995Z",
        actor="user",
        method="api",
        evidence=evidence,
        expires_at="2027-11-29T17:29:28.788018Z" if expires else None,
    )
    as_object = msgspec.to_builtins(entry)
    assert sketch().canonical(as_object) == entry_bytes(entry)
    assert json.dumps(as_object, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() == (
        entry_bytes(entry)
    )
