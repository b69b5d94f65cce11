"""Remote reads under a deadline and a size cap (mmm4rec.data.remote): a trickling server (a byte a second, so
the per-read timeout never fires) is cut after Retry.deadline_s, and a body longer than the manifest's size for
the file is not read past it — against real HTTP servers on 127.0.0.1, and a pipe: command."""
from __future__ import annotations

import http.server
import resource
import threading
import time

import pytest

from mmm4rec.data.remote import DatasetSource, Retry
from mmm4rec.data.schema import DataError


class _Hostile(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        if self.path.startswith("/trickle"):
            self.send_header("Content-Length", "51200")
            self.end_headers()
            try:
                for _ in range(51200):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        elif self.path.startswith("/endless"):
            self.end_headers()  # no length: the body ends when the connection does
            try:
                while True:
                    self.wfile.write(b"y" * 65536)
            except OSError:
                pass
        else:
            body = b"z" * 1000
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def source(url: str, **retry) -> DatasetSource:
    return DatasetSource.parse(url, retry=Retry(**{"retries": 0, "backoff_s": 0.01, "timeout_s": 1.0, **retry}))


def test_a_trickling_server_is_cut_at_the_deadline(server):
    started = time.monotonic()
    with pytest.raises(DataError, match=r"/trickle: read .* bytes in \d+ s, slower than 64 KiB/s .*gave up after 1 "
                                        r"attempts"):
        source(server).read("trickle", size=51200)
    assert time.monotonic() - started < 1.0 + 51200 / (64 << 10) + 2  # Retry.deadline_s, not hours


def test_a_body_longer_than_the_manifest_says_is_not_read(server):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match=r"/endless: the body is larger than the 51,200 bytes expected"):
        source(server, timeout_s=30).read("endless", size=51200)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB: nowhere near a GB
    assert source(server).read("fine", size=1000) == b"z" * 1000
    with pytest.raises(DataError, match=r"/fine: the body is larger than the 999 bytes"):
        source(server).read("fine", size=999)


def test_a_pipe_command_is_capped_too(tmp_path):
    pipe = DatasetSource.parse("pipe:yes {name}", allow_pipe=True, retry=Retry(retries=0, timeout_s=5))
    with pytest.raises(DataError, match=r"pipe:yes x: the body is larger than the 10,000 bytes"):
        pipe.read("x", size=10_000)
    (tmp_path / "f").write_bytes(b"abc")
    cat = DatasetSource.parse(f"pipe:cat {tmp_path}/{{name}}", allow_pipe=True)
    assert cat.read("f", size=3) == b"abc"
    with pytest.raises(DataError, match="exited with status 1"):
        cat.read("missing", size=3)
