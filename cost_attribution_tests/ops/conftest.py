"""Loopback sinks for the alert channels: a Slack-like webhook receiver and a minimal
SMTP server. Both bind 127.0.0.1 on a random port and record what they receive."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class WebhookSink:
    def __init__(self):
        self.posts: list[dict] = []
        self.fail_next = 0  # answer HTTP 500 to this many requests (delivery retry tests)
        self.fail_containing = ""  # answer HTTP 500 to posts whose text contains this
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                failing = sink.fail_containing and sink.fail_containing in json.loads(body).get("text", "")
                if sink.fail_next or failing:
                    sink.fail_next = max(sink.fail_next - 1, 0)
                    self.send_response(500)
                    self.end_headers()
                    return
                sink.posts.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/XXXX"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class SmtpSink:
    """Enough of RFC 5321 for smtplib.send_message: EHLO/HELO, MAIL, RCPT, DATA, QUIT."""

    def __init__(self):
        self.messages: list[dict] = []
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str):
                self.wfile.write((line + "\r\n").encode())

            def handle(self):
                self.reply("220 sink ESMTP")
                envelope = {"from": None, "to": [], "data": ""}
                while True:
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    command = raw.decode(errors="replace").strip()
                    verb = command.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        self.wfile.write(b"250-sink\r\n250 8BITMIME\r\n")
                    elif verb == "HELO" or verb in ("NOOP", "RSET"):
                        self.reply("250 ok")
                    elif verb == "MAIL":
                        envelope["from"] = command.split(":", 1)[1].strip()
                        self.reply("250 ok")
                    elif verb == "RCPT":
                        envelope["to"].append(command.split(":", 1)[1].strip())
                        self.reply("250 ok")
                    elif verb == "DATA":
                        self.reply("354 end with <CRLF>.<CRLF>")
                        lines = []
                        while (line := self.rfile.readline()) not in (b".\r\n", b""):
                            lines.append(line.decode(errors="replace"))
                        sink.messages.append({**envelope, "data": "".join(lines)})
                        envelope = {"from": None, "to": [], "data": ""}
                        self.reply("250 queued")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("502 not implemented")

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.host, self.port = self.server.server_address
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_sink():
    sink = WebhookSink()
    yield sink
    sink.close()


@pytest.fixture
def smtp_sink():
    sink = SmtpSink()
    yield sink
    sink.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
