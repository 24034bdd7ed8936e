"""The purpose registry: what each purpose is, who receives the data, and its consent rules.

The three built-in purposes come from the app's privacy statement (sections 2.1.2, 2.1.3 and 7);
LEDGER_PURPOSES replaces them with a TOML file of the same shape.
"""

import csv
import io
from typing import Annotated

import msgspec

from ledger.core.entry import PolicyVersion, PurposeKey

__all__ = [
    "BUILT_IN",
    "HOW_TO_WITHDRAW",
    "KUKU_AI",
    "Controller",
    "Purpose",
    "PurposeRecord",
    "Registry",
    "parse_registry",
    "purpose_record",
    "records_csv",
]


class Purpose(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    description: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    recipients: list[str]
    data_categories: list[str]
    legal_basis: str = "consent"
    min_policy_version: PolicyVersion = 1
    max_age_days: Annotated[int, msgspec.Meta(ge=1, le=36_500)] | None = None


class Controller(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Who decides the purposes: named in every record of processing and consent receipt."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    contact: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    policy_url: str | None = None


# From the privacy statement (section 9).
KUKU_AI = Controller(name="Kuku AI", contact="support@ssjtech.xyz")


class Registry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    purposes: Annotated[dict[PurposeKey, Purpose], msgspec.Meta(min_length=1)]
    controller: Controller = KUKU_AI


BUILT_IN = Registry(
    purposes={
        "pixverse_sharing": Purpose(
            title="Sharing images and prompts with PixVerse to generate videos",
            description=(
                "When you start a video generation, the images you upload (including faces in them) and "
                "the text prompts you enter are sent to the PixVerse AI video service, only to make the "
                "video you asked for. Both we and PixVerse delete or anonymise them as soon as the video "
                "is generated; they are not used for marketing, profiling or model training. Refusing "
                "only disables video generation; every other feature keeps working."
            ),
            recipients=["PixVerse AI video generation service (https://app.pixverse.ai/)"],
            data_categories=["images you upload, including facial information", "text prompts"],
        ),
        "cross_border_transfer": Purpose(
            title="Transfer of personal data to processors outside the home region",
            description=(
                "To run the service we work with overseas providers, so your personal data may be "
                "transferred to countries or regions outside the mainland whose privacy laws differ. "
                "Transfers are encrypted and made only to recipients with equivalent protection, and "
                "sensitive data is never transferred without your explicit consent."
            ),
            recipients=["overseas service providers, including the PixVerse AI video service"],
            data_categories=["device identification information", "images and prompts you share", "app usage"],
        ),
        "telemetry": Purpose(
            title="Third-party statistics and performance SDKs",
            description=(
                "Third-party statistics and performance-monitoring SDKs in the app receive the minimum "
                "data they need to measure usage and find faults. Sensitive personal data is not shared "
                "with them without your explicit authorisation, and you can switch this off at any time "
                "in the app's settings."
            ),
            recipients=["third-party statistics and performance SDK providers"],
            data_categories=["device identifiers", "app usage", "crash and error events"],
        ),
    }
)


HOW_TO_WITHDRAW = (
    "Withdraw at any time in the app's settings, or by writing to the controller; the withdrawal is "
    "recorded in the signed log, every processor is told to stop and delete, and no other feature of "
    "the app is affected."
)


class PurposeRecord(msgspec.Struct, frozen=True):
    """One purpose as a record of processing: the fields of ISO/IEC 27560 and the Kantara consent
    receipt that the registry can supply."""

    purpose_id: str
    title: str
    description: str
    controller: Controller
    legal_basis: str
    data_categories: list[str]
    recipients: list[str]
    min_policy_version: int
    max_age_days: int | None
    how_to_withdraw: str


def purpose_record(key: str, purpose: Purpose, controller: Controller) -> PurposeRecord:
    return PurposeRecord(
        purpose_id=key,
        title=purpose.title,
        description=purpose.description,
        controller=controller,
        legal_basis=purpose.legal_basis,
        data_categories=purpose.data_categories,
        recipients=purpose.recipients,
        min_policy_version=purpose.min_policy_version,
        max_age_days=purpose.max_age_days,
        how_to_withdraw=HOW_TO_WITHDRAW,
    )


def records_csv(records: list[PurposeRecord]) -> str:
    """One row per purpose; list fields joined with '; '."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["purpose_id", "title", "description", "controller", "controller_contact", "legal_basis",
         "data_categories", "recipients", "min_policy_version", "max_age_days", "how_to_withdraw"]
    )  # fmt: skip
    for r in records:
        writer.writerow(
            [r.purpose_id, r.title, r.description, r.controller.name, r.controller.contact, r.legal_basis,
             "; ".join(r.data_categories), "; ".join(r.recipients), r.min_policy_version,
             "" if r.max_age_days is None else r.max_age_days, r.how_to_withdraw]
        )  # fmt: skip
    return out.getvalue()


def parse_registry(toml: bytes) -> Registry:
    """Decode and check a registry file; raise msgspec errors that name the offending field."""
    return msgspec.toml.decode(toml, type=Registry)
