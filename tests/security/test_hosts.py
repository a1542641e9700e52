"""DNS rebinding: a server bound to loopback answers only to loopback host names."""

from __future__ import annotations

import pytest

from modelhost.http.hosts import allowed_names, host_name

from ..support import serve_in_process


@pytest.fixture(scope="module")
def named(rgb_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hosts")
    server = serve_in_process([str(rgb_repo), "--allowed-hosts", "models.example.com"], tmp)
    yield server
    assert server.stop() == 0


def status_for(server, host: str) -> int:
    return server.client.get("/api/models", headers={"Host": host}).status_code


def test_a_rebinding_host_name_is_refused(repo_server):
    port = repo_server.url.rsplit(":", 1)[1]
    response = repo_server.client.get("/api/models", headers={"Host": f"evil.example:{port}"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_request"
    assert "evil" not in response.text  # nothing reflected
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert status_for(repo_server, host) == 200, host


def test_listed_names_are_answered(named):
    assert status_for(named, "models.example.com") == 200
    assert status_for(named, "models.example.com:443") == 200
    assert status_for(named, "127.0.0.1") == 200
    assert status_for(named, "other.example.com") == 400


@pytest.mark.parametrize("bind, given, expected", [
    ("127.0.0.1", "", {"localhost", "127.0.0.1", "::1"}),
    ("::1", "", {"localhost", "127.0.0.1", "::1"}),
    ("0.0.0.0", "", None),
    ("10.0.0.5", "", None),
    ("0.0.0.0", "a.example, B.example", {"a.example", "b.example", "localhost", "127.0.0.1",
                                         "::1"}),
    ("127.0.0.1", "*", None),
])
def test_allowed_names(bind, given, expected):
    names = allowed_names(bind, given)
    assert (None if names is None else set(names)) == expected


@pytest.mark.parametrize("value, name", [("a.example:80", "a.example"), ("[::1]:8000", "::1"),
                                         ("[::1]", "::1"), ("A.Example", "a.example"),
                                         ("::1", "::1")])
def test_host_name(value, name):
    assert host_name(value) == name
