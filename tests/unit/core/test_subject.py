"""The subject (CONTRACT section 1): lowercase hex of HMAC-SHA256(key = the device's salt, message = device_id)."""

from ledger.core.entry import subject_for


def test_rfc_4231_test_case_2() -> None:
    # RFC 4231 section 4.3: key "Jefe", data "what do ya want for nothing?".
    assert subject_for(b"Jefe", "what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_a_32_byte_salt_known_answer() -> None:
    # printf '%s' device-42 | openssl dgst -sha256 -mac HMAC -macopt hexkey:000102...1e1f
    salt = bytes(range(32))
    assert subject_for(salt, "device-42") == "987c357ca1a2328181019577d844d411476aded76606b211cfd33acba4f1861f"
