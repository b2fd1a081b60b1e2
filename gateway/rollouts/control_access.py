"""Who may change routing: the control plane's credentials, checked without grpc.

A caller proves itself with a bearer token from ``--control-tokens-file`` (its name becomes the
audit history's actor), a client certificate the control listener's TLS verified against
``--control-client-ca-file`` (its subject is the actor), or, for the model-repository calls only, the
header of Triton's ``--grpc-restricted-protocol=model-repository:KEY=VALUE``. When none of these is
configured and the control address is loopback, every local caller is admitted as ``local:<host>``.
A call with no credentials is :class:`Unauthenticated`; one with a wrong or revoked credential is
:class:`PermissionDenied`. The edge reads the metadata and the TLS peer; this module decides.
"""

from __future__ import annotations

import hmac
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

# Shorter tokens can be guessed; a token file is read by people, so this is a floor, not a format.
MIN_TOKEN_CHARS = 16
BEARER = "bearer"
# The reason label of the refusal counter, one per way a call is refused.
NO_CREDENTIALS = "no_credentials"
WRONG_TOKEN = "wrong_token"
WRONG_HEADER = "wrong_header"
MALFORMED = "malformed_authorization"
NOT_CONFIGURED = "no_credentials_configured"


def open_locally_warning(control_address: str) -> str:
    """What the log says once at start when the control plane is open to every local caller."""
    return (
        f"the control plane on {control_address} has no tokens and no client CA: every local caller may change"
        " routing (--control-tokens-file to require a token)"
    )


class TokensFileInvalid(ValueError):
    """The tokens file cannot be read or has a line that is not ``name token``."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call was refused: the counter's reason label, and the message the caller gets."""

    reason: str
    message: str
    authenticated: bool  # False: UNAUTHENTICATED (no credentials); True: PERMISSION_DENIED

    def error(self) -> Unauthenticated | PermissionDenied:
        return PermissionDenied(self.message) if self.authenticated else Unauthenticated(self.message)


class Refused(Exception):
    """A control call that its credentials do not admit."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def parse_tokens(text: str, source: str) -> dict[str, str]:
    """``name token`` lines (``#`` comments and blank lines allowed) -> {token: name}."""
    tokens: dict[str, str] = {}
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{source} line {number}"
        if len(words) != 2:
            raise TokensFileInvalid(f"{where}: expected 'name token', found {len(words)} words")
        name, token = words
        if len(token) < MIN_TOKEN_CHARS:
            raise TokensFileInvalid(f"{where}: the token of {name!r} is shorter than {MIN_TOKEN_CHARS} characters")
        if name in names:
            raise TokensFileInvalid(f"{where}: the name {name!r} is given twice")
        if token in tokens:  # two names for one token: the actor would be ambiguous
            raise TokensFileInvalid(f"{where}: the token of {name!r} is also {tokens[token]!r}'s")
        names.add(name)
        tokens[token] = name
    return tokens


class ControlTokens:
    """The tokens file, read at start and again on :meth:`reload` (SIGHUP)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._tokens = self._read()

    def _read(self) -> dict[str, str]:
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise TokensFileInvalid(f"cannot read the control tokens file {self.path}: {error}") from None
        return parse_tokens(text, str(self.path))

    def reload(self) -> int:
        """Read the file again; returns how many tokens it holds.

        A file that cannot be read or parsed admits nobody until it is fixed: keeping the old tokens
        would keep the one an operator just revoked. Raises :class:`TokensFileInvalid` saying why.
        """
        try:
            tokens = self._read()
        except TokensFileInvalid:
            with self._lock:
                self._tokens = {}
            raise
        with self._lock:
            self._tokens = tokens
        return len(tokens)

    def name_of(self, token: str) -> str | None:
        """The name whose token this is, or None. Compares with every token in constant time, so how
        long it takes does not say which token (or how much of one) matched."""
        with self._lock:
            tokens = self._tokens
        offered = token.encode()
        found = None
        for known, name in tokens.items():
            if hmac.compare_digest(offered, known.encode()):
                found = name
        return found


def parse_restricted_header(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--grpc-restricted-protocol=model-repository:KEY=VALUE`` -> (key, value)."""
    key, equals, value = text.partition("=")
    key = key.strip().lower()  # gRPC metadata keys arrive lower-cased
    if not equals or not key or not value:
        raise ValueError(f"{text!r} is not KEY=VALUE")
    return key, value


@dataclass(frozen=True, slots=True)
class Presented:
    """What a call carries: its ``authorization`` value, the restricted-protocol header's value,
    the subject of a client certificate the control CA verified, and the peer's host."""

    authorization: str | None = None
    restricted_header: str | None = None
    certificate_subject: str | None = None
    peer_host: str = ""


class ControlAccess:
    """Decides whether a control call is admitted, and as whom."""

    def __init__(
        self,
        tokens: ControlTokens | None,
        *,
        certificates: bool = False,
        restricted_header: tuple[str, str] | None = None,
        open_locally: bool = False,
    ) -> None:
        """``certificates``: the control listener verifies client certificates (a subject admits);
        ``open_locally``: nothing is configured and the control address is loopback."""
        self.tokens = tokens
        self.certificates = certificates
        self.restricted_header = restricted_header
        self.open_locally = open_locally

    @property
    def header_key(self) -> str | None:
        return self.restricted_header[0] if self.restricted_header is not None else None

    def admit(self, presented: Presented, *, repository: bool, control_listener: bool) -> str:
        """The actor of an admitted call; raises :class:`Refused` otherwise.

        ``repository``: a model-repository call (the restricted header counts); ``control_listener``:
        the call came to the control address (a certificate counts, and a loopback control plane with
        nothing configured is open) rather than the inference port.
        """
        if control_listener and presented.certificate_subject and self.certificates:
            return presented.certificate_subject
        if control_listener and self.open_locally:  # nothing configured: whatever the call carries
            return f"local:{presented.peer_host or 'unknown'}"
        header_ok = self._header_matches(presented) if repository else None
        if header_ok:
            return f"restricted-protocol:{self.header_key}"
        if presented.authorization is not None:
            return self._bearer(presented.authorization)
        if header_ok is False:
            raise Refused(Refusal(WRONG_HEADER, f"the {self.header_key} header's value is wrong", True))
        if not self._configured(repository):
            elsewhere = "; the control address, open to local callers, serves it" if self.open_locally else ""
            message = (
                "no control credentials are configured that could allow this here (--control-tokens-file, or"
                f" --grpc-restricted-protocol=model-repository:KEY=VALUE){elsewhere}"
            )
            raise Refused(Refusal(NOT_CONFIGURED, message, False))
        raise Refused(Refusal(NO_CREDENTIALS, self._what_is_needed(repository, control_listener), False))

    def _header_matches(self, presented: Presented) -> bool | None:
        """None: no restricted header configured, or the call carries none; else whether it matches."""
        if self.restricted_header is None or presented.restricted_header is None:
            return None
        return hmac.compare_digest(presented.restricted_header.encode(), self.restricted_header[1].encode())

    def _bearer(self, authorization: str) -> str:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != BEARER or not token.strip():
            raise Refused(Refusal(MALFORMED, "the authorization header is not 'Bearer <token>'", False))
        name = self.tokens.name_of(token.strip()) if self.tokens is not None else None
        if name is None:
            raise Refused(Refusal(WRONG_TOKEN, "the bearer token is not one of the control tokens", True))
        return name

    def _configured(self, repository: bool) -> bool:
        return self.tokens is not None or self.certificates or (repository and self.restricted_header is not None)

    def _what_is_needed(self, repository: bool, control_listener: bool) -> str:
        ways = []
        if self.tokens is not None:
            ways.append("an 'authorization: Bearer <token>' header")
        if self.certificates and control_listener:
            ways.append("a client certificate from the control CA")
        if repository and self.restricted_header is not None:
            ways.append(f"the {self.restricted_header[0]} header")
        return "this call needs control credentials: " + (" or ".join(ways) or "none accepted here")
