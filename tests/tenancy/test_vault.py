"""The BYOK vault: AES-256-GCM with key material from the setting or <home>/byok_key."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from farebox.errors import ConfigError
from farebox.settings import load_settings
from farebox.tenancy.vault import KEY_FILE, NONCE_BYTES, Vault, VaultError, credential_aad, load_vault

KEY = "sk-proj-" + "a1b2c3d4" * 6
AAD = credential_aad("byok_00112233445566778899aabb", 7)


def material(fill: int) -> bytes:
    return bytes([fill]) * 32


def test_round_trip_and_every_seal_is_fresh():
    vault = Vault(material(1))
    first, second = vault.seal(KEY, AAD), vault.seal(KEY, AAD)
    assert first != second and first[:NONCE_BYTES] != second[:NONCE_BYTES]  # a new random nonce each time
    assert KEY.encode() not in first
    assert vault.open(first, AAD) == vault.open(second, AAD, key_id=vault.key_id) == KEY
    assert vault.open(vault.seal("", AAD), AAD) == ""
    assert vault.open(vault.seal("ключ-🔑", AAD), AAD) == "ключ-🔑"


def test_key_id_names_the_material_without_revealing_it():
    a, b = Vault(material(1)), Vault(material(2))
    assert len(a.key_id) == 16 and a.key_id != b.key_id and a.key_id == Vault(material(1)).key_id
    assert all(c in "0123456789abcdef" for c in a.key_id)
    with pytest.raises(ValueError, match="32 bytes"):
        Vault(b"short")


def test_a_different_key_cannot_open_and_says_why():
    sealer, other = Vault(material(1)), Vault(material(2))
    blob = sealer.seal(KEY, AAD)
    # With the stored key id, the mismatch is named before any decryption.
    with pytest.raises(VaultError, match=f"sealed under encryption key {sealer.key_id}.*configured key is {other.key_id}"):
        other.open(blob, AAD, key_id=sealer.key_id)
    # Without it, the authentication tag still refuses, naming the key that was tried.
    with pytest.raises(VaultError, match=f"cannot open the sealed blob with encryption key {other.key_id}"):
        other.open(blob, AAD)


def test_tampering_or_another_row_fails():
    vault = Vault(material(1))
    blob = vault.seal(KEY, AAD)
    for i in (0, NONCE_BYTES, len(blob) - 1):  # nonce, ciphertext, tag
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(VaultError):
            vault.open(bytes(tampered), AAD)
    with pytest.raises(VaultError):
        vault.open(blob[:-1], AAD)
    with pytest.raises(VaultError, match="too short"):
        vault.open(blob[:NONCE_BYTES], AAD)
    # Bound to its row: the same blob under another credential id or organization is refused.
    with pytest.raises(VaultError):
        vault.open(blob, credential_aad("byok_00112233445566778899aabc", 7))
    with pytest.raises(VaultError):
        vault.open(blob, credential_aad("byok_00112233445566778899aabb", 8))


def test_key_file_is_created_private_and_reused(tmp_path):
    settings = load_settings(env={"FAREBOX_HOME": str(tmp_path / "home")})
    first = load_vault(settings)
    path = tmp_path / "home" / KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(base64.b64decode(path.read_text())) == 32
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]  # no temporary file left behind
    blob = first.seal(KEY, AAD)
    second = load_vault(settings)   # a restart: the same key
    assert second.key_id == first.key_id and second.open(blob, AAD) == KEY
    other_home = load_vault(load_settings(env={"FAREBOX_HOME": str(tmp_path / "other")}))
    assert other_home.key_id != first.key_id  # generated, not a constant


def test_the_environment_setting_wins_over_the_file(tmp_path):
    home = tmp_path / "home"
    from_file = load_vault(load_settings(env={"FAREBOX_HOME": str(home)}))
    given = base64.b64encode(material(9)).decode()
    vault = load_vault(load_settings(env={"FAREBOX_HOME": str(home), "FAREBOX_BYOK_ENCRYPTION_KEY": given}))
    assert vault.key_id == Vault(material(9)).key_id != from_file.key_id
    # With the setting given, no key file is ever made.
    fresh = tmp_path / "fresh"
    load_vault(load_settings(env={"FAREBOX_HOME": str(fresh), "FAREBOX_BYOK_ENCRYPTION_KEY": given}))
    assert not (fresh / KEY_FILE).exists()


@pytest.mark.parametrize(("value", "message"), [
    ("not base64!", "byok_encryption_key: not valid base64"),
    (base64.b64encode(b"x" * 16).decode(), "byok_encryption_key: must be base64 of 32 bytes, got 16 bytes"),
])
def test_a_bad_setting_is_a_config_error(tmp_path, value, message):
    settings = load_settings(env={"FAREBOX_HOME": str(tmp_path), "FAREBOX_BYOK_ENCRYPTION_KEY": value})
    with pytest.raises(ConfigError, match=message):
        load_vault(settings)


def test_a_damaged_key_file_is_a_config_error(tmp_path):
    (tmp_path / KEY_FILE).write_text("garbage\n")
    with pytest.raises(ConfigError, match=f"{KEY_FILE}: "):
        load_vault(load_settings(env={"FAREBOX_HOME": str(tmp_path)}))
