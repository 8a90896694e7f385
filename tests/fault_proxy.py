"""A small HTTP proxy in front of the moto S3 server that injects faults on request:
5xx answers, dropped connections, bodies cut short, slow answers, or failures of chosen
request kinds."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.split("://", 1)[1].partition(":")
        self.upstream = (host, int(port))
        self.fail_next = 0  # answer the next N requests with 503
        self.drop_next = 0  # close the connection on the next N requests
        self.fail_always = False
        self.fail_when: str | None = None  # a substring of the path+query, e.g. "partNumber="
        self.cut_when: str | None = None  # GETs whose path has this: half the body, then close
        self.cut_next = 0  # cut only the next N of those (0: every one)
        self.delay = 0.0
        self.seen: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.seen.append(f"{self.command} {self.path}")
                    if proxy.drop_next:
                        proxy.drop_next -= 1
                        self.close_connection = True
                        self.connection.close()
                        return
                    fail = proxy.fail_always or (
                        proxy.fail_when is not None and proxy.fail_when in self.path
                    )
                    if proxy.fail_next:
                        proxy.fail_next -= 1
                        fail = True
                    cut = self.command == "GET" and bool(proxy.cut_when)
                    cut = cut and proxy.cut_when in self.path
                    if cut and proxy.cut_next:
                        proxy.cut_next -= 1
                        proxy.cut_when = proxy.cut_when if proxy.cut_next else None
                if proxy.delay:
                    time.sleep(proxy.delay)
                if fail:
                    payload = b"<Error><Code>ServiceUnavailable</Code></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"{proxy.upstream[0]}:{proxy.upstream[1]}"
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                head = self.command == "HEAD"  # keeps the object's length, sends no body
                for key, value in answer.getheaders():
                    dropped = ("transfer-encoding", "connection") + (
                        () if head else ("content-length",)
                    )
                    if key.lower() not in dropped:
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if cut:  # the promised length, half of it sent: a connection lost mid-body
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.close()
                elif self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
