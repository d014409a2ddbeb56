"""A real local HTTP server that speaks enough of the OpenAI chat API to test vlselect.llm with the real client.

``FakeOpenAI`` listens on 127.0.0.1 (port 0: the OS picks one) in a background thread and answers
``POST /v1/chat/completions``. What it answers is scripted per request by ``responder(prompt, n)``, where ``prompt``
is the text of the user messages (joined by newlines, so a follow-up carries the question it follows) and ``n`` how
many times this prompt was seen before (0 on the first request); it returns an action dict:

* ``{"text": "Score: 80"}``: a normal completion (usage counts ~4 characters per token);
* ``{"status": 429, "retry_after": 1.0}``: rate limited; a retry of the same prompt that comes back before
  ``retry_after`` seconds is answered 429 again and counted in ``early_retries``;
* ``{"status": 500}``: a server error whose body echoes the request's Authorization header (to prove the client
  scrubs the key from error texts);
* ``{"delay": 5.0, "text": ...}``: reply after a delay (beyond the client's timeout);
* ``{"malformed": True}``: HTTP 200 with a body that is not JSON;
* ``{"no_content": True}``: HTTP 200 JSON completion without message content.

``latency`` delays every reply. ``counts`` maps prompt -> requests received; ``stop()`` closes the socket, after
which connections are refused. Requests without ``Authorization: Bearer <api_key>`` get 401. ``formats`` lists the
``response_format`` type of every request in arrival order ("text" without one); a request whose type is in
``refuse_formats`` gets 400, as from an endpoint without that structured-output mode.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class FakeOpenAI:
    def __init__(self, responder: Callable[[str, int], dict] | None = None, latency: float = 0.0,
                 api_key: str | None = None, refuse_formats: tuple[str, ...] = ()):
        self.responder = responder or (lambda prompt, n: {"text": "Score: 50"})
        self.latency = latency
        self.api_key = api_key
        self.refuse_formats = set(refuse_formats)
        self.formats: list[str] = []
        self.counts: dict[str, int] = {}
        self.early_retries = 0
        self.image_urls: dict[str, list[str]] = {}  # prompt -> image data URLs sent with it
        self.max_in_flight = 0
        self._in_flight = 0
        self._rate_limited_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def start(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------------------
    def _handle(self, headers, body: bytes) -> tuple[int, dict, bytes]:
        """Decide the reply: (status, extra headers, body)."""
        auth = headers.get("Authorization", "")
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return 401, {}, json.dumps({"error": {"message": "invalid api key", "type": "auth"}}).encode()
        request = json.loads(body)
        kind = (request.get("response_format") or {}).get("type", "text")
        with self._lock:
            self.formats.append(kind)
        if kind in self.refuse_formats:
            return 400, {}, _error(f"response_format of type {kind!r} is not supported by this model")
        prompt = _user_text(request["messages"])
        now = time.monotonic()
        with self._lock:
            self.image_urls[prompt] = _image_urls(request["messages"])
            n = self.counts.get(prompt, 0)
            self.counts[prompt] = n + 1
            until = self._rate_limited_until.get(prompt)
            if until is not None and now < until:
                self.early_retries += 1
                return 429, {"Retry-After": f"{until - now:.3f}"}, _error("retried too early")
        action = self.responder(prompt, n)
        delay = self.latency + action.get("delay", 0.0)
        if delay:
            time.sleep(delay)
        status = action.get("status", 200)
        if status == 429:
            with self._lock:
                self._rate_limited_until[prompt] = time.monotonic() + action["retry_after"]
            return 429, {"Retry-After": str(action["retry_after"])}, _error("rate limited")
        if status >= 500:
            return status, {}, _error(f"internal error while serving request with Authorization={auth}")
        if action.get("malformed"):
            return 200, {}, b"{this is not json <html>"
        text = action.get("text")
        message = {"role": "assistant"} if action.get("no_content") else {"role": "assistant", "content": text}
        n_in = sum(len(p) for p in _all_text(request["messages"])) // 4
        n_out = len(text or "") // 4 + 1
        reply = {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                 "model": request.get("model", "fake"),
                 "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}
        return 200, {}, json.dumps(reply).encode()

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    status, extra, payload = 404, {}, _error(f"no route {self.path}")
                else:
                    with fake._lock:
                        fake._in_flight += 1
                        fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
                    try:
                        status, extra, payload = fake._handle(self.headers, body)
                    finally:
                        with fake._lock:
                            fake._in_flight -= 1
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout); nothing to do
                    pass

            def log_message(self, *args):  # keep test output quiet
                pass

        return Handler


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "server_error"}}).encode()


def _all_text(messages: list[dict]) -> list[str]:
    out = []
    for m in messages:
        content = m["content"]
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        out += [p["text"] for p in parts if p.get("type") == "text"]
    return out


def _user_text(messages: list[dict]) -> str:
    return "\n".join(_all_text([m for m in messages if m["role"] == "user"]))


def _image_urls(messages: list[dict]) -> list[str]:
    return [p["image_url"]["url"] for m in messages if isinstance(m["content"], list)
            for p in m["content"] if p.get("type") == "image_url"]
