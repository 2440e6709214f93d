"""The MAC over what the API writes (crypton/signing.py)."""

from __future__ import annotations

import pytest

from crypton import signing

SECRET = b"a-secret-the-api-and-the-dataflow-share"
TOPIC = "crypton.wallet.inbox"


def test_the_mac_covers_topic_key_and_value() -> None:
    mac = signing.mac(SECRET, TOPIC, b"alice", b'{"msg":"credit"}')
    assert signing.verify(SECRET, TOPIC, b"alice", b'{"msg":"credit"}', [(signing.HEADER, mac)])
    assert signing.verify(SECRET, TOPIC, b"alice", b'{"msg":"credit"}', {signing.HEADER: mac})
    for topic, key, value in [
        ("crypton.users", b"alice", b'{"msg":"credit"}'),
        (TOPIC, b"bob", b'{"msg":"credit"}'),
        (TOPIC, b"alice", b'{"msg":"debit"}'),
    ]:
        assert not signing.verify(SECRET, topic, key, value, [(signing.HEADER, mac)])
    # Length-prefixed parts: moving bytes from the key to the value changes the MAC.
    assert signing.mac(SECRET, TOPIC, b"ab", b"c") != signing.mac(SECRET, TOPIC, b"a", b"bc")
    assert not signing.verify(b"another-secret", TOPIC, b"alice", b"{}", [(signing.HEADER, mac)])


@pytest.mark.parametrize("headers", [None, [], [("other", b"x")], [(signing.HEADER, None)]])
def test_a_record_without_the_mac_is_unsigned(headers: signing.Headers) -> None:
    assert not signing.verify(SECRET, TOPIC, b"alice", b"{}", headers)


def test_required_only_with_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(signing.ENV, raising=False)
    assert signing.required_secret() is None
    monkeypatch.setenv(signing.ENV, "s3cret-of-sixteen+")
    assert signing.required_secret() == b"s3cret-of-sixteen+"
