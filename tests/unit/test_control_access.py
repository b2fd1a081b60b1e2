"""Who may change routing: the tokens file, the constant-time check, and each way a call is admitted
or refused (no sockets; the edge's part is tested against a live gateway)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.edge.control_gate import peer_host
from gateway.errors import PermissionDenied, Unauthenticated
from gateway.rollouts.control_access import (
    NO_CREDENTIALS,
    NOT_CONFIGURED,
    WRONG_HEADER,
    WRONG_TOKEN,
    ControlAccess,
    ControlTokens,
    Presented,
    Refused,
    TokensFileInvalid,
    parse_restricted_header,
    parse_tokens,
)
from gateway.rollouts.control_refusals import RefusedCalls
from gateway.settings import is_loopback_address, load_settings
from gateway.state.sqlite_store import SqliteStateStore

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"


def tokens_file(tmp_path: Path, text: str) -> ControlTokens:
    path = tmp_path / "tokens"
    path.write_text(text)
    return ControlTokens(path)


def refusal(access: ControlAccess, presented: Presented, *, repository: bool = False, control: bool = True) -> Refused:
    with pytest.raises(Refused) as refused:
        access.admit(presented, repository=repository, control_listener=control)
    return refused.value


def test_tokens_are_name_token_lines_with_comments_and_blank_lines() -> None:
    text = f"# operators\n\nalice {ALICE}\n  bob\t{BOB}   # on call\n"
    assert parse_tokens(text, "tokens") == {ALICE: "alice", BOB: "bob"}


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        (f"alice {ALICE} extra\n", "expected 'name token'"),
        ("alice\n", "expected 'name token'"),
        ("alice short\n", "shorter than 16"),
        (f"alice {ALICE}\nalice {BOB}\n", "given twice"),
        (f"alice {ALICE}\nbob {ALICE}\n", "also 'alice'"),
    ],
)
def test_a_malformed_tokens_file_names_the_line(text: str, fault: str) -> None:
    with pytest.raises(TokensFileInvalid, match=fault) as error:
        parse_tokens(text, "tokens")
    assert "tokens line" in str(error.value)


def test_a_token_names_its_holder_and_a_reload_revokes(tmp_path: Path) -> None:
    tokens = tokens_file(tmp_path, f"alice {ALICE}\nbob {BOB}\n")
    assert (tokens.name_of(ALICE), tokens.name_of(BOB), tokens.name_of(ALICE[:-1]), tokens.name_of("")) == (
        "alice", "bob", None, None
    )  # fmt: skip
    tokens.path.write_text(f"bob {BOB}\n")
    assert tokens.reload() == 1
    assert tokens.name_of(ALICE) is None and tokens.name_of(BOB) == "bob"


def test_a_tokens_file_broken_on_reload_admits_nobody_until_fixed(tmp_path: Path) -> None:
    tokens = tokens_file(tmp_path, f"bob {BOB}\n")
    tokens.path.write_text("bob\n")
    with pytest.raises(TokensFileInvalid):
        tokens.reload()
    assert tokens.name_of(BOB) is None, "the old tokens must not outlive a revocation that went wrong"
    tokens.path.write_text(f"bob {BOB}\n")
    tokens.reload()
    assert tokens.name_of(BOB) == "bob"


def test_a_missing_tokens_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(TokensFileInvalid, match="cannot read"):
        ControlTokens(tmp_path / "absent")


def test_a_bearer_token_admits_as_its_name_and_a_wrong_one_is_permission_denied(tmp_path: Path) -> None:
    access = ControlAccess(tokens_file(tmp_path, f"alice {ALICE}\n"))
    for control in (True, False):
        assert access.admit(Presented(f"Bearer {ALICE}"), repository=True, control_listener=control) == "alice"
    assert access.admit(Presented(f"bearer  {ALICE} "), repository=False, control_listener=True) == "alice"
    wrong = refusal(access, Presented(f"Bearer {BOB}"))
    assert wrong.refusal.reason == WRONG_TOKEN and isinstance(wrong.refusal.error(), PermissionDenied)
    assert BOB not in wrong.refusal.message, "the token offered is never echoed"
    none = refusal(access, Presented(peer_host="127.0.0.1"))
    assert none.refusal.reason == NO_CREDENTIALS and isinstance(none.refusal.error(), Unauthenticated)
    assert "Bearer" in none.refusal.message
    malformed = refusal(access, Presented(f"Basic {ALICE}"))
    assert isinstance(malformed.refusal.error(), Unauthenticated)


def test_a_loopback_control_plane_without_credentials_admits_local_callers_by_host() -> None:
    access = ControlAccess(None, open_locally=True)
    assert access.admit(Presented(peer_host="127.0.0.1"), repository=False, control_listener=True) == "local:127.0.0.1"
    carrying = Presented("Bearer anything", peer_host="::1")
    assert access.admit(carrying, repository=True, control_listener=True) == "local:::1", "a token changes nothing"
    # The inference port may face a network (or a proxy on this host): loads there need real credentials.
    refused = refusal(access, Presented(peer_host="127.0.0.1"), repository=True, control=False)
    assert refused.refusal.reason == NOT_CONFIGURED and isinstance(refused.refusal.error(), Unauthenticated)
    assert "the control address, open to local callers, serves it" in refused.refusal.message


@pytest.mark.parametrize(
    ("peer", "host"),
    [("ipv4:127.0.0.1:50312", "127.0.0.1"), ("ipv6:[::1]:50312", "::1"), ("unix:/tmp/socket", "unix"), ("", "unknown")],
)
def test_the_peer_host_is_the_address_without_its_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_the_restricted_protocol_header_admits_model_repository_calls_only(tmp_path: Path) -> None:
    header = parse_restricted_header("X-Repo-Key=s3cret")
    assert header == ("x-repo-key", "s3cret")
    access = ControlAccess(tokens_file(tmp_path, f"alice {ALICE}\n"), restricted_header=header)
    right = Presented(restricted_header="s3cret")
    assert access.admit(right, repository=True, control_listener=False) == "restricted-protocol:x-repo-key"
    assert refusal(access, right, repository=False).refusal.reason == NO_CREDENTIALS, "not for Rollouts"
    wrong = refusal(access, Presented(restricted_header="guess"), repository=True, control=False)
    assert wrong.refusal.reason == WRONG_HEADER and isinstance(wrong.refusal.error(), PermissionDenied)
    # A token still works for a load, as an alternative to the header.
    assert access.admit(Presented(f"Bearer {ALICE}"), repository=True, control_listener=False) == "alice"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_restricted_header("no-equals")


def test_a_certificate_subject_is_the_actor_on_the_control_listener_only() -> None:
    access = ControlAccess(None, certificates=True)
    subject = Presented(certificate_subject="CN=deployer,O=Example")
    assert access.admit(subject, repository=False, control_listener=True) == "CN=deployer,O=Example"
    assert refusal(access, subject, repository=True, control=False).refusal.reason == NO_CREDENTIALS


def test_refused_calls_are_history_rows_without_the_token_and_are_counted(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path)
    try:
        refused = RefusedCalls(store)
        access = ControlAccess(tokens_file(tmp_path, f"alice {ALICE}\n"))
        wrong = refusal(access, Presented(f"Bearer {BOB}")).refusal
        refused.record("digits", "SetCanary", 'SetCanary {model: "digits" version: 2}', wrong)
        refused.record("digits", "SetCanary", "SetCanary {}", refusal(access, Presented()).refusal)
        refused.record("x" * 10_000, "Rollback", "Rollback {}" + "y" * 10_000, wrong)
        rows = store.refused("digits", 10)
        assert [(row.actor, row.action) for row in rows] == [("unknown", "SetCanary")] * 2
        assert "version: 2" in rows[1].detail and "not one of the control tokens" in rows[1].detail
        assert all(BOB not in row.detail for row in rows)
        assert refused.counts() == {("SetCanary", WRONG_TOKEN): 1, ("SetCanary", NO_CREDENTIALS): 1,
                                    ("Rollback", WRONG_TOKEN): 1}  # fmt: skip
        long_row = store.refused("x" * 64 + "... (10000 characters)", 1)[0]
        assert len(long_row.detail) < 1_000, "a caller's request is cut, not kept whole"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1:8003", True), ("localhost:0", True), ("[::1]:8003", True), ("127.5.0.1:1", True),
     ("0.0.0.0:8003", False), ("10.0.0.5:8003", False), ("[::]:8003", False), ("control.internal:8003", False)],
)  # fmt: skip
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback_address(address) is loopback


def test_a_control_address_off_loopback_needs_credentials(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not loopback.*--control-tokens-file"):
        load_settings(None, {"control_address": "0.0.0.0:8003"})
    tokens = tmp_path / "tokens"
    assert load_settings(None, {"control_address": "0.0.0.0:8003", "control_tokens_file": tokens}).control_tokens_file
    with pytest.raises(ValueError, match="HOST:PORT"):
        load_settings(None, {"control_address": "8003"})
    with pytest.raises(ValueError, match="needs TLS"):
        load_settings(None, {"control_client_ca_file": tmp_path / "ca.pem"})


def test_a_flood_of_refused_calls_is_counted_whole_but_kept_at_a_bounded_rate(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path)
    try:
        refused = RefusedCalls(store, per_s=5.0)
        nothing = refusal(ControlAccess(tokens_file(tmp_path, f"alice {ALICE}\n")), Presented()).refusal
        for _ in range(1_000):  # far faster than five a second
            refused.record("digits", "Rollback", "Rollback {}", nothing)
        assert refused.counts() == {("Rollback", NO_CREDENTIALS): 1_000}
        kept = len(store.refused("digits", 10_000))
        assert 5 <= kept <= 7, "a burst of the rate, and what refilled while the loop ran"
    finally:
        store.close()
