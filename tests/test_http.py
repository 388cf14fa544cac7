"""Token endpoints and /healthz: every bad body is a JSON 4xx, never a 500."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

pytestmark = pytest.mark.django_db(transaction=True)


def post(client: Client, url: str, body, content_type: str = "application/json"):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(url, data=data, content_type=content_type)


@pytest.fixture
def http() -> Client:
    return Client()


def obtain(http, username="alice", password="pw-alice"):
    return post(http, "/api/token/", {"username": username, "password": password})


def test_obtain_returns_an_access_and_a_refresh_token(alice, http):
    response = obtain(http)
    assert response.status_code == 200
    body = response.json()
    assert AccessToken(body["access"])["user_id"] == str(alice.pk)
    assert RefreshToken(body["refresh"])["user_id"] == str(alice.pk)


@pytest.mark.parametrize(
    ("username", "password"), [("alice", "wrong"), ("nobody", "pw-alice"), ("alice", "")]
)
def test_obtain_with_wrong_credentials_is_a_json_401_or_400(alice, http, username, password):
    response = obtain(http, username, password)
    assert response.status_code in (400, 401)
    assert response.status_code == (400 if password == "" else 401)
    assert response.json()["detail" if response.status_code == 401 else "password"]


def test_obtain_for_an_inactive_user_is_401(alice, http):
    alice.is_active = False
    alice.save()
    assert obtain(http).status_code == 401


BAD_BODIES = [
    "",
    "{",
    "null",
    "[]",
    '"text"',
    "{}",
    '{"username": "alice"}',
    '{"username": {"a": 1}, "password": "x"}',
    '{"username": ["alice"], "password": ["x"]}',
    "\xff\xfe",
]


@pytest.mark.parametrize("body", BAD_BODIES)
@pytest.mark.parametrize("url", ["/api/token/", "/api/token/refresh/", "/api/token/blacklist/"])
def test_bad_bodies_are_json_4xx(alice, http, url, body):
    response = post(http, url, body)
    assert 400 <= response.status_code < 500, response.content
    assert isinstance(response.json(), dict)


@pytest.mark.parametrize("url", ["/api/token/", "/api/token/refresh/", "/api/token/blacklist/"])
def test_a_form_body_is_refused_with_json(alice, http, url):
    response = http.post(url, data={"username": "alice", "password": "pw-alice"})
    assert response.status_code == 415
    assert response.json()["detail"]


@pytest.mark.parametrize("url", ["/api/token/", "/api/token/refresh/", "/api/token/blacklist/"])
def test_get_on_a_token_endpoint_is_405_json(http, url, transactional_db):
    response = http.get(url)
    assert response.status_code == 405
    assert response.json()["detail"]


def test_refresh_rotates_and_blacklists_the_old_refresh_token(alice, http):
    old = obtain(http).json()["refresh"]
    response = post(http, "/api/token/refresh/", {"refresh": old})
    assert response.status_code == 200
    body = response.json()
    assert body["refresh"] != old
    assert AccessToken(body["access"])["user_id"] == str(alice.pk)
    reused = post(http, "/api/token/refresh/", {"refresh": old})
    assert reused.status_code == 401
    assert reused.json()["detail"]


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "1"])
def test_refresh_with_an_invalid_token_is_401(alice, http, token):
    response = post(http, "/api/token/refresh/", {"refresh": token})
    assert response.status_code == 401
    assert response.json()["code"] == "token_not_valid"


def test_refresh_with_an_access_token_is_401(alice, http):
    access = obtain(http).json()["access"]
    assert post(http, "/api/token/refresh/", {"refresh": access}).status_code == 401


def test_refresh_of_a_deleted_user_is_401_not_500(alice, http):
    refresh = obtain(http).json()["refresh"]
    alice.delete()
    response = post(http, "/api/token/refresh/", {"refresh": refresh})
    assert response.status_code == 401
    assert response.json()["code"] == "user_not_found"


def test_refresh_of_an_inactive_user_is_401(alice, http):
    refresh = obtain(http).json()["refresh"]
    alice.is_active = False
    alice.save()
    response = post(http, "/api/token/refresh/", {"refresh": refresh})
    assert response.status_code == 401
    assert response.json()["code"] == "user_inactive"


def test_blacklist_stops_that_refresh_token(alice, http):
    refresh = obtain(http).json()["refresh"]
    response = post(http, "/api/token/blacklist/", {"refresh": refresh})
    assert response.status_code == 200
    assert response.json() == {}
    assert post(http, "/api/token/refresh/", {"refresh": refresh}).status_code == 401
    assert post(http, "/api/token/blacklist/", {"refresh": refresh}).status_code == 401


def test_healthz_says_200_when_the_database_and_layer_answer(http, transactional_db):
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "channel_layer": "ok"}


def test_an_unknown_api_path_is_a_json_404(http, transactional_db):
    response = http.get("/api/nothing/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_the_page_is_served(http, transactional_db):
    response = http.get("/")
    assert response.status_code == 200
    assert b"client.js" in response.content or b"app.js" in response.content
