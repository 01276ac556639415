from __future__ import annotations

import pytest

from callsight.core.errors import CallsightError
from callsight.pipeline.crypto import (
    DecryptError,
    Keyring,
    KeyUnwrapError,
    TenantCipher,
    key_id_of,
    new_data_key,
    unwrap_key,
    wrap_key,
)

NUMBER = "+919876543210"


@pytest.fixture
def cipher() -> TenantCipher:
    return TenantCipher(7, new_data_key())


def test_new_data_key_is_32_random_bytes() -> None:
    first, second = new_data_key(), new_data_key()
    assert len(first) == 32
    assert first != second


@pytest.mark.parametrize("plaintext", [NUMBER, "Ravi Kumar", "नमस्ते 👋", "x" * 10_000])
def test_round_trip(cipher: TenantCipher, plaintext: str) -> None:
    assert cipher.decrypt(cipher.encrypt(plaintext)) == plaintext


def test_ciphertext_differs_each_time_but_decrypts(cipher: TenantCipher) -> None:
    first, second = cipher.encrypt(NUMBER), cipher.encrypt(NUMBER)
    assert first != second
    assert cipher.decrypt(first) == cipher.decrypt(second) == NUMBER


def test_ciphertext_layout(cipher: TenantCipher) -> None:
    blob = cipher.encrypt(NUMBER)
    assert blob[0] == 0x01
    assert blob[1:5] == (7).to_bytes(4, "big")
    # header + nonce + ciphertext + tag
    assert len(blob) == 5 + 12 + len(NUMBER) + 16
    assert key_id_of(blob) == 7


def test_plaintext_digits_never_appear_in_ciphertext(cipher: TenantCipher) -> None:
    for blob in [cipher.encrypt(NUMBER), *cipher.encrypt_many([NUMBER] * 50)]:
        assert b"9876543210" not in blob
        assert b"98765" not in blob


def test_empty_string_stays_empty(cipher: TenantCipher) -> None:
    assert cipher.encrypt("") == b""
    assert cipher.decrypt(b"") == ""
    assert cipher.encrypt_many(["", NUMBER, ""])[::2] == [b"", b""]


def test_every_single_byte_tamper_is_refused(cipher: TenantCipher) -> None:
    blob = cipher.encrypt(NUMBER)
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(DecryptError):
            cipher.decrypt(bytes(tampered))


def test_truncated_ciphertext_is_refused(cipher: TenantCipher) -> None:
    blob = cipher.encrypt(NUMBER)
    for length in (1, 4, 5, 17, 32, len(blob) - 1):
        with pytest.raises(DecryptError):
            cipher.decrypt(blob[:length])


def test_wrong_key_with_same_key_id_is_refused(cipher: TenantCipher) -> None:
    other = TenantCipher(7, new_data_key())
    with pytest.raises(DecryptError, match="failed authentication") as info:
        other.decrypt(cipher.encrypt(NUMBER))
    assert info.value.key_id == 7


def test_foreign_key_id_is_refused(cipher: TenantCipher) -> None:
    other = TenantCipher(8, new_data_key())
    with pytest.raises(DecryptError, match="key id 7"):
        other.decrypt(cipher.encrypt(NUMBER))


def test_bad_version_is_refused(cipher: TenantCipher) -> None:
    blob = bytearray(cipher.encrypt(NUMBER))
    blob[0] = 0x02
    with pytest.raises(DecryptError, match="version 2"):
        cipher.decrypt(bytes(blob))


def test_decrypt_error_is_a_callsight_error(cipher: TenantCipher) -> None:
    with pytest.raises(CallsightError):
        cipher.decrypt(b"\x01")


def test_many_variants_match_single_ones(cipher: TenantCipher) -> None:
    plaintexts = [NUMBER, "", "Asha", "+14155552671"]
    blobs = cipher.encrypt_many(plaintexts)
    assert len(blobs) == len(plaintexts)
    assert cipher.decrypt_many(blobs) == plaintexts
    assert [cipher.decrypt(blob) for blob in blobs] == plaintexts
    assert len({blob[5:17] for blob in blobs if blob}) == 3  # every nonce distinct
    assert cipher.blind_index_many(plaintexts) == [cipher.blind_index(p) for p in plaintexts]
    assert cipher.encrypt_many([]) == []


def test_blind_index_is_deterministic_and_full_length(cipher: TenantCipher) -> None:
    index = cipher.blind_index(NUMBER)
    assert len(index) == 32
    assert cipher.blind_index(NUMBER) == index
    assert cipher.blind_index("+14155552671") != index


def test_blind_index_is_the_same_for_the_same_data_key() -> None:
    data_key = new_data_key()
    assert TenantCipher(1, data_key).blind_index(NUMBER) == TenantCipher(1, data_key).blind_index(
        NUMBER
    )


def test_blind_index_differs_across_tenant_keys(cipher: TenantCipher) -> None:
    other_tenant = TenantCipher(7, new_data_key())
    assert other_tenant.blind_index(NUMBER) != cipher.blind_index(NUMBER)


def test_blind_index_key_is_independent_of_the_encryption_key(cipher: TenantCipher) -> None:
    assert cipher.blind_index(NUMBER) not in cipher.encrypt(NUMBER)


def test_name_keys_are_keyed_32_bit_hashes_never_0_but_for_no_name(cipher: TenantCipher) -> None:
    keys = cipher.name_keys(["Ravi", "", "Asha", "Ravi", NUMBER])
    assert keys[0] == keys[3] != keys[2] and keys[1] == 0
    assert all(0 < key < 2**32 for i, key in enumerate(keys) if i != 1)
    # Domain-separated from the blind index of a number spelled like the name.
    assert keys[4] != int.from_bytes(cipher.blind_index(NUMBER)[:4], "little")
    assert TenantCipher(1, new_data_key()).name_keys(["Ravi"]) != keys[:1]


def test_cipher_validates_its_inputs() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TenantCipher(1, b"short")
    with pytest.raises(ValueError, match="32-bit"):
        TenantCipher(2**32, new_data_key())
    with pytest.raises(ValueError, match="32-bit"):
        TenantCipher(-1, new_data_key())


def test_cipher_repr_hides_key_material() -> None:
    data_key = new_data_key()
    text = repr(TenantCipher(3, data_key))
    assert text == "TenantCipher(key_id=3)"
    assert data_key.hex() not in text


def test_key_id_is_read_only(cipher: TenantCipher) -> None:
    assert cipher.key_id == 7
    with pytest.raises(AttributeError):
        cipher.key_id = 8  # type: ignore[misc]


def test_key_id_of_refuses_what_has_no_header() -> None:
    with pytest.raises(DecryptError):
        key_id_of(b"")
    with pytest.raises(DecryptError):
        key_id_of(b"\x01\x00")


def test_wrap_unwrap_round_trip() -> None:
    master, data_key = new_data_key(), new_data_key()
    wrapped = wrap_key(master, "tenant-a", data_key)
    assert data_key not in wrapped
    assert wrap_key(master, "tenant-a", data_key) != wrapped  # fresh nonce
    assert unwrap_key(master, "tenant-a", wrapped) == data_key


def test_unwrap_refuses_wrong_master_key() -> None:
    wrapped = wrap_key(new_data_key(), "tenant-a", new_data_key())
    with pytest.raises(KeyUnwrapError, match="tenant-a"):
        unwrap_key(new_data_key(), "tenant-a", wrapped)


def test_unwrap_refuses_another_tenant() -> None:
    master = new_data_key()
    wrapped = wrap_key(master, "tenant-a", new_data_key())
    with pytest.raises(KeyUnwrapError, match="tenant-b"):
        unwrap_key(master, "tenant-b", wrapped)


def test_unwrap_refuses_tampered_or_truncated_bytes() -> None:
    master = new_data_key()
    wrapped = bytearray(wrap_key(master, "tenant-a", new_data_key()))
    wrapped[20] ^= 0x80
    with pytest.raises(KeyUnwrapError):
        unwrap_key(master, "tenant-a", bytes(wrapped))
    with pytest.raises(KeyUnwrapError, match="bytes"):
        unwrap_key(master, "tenant-a", bytes(wrapped[:-1]))


def test_wrap_refuses_wrong_key_lengths() -> None:
    with pytest.raises(ValueError, match="master key"):
        wrap_key(b"x" * 16, "tenant-a", new_data_key())
    with pytest.raises(ValueError, match="data key"):
        wrap_key(new_data_key(), "tenant-a", b"x" * 16)


def test_keyring_decrypts_old_key_id_after_rotation() -> None:
    old = TenantCipher(1, new_data_key())
    old_blob = old.encrypt(NUMBER)

    new = TenantCipher(2, new_data_key())
    keyring = Keyring(new, [old])
    new_blob = keyring.encrypt("Asha")

    assert keyring.current is new
    assert key_id_of(new_blob) == 2
    assert keyring.decrypt(old_blob) == NUMBER
    assert keyring.decrypt(new_blob) == "Asha"
    assert keyring.decrypt(b"") == ""
    assert keyring.blind_index(NUMBER) == new.blind_index(NUMBER)


def test_keyring_refuses_unknown_key_id() -> None:
    keyring = Keyring(TenantCipher(2, new_data_key()))
    stranger = TenantCipher(9, new_data_key())
    with pytest.raises(DecryptError, match="no key with id 9") as info:
        keyring.decrypt(stranger.encrypt(NUMBER))
    assert info.value.key_id == 9


def test_keyring_refuses_duplicate_key_ids() -> None:
    with pytest.raises(ValueError, match="twice"):
        Keyring(TenantCipher(1, new_data_key()), [TenantCipher(1, new_data_key())])


def test_ciphers_sharing_an_index_key_give_equal_blind_indexes_and_name_keys() -> None:
    first, second = new_data_key(), new_data_key()
    old = TenantCipher(1, first)
    new = TenantCipher(7, second, index_key=first)
    assert new.blind_index("+919876543210") == old.blind_index("+919876543210")
    assert new.name_keys(["Asha"]) == old.name_keys(["Asha"])
    assert TenantCipher(7, second).blind_index("+919876543210") != old.blind_index("+919876543210")
    ring = Keyring(new, [old])
    blob = old.encrypt("+919876543210")
    assert ring.decrypt(blob) == "+919876543210"
    assert key_id_of(ring.encrypt("x")) == 7
