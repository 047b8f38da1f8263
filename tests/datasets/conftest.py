"""Fixtures of the data set tests: an isolated cache, a local HTTP server, the real-data cache."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
from dataset_helpers import Server, closed_port

from jaxnet.datasets import cifar10, mnist


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test gets its own cache, no data root, and mirrors that refuse connections."""
    monkeypatch.setenv("JAXNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXNET_DATA", raising=False)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    dead = f"http://127.0.0.1:{closed_port()}/"
    monkeypatch.setattr(mnist, "MIRRORS", (dead,))
    monkeypatch.setattr(cifar10, "MIRRORS", (dead,))
    return tmp_path


@pytest.fixture
def server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www; /cut/<name> sends half a file."""
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append(self.path)
            if self.path.startswith("/cut/"):
                body = (root / self.path.removeprefix("/cut/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield Server(url=f"http://127.0.0.1:{httpd.server_port}/", root=root, hits=hits)
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    """One cache for all real-data tests, so each file's md5 is computed once."""
    return tmp_path_factory.mktemp("real-cache")
