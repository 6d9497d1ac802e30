"""[http] document_root: what is served and what is refused (real files in a temporary directory)."""

from __future__ import annotations

import os

import pytest

from sipws.transport.static_files import MAX_FILE_SIZE, StaticFiles


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_text("<h1>phone</h1>")
    (root / "js" / "phone.js").write_text("export const x = 1;")
    (root / ".env").write_text("SECRET=1")
    (root / "js" / "index.html").write_text("js index")
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", root / "escape.txt")
    os.symlink(root / "js" / "phone.js", root / "inside.js")
    return StaticFiles(str(root))


def status_and_body(answer):
    head, _, body = answer.data.partition(b"\r\n\r\n")
    return answer.status, head.decode(), body


def test_root_serves_index_with_type_and_no_cache(site):
    status, head, body = status_and_body(site.respond("GET", "/?user=alice"))
    assert status == 200 and body == b"<h1>phone</h1>"
    assert "Content-Type: text/html; charset=utf-8" in head and "Content-Length: 14" in head
    assert "Cache-Control: no-cache" in head and "X-Content-Type-Options: nosniff" in head


def test_es_module_gets_a_javascript_type(site):
    status, head, body = status_and_body(site.respond("GET", "/js/phone.js"))
    assert status == 200 and "Content-Type: text/javascript" in head and body.startswith(b"export")


def test_head_has_headers_and_no_body(site):
    status, head, body = status_and_body(site.respond("HEAD", "/js/phone.js"))
    assert status == 200 and "Content-Length: 19" in head and body == b""


def test_directory_serves_its_index(site):
    assert status_and_body(site.respond("GET", "/js/"))[2] == b"js index"


@pytest.mark.parametrize("target", [
    "/../secret.txt", "/js/../../secret.txt", "/%2e%2e/secret.txt", "/js/%2E%2E/%2e%2e/secret.txt",
    "/.env", "/%2eenv", "/js/..%2f..%2fsecret.txt", "/escape.txt", "/a\\..\\secret.txt", "/x%00.html",
])
def test_traversal_dotfiles_and_escaping_symlinks_are_refused(site, target):
    answer = site.respond("GET", target)
    assert answer.status in (403, 404), (target, answer)
    assert b"outside" not in answer.data and b"SECRET" not in answer.data


def test_symlink_inside_the_root_is_served(site):
    assert site.respond("GET", "/inside.js").status == 200


def test_missing_file_bad_encoding_and_methods(site):
    assert site.respond("GET", "/nope.html").status == 404
    assert site.respond("GET", "/%ff%fe").status == 404
    assert site.respond("GET", "http://evil/index.html").status == 404
    post = site.respond("POST", "/")
    assert post.status == 405 and b"Allow: GET, HEAD" in post.data


def test_file_over_the_limit_is_refused(site, tmp_path):
    big = tmp_path / "site" / "big.bin"
    big.write_bytes(b"\0" * (MAX_FILE_SIZE + 1))
    answer = site.respond("GET", "/big.bin")
    assert answer.status == 413 and len(answer.data) < 1000
