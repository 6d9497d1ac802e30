"""[http] document_root on a real ws listener: plain GETs get files, upgrades stay WebSocket."""

from __future__ import annotations

import http.client

import pytest
import pytest_twisted

from sipws.config import ConfigError, config_from_dict
from tests.integration.conftest import in_thread, port_of, wait_for
from tests.integration.wsclient import RawWs


def fetch(port: int, path: str, method: str = "GET"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest_twisted.inlineCallbacks
def test_page_and_websocket_share_the_listener(sipws_factory, sipws_log, tmp_path):
    (tmp_path / "index.html").write_text("<title>phone</title>")
    root = sipws_factory({"http": {"document_root": str(tmp_path)}})
    port = port_of(root)
    status, headers, body = yield in_thread(fetch, port, "/?user=alice")
    assert (status, body) == (200, b"<title>phone</title>")
    assert headers["Content-Type"].startswith("text/html")
    status, _, body = yield in_thread(fetch, port, "/../../etc/passwd")
    assert status in (403, 404) and b"root:" not in body

    def upgrade():
        client = RawWs(port)
        try:
            return client.request()[0]
        finally:
            client.shutdown()

    assert (yield in_thread(upgrade)) == 101  # the same path with Upgrade is a WebSocket handshake
    yield wait_for(lambda: len(root.connections) == 0)
    served = [line for line in sipws_log if "reason=HTTP GET /: 200 index.html" in line]
    assert len(served) == 1, sipws_log
    assert root.stats.get("http.static_200") == 1 and root.stats.get("http.static_403") + \
        root.stats.get("http.static_404") == 1
    assert not root.stats.get("ws.handshakes_failed")


@pytest_twisted.inlineCallbacks
def test_without_document_root_a_plain_get_is_refused_as_before(sipws_factory):
    root = sipws_factory()
    status, _, body = yield in_thread(fetch, port_of(root), "/")
    assert status == 400 and body == b""  # no Upgrade: not a WebSocket handshake


def test_document_root_must_be_a_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"\[http\] document_root: .* is not a directory"):
        config_from_dict({"http": {"document_root": str(tmp_path / "missing")}})
