"""Encryption at rest for BYOK provider keys: AES-256-GCM.

The key material never enters the database: it comes from the `byok_encryption_key`
setting (base64 of 32 bytes) or, by default, from `<home>/byok_key`, made on first start
and readable only by its owner. Each sealed blob is `nonce (12 bytes) || ciphertext+tag`;
the row stores the vault's `key_id` beside it, so opening with the wrong key says so
instead of failing as a bare authentication error. The associated data binds a blob to
its row (`"<credential id>:<org id>"`), so a blob copied to another row cannot be opened.

Nonces and key material come from `secrets`, not `farebox.ids.Ids`: tests seed Ids for
repeatable ids, and a repeated GCM nonce or a predictable key would break the encryption.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from farebox.errors import ConfigError
from farebox.settings import Settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_FILE = "byok_key"


class VaultError(ValueError):
    """A blob cannot be opened: sealed under another key, tampered with, or bound to another row."""


def credential_aad(credential_id: str, org_id: int) -> bytes:
    """The associated data that binds a sealed key to its row."""
    return f"{credential_id}:{org_id}".encode()


class Vault:
    def __init__(self, material: bytes) -> None:
        if len(material) != KEY_BYTES:
            raise ValueError(f"the BYOK encryption key must be {KEY_BYTES} bytes, got {len(material)}")
        self._material = material
        self._cipher: AESGCM | None = None
        # Names the key without revealing it: stored with each blob to diagnose a key change.
        self.key_id = hashlib.sha256(material).hexdigest()[:16]

    @property
    def _aead(self) -> AESGCM:
        # Built on first use: `cryptography` costs start-up time and memory that a server
        # whose organizations bring no provider keys never needs (issue 7: footprint).
        if self._cipher is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._cipher = AESGCM(self._material)
        return self._cipher

    def seal(self, plaintext: str, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)  # random per blob: GCM must never reuse one under a key
        return nonce + self._aead.encrypt(nonce, plaintext.encode(), aad)

    def open(self, blob: bytes, aad: bytes, *, key_id: str | None = None) -> str:
        """The plaintext of `blob`. `key_id` is the id stored beside the blob, when known:
        a mismatch is reported as such, before trying to decrypt."""
        if key_id is not None and key_id != self.key_id:
            raise VaultError(f"sealed under encryption key {key_id}, but the configured key is {self.key_id}"
                             " (byok_encryption_key or <home>/byok_key changed)")
        if len(blob) <= NONCE_BYTES:
            raise VaultError("sealed blob is too short to hold a nonce and a tag")
        from cryptography.exceptions import InvalidTag

        try:
            plain = self._aead.decrypt(bytes(blob[:NONCE_BYTES]), bytes(blob[NONCE_BYTES:]), aad)
        except InvalidTag:
            raise VaultError(f"cannot open the sealed blob with encryption key {self.key_id}: it was sealed under"
                             " another key, tampered with, or belongs to another row") from None
        return plain.decode()


def decode_material(text: str, where: str) -> bytes:
    """Base64 text -> 32 bytes of key material; ConfigError naming `where` otherwise."""
    try:
        material = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: not valid base64") from None
    if len(material) != KEY_BYTES:
        raise ConfigError(f"{where}: must be base64 of {KEY_BYTES} bytes, got {len(material)} bytes")
    return material


def read_or_create_key_file(path: Path) -> bytes:
    """The key in `path`, created with fresh random material when missing. The file is
    written whole under a temporary name (mode 0600) and then linked into place, which
    fails if it exists: two processes starting at once agree on one key, and nobody ever
    reads a half-written file."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass  # another process made it first: use theirs
        finally:
            temporary.unlink()
    return decode_material(path.read_text(), str(path))


def load_vault(settings: Settings) -> Vault:
    """The vault of this installation: the setting when given, else the key file in home."""
    if settings.byok_encryption_key:
        return Vault(decode_material(settings.byok_encryption_key, "byok_encryption_key"))
    return Vault(read_or_create_key_file(settings.home_path / KEY_FILE))
