"""A small OpenAI-compatible server on 127.0.0.1 that fails on purpose (failure injection for synthesis tests).

What it does with a request is decided by `plan(prompt, attempt) -> action`, where `attempt` counts the
requests seen for that prompt. Actions: "ok", "500", "429" (with `Retry-After: 0`), "400", "drop" (close
the connection without an answer), "malformed" (200 with a body that is not JSON), "empty" (200 with no
choices), "slow" (answer after `slow_seconds`, past the client's timeout). The default `failure_plan`
spreads prompts over these by a hash of the prompt, so tests can compute the expected outcome of every
record. Successful answers are a deterministic story built from the quoted words of the prompt (or
`reply(prompt)`), with `finish_reason` `finish(prompt)` ("stop" by default; "length" plays a completion cut off
at `max_tokens`).

Structured output (`response_format` in a chat request), by `response_format=`: "ignore" (answer as usual,
like servers that accept the field and do not enforce it), "reject" (HTTP `reject_status`, 400 or 422, like
servers without structured output) or "honour" (a JSON object of the request's json_schema, values picked
deterministically from the prompt). `formats` counts the requests by the format asked for.

Run by hand: `python tests/fake_openai_server.py --port 8011 --plan failures`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACTIONS = ("ok", "500", "429", "400", "drop", "malformed", "empty", "slow")
RESPONSE_FORMAT_MODES = ("ignore", "reject", "honour")


def bucket(prompt: str, n: int = 10) -> int:
    return int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % n


def failure_plan(prompt: str, attempt: int) -> str:
    """Per prompt: 10% always 500, 10% always 400, the rest fail transiently in one way, then succeed."""
    b = bucket(prompt)
    if b == 0:
        return "500"  # permanent server error: must end up in the failures after all retries
    if b == 1:
        return "400"  # not retryable: must fail at once
    transient = {
        2: ("500", 1),
        3: ("429", 2),
        4: ("drop", 1),
        5: ("malformed", 1),
        6: ("empty", 1),
        7: ("slow", 1),
    }
    if b in transient:
        action, times = transient[b]
        return action if attempt <= times else "ok"
    return "ok"


def expected_outcome(prompt: str) -> str:
    """'failed' or 'generated' for a prompt under `failure_plan` with enough retries (>= 2)."""
    return "failed" if bucket(prompt) in (0, 1) else "generated"


def ok_plan(prompt: str, attempt: int) -> str:
    return "ok"


def fake_story(prompt: str) -> str:
    if prompt.startswith("Summarize"):
        return "A child plays and is happy."
    words = re.findall(r'"([^"]+)"', prompt) or ["thing"]
    body = " ".join(f"The child saw the {w}." for w in words)
    return f"Once upon a time, there was a child. {body}\n\nIn the end, everyone was happy. ({bucket(prompt, 10**6)})"


def schema_answer(schema: dict, prompt: str) -> object:
    """A value of a JSON schema (object / enum / integer / number / string / boolean) chosen from the prompt."""
    if "enum" in schema:
        return schema["enum"][bucket(prompt, 10**6) % len(schema["enum"])]
    kind = schema.get("type")
    if kind == "object":
        return {k: schema_answer(v, f"{prompt}:{k}") for k, v in schema.get("properties", {}).items()}
    return {"integer": 5, "number": 0.5, "boolean": True}.get(kind, "text")


INJECTED = {  # status and body of the failure actions that answer with an HTTP error
    "500": (500, b'{"error":{"message":"injected server error","type":"server_error"}}', {}),
    "429": (429, b'{"error":{"message":"injected rate limit","type":"rate_limit"}}', {"Retry-After": "0"}),
    "400": (400, b'{"error":{"message":"injected bad request","type":"invalid_request"}}', {}),
}


def completion_body(
    payload: dict, prompt: str, text: str, chat: bool, attempt: int, finish_reason: str = "stop"
) -> dict:
    """An OpenAI chat.completion (or legacy text_completion) answering `text`."""
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason,
        }
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason}
    return {
        "id": f"fake-{attempt}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": payload.get("model", "fake"),
        "choices": [choice],
        "usage": {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(text.split()),
            "total_tokens": 0,
        },
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpenAIServer  # set on the subclass each server makes

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None):
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            self.close_connection = True

    def do_GET(self):
        if self.path.rstrip("/") in ("/health", "/v1/health"):
            self._send(200, b'{"status":"ok"}')
        elif self.path.rstrip("/") == "/v1/models":
            models = {"object": "list", "data": [{"id": "fake", "object": "model"}]}
            self._send(200, json.dumps(models).encode())
        else:
            self._send(404, b'{"error":"not found"}')

    def _fail(self, action: str) -> bool:
        """Answer a failure action; False for the actions that answer normally ("ok", "slow")."""
        if action in INJECTED:
            status, body, headers = INJECTED[action]
            self._send(status, body, headers)
        elif action == "drop":
            self.close_connection = True
            self.connection.shutdown(2)  # no status line, no body
        elif action == "malformed":
            self._send(200, b'{"id": "x", "choices": [ {"index": 0, "mess')
        elif action == "empty":
            self._send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode())
        else:
            return False
        return True

    def do_POST(self):
        fake = self.fake
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(length) or b"{}")
        chat = self.path.endswith("/chat/completions")
        if chat:
            users = [m["content"] for m in payload.get("messages", []) if m["role"] == "user"]
            prompt = users[-1] if users else ""
        else:
            prompt = payload.get("prompt", "")
        fmt = payload.get("response_format") if chat else None
        with fake._lock:
            fake.formats[(fmt or {}).get("type", "none")] += 1
            fake.attempts[prompt] += 1
            attempt = fake.attempts[prompt]
        if fmt and fake.response_format == "reject":
            error = {"error": {"message": "response_format is not supported", "type": "invalid_request"}}
            return self._send(fake.reject_status, json.dumps(error).encode())
        action = fake.plan(prompt, attempt)
        with fake._lock:
            fake.actions[action] += 1
        if fake.delay:
            time.sleep(fake.delay)
        if self._fail(action):
            return None
        if action == "slow":
            time.sleep(fake.slow_seconds)
        text = fake.reply(prompt)
        if fmt and fake.response_format == "honour" and fmt.get("type") == "json_schema":
            text = json.dumps(schema_answer(fmt["json_schema"]["schema"], prompt))
        body = completion_body(payload, prompt, text, chat, attempt, fake.finish(prompt))
        return self._send(200, json.dumps(body).encode())


class FakeOpenAIServer:
    def __init__(
        self,
        plan: Callable[[str, int], str] = failure_plan,
        delay: float = 0.0,
        slow_seconds: float = 3.0,
        port: int = 0,
        reply: Callable[[str], str] = fake_story,
        response_format: str = "ignore",
        reject_status: int = 400,
        finish: Callable[[str], str] = lambda prompt: "stop",
    ):
        assert response_format in RESPONSE_FORMAT_MODES, response_format
        self.plan = plan
        self.finish = finish
        self.delay = delay
        self.slow_seconds = slow_seconds
        self.reply = reply
        self.response_format = response_format
        self.reject_status = reject_status
        self.formats: Counter[str] = Counter()  # requests by the response_format type asked for ("none")
        self.attempts: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)  # loopback only
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread: threading.Thread | None = None

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--plan", choices=["ok", "failures"], default="failures")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--max_seconds", type=float, default=600.0, help="stop after this long (bounded)")
    a = parser.parse_args()
    server = FakeOpenAIServer(ok_plan if a.plan == "ok" else failure_plan, delay=a.delay, port=a.port).start()
    print(server.url, flush=True)
    time.sleep(a.max_seconds)
    server.stop()


if __name__ == "__main__":
    main()
