"""The Origin rule at the handshake (PROTOCOL.md rule 12)."""

from __future__ import annotations

import pytest

from identity.origins import origin_allowed
from tests.conftest import open_client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "origin",
    ["http://localhost", "http://localhost:8000", "https://127.0.0.1:9443", "HTTP://LOCALHOST"],
)
def test_allowed_hosts_match_any_port_over_http_or_https(origin, settings):
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
    assert origin_allowed(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "",
        "http://evil.example",
        "ftp://localhost",
        "http://localhost.evil",
        "garbage",
        "http://localhost:99999",
        "http://",
    ],
)
def test_foreign_null_and_garbage_origins_are_refused(origin, settings):
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
    assert not origin_allowed(origin)


def test_allowed_origins_match_scheme_host_and_port_exactly(settings):
    settings.IDENTITY_ALLOWED_ORIGINS = ["https://app.example.com", "http://localhost:3000"]
    assert origin_allowed("https://app.example.com")
    assert origin_allowed("https://app.example.com:443")
    assert origin_allowed("http://localhost:3000")
    assert not origin_allowed("http://app.example.com")
    assert not origin_allowed("https://app.example.com:8443")
    assert not origin_allowed("http://localhost:8000")


async def test_a_handshake_from_a_foreign_origin_is_refused(settings):
    connected, client = await open_client(headers=[(b"origin", b"http://evil.example")])
    assert not connected
    await client.close()


async def test_a_handshake_with_origin_null_is_refused():
    connected, client = await open_client(headers=[(b"origin", b"null")])
    assert not connected
    await client.close()


async def test_a_handshake_without_origin_is_accepted():
    connected, client = await open_client(headers=[])
    assert connected
    await client.close()


async def test_a_handshake_from_an_allowed_origin_is_accepted():
    connected, client = await open_client(headers=[(b"origin", b"http://localhost:8000")])
    assert connected
    await client.close()
