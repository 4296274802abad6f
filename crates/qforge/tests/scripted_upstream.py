"""A scripted vLLM-style upstream for the proxy tests (run by guard_proxy.rs and proxies.rs).

It stands for a vLLM server with `--reasoning-parser qwen3 --tool-call-parser hermes`
answering a thinking model's tool-calling turn: `/v1/chat/completions` streams (SSE) the
thinking trace in `reasoning_content` (starting with the newline after `<think>`), the answer in
`content` (starting with the `\\n\\n` after `</think>`), then one tool call in fragments (id and
name first, the arguments in pieces) and `finish_reason: "tool_calls"`, in vLLM's chunk shape.
With `--parallel`, a second call (index 1, arguments in pieces too) follows the first, as vLLM
streams parallel calls. Every request gets the same reply; the last request body is kept for
`GET /last_request`.
Standard library only. Prints `listening on http://127.0.0.1:PORT/v1` once ready.
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REASONING = ["\nThe user asks", " about the weather VWK in", " Paris."]
CONTENT = ["\n\nLet me look", " it up."]
ARGUMENTS = ['{"city": ', '"Paris XQZ"}']
SECOND_ARGUMENTS = ['{"city": "Ly', 'on", "days": 2}']
PARALLEL = "--parallel" in sys.argv
LAST = {}


def chunk(delta, finish=None):
    return {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": "thinker", "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": finish}]}


def chunks():
    yield chunk({"role": "assistant", "content": ""})
    for r in REASONING:
        yield chunk({"reasoning_content": r})
    for c in CONTENT:
        yield chunk({"content": c})
    yield chunk({"tool_calls": [{"index": 0, "id": "chatcmpl-tool-1", "type": "function",
                                 "function": {"name": "weather", "arguments": ""}}]})
    for a in ARGUMENTS:
        yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": a}}]})
    if PARALLEL:
        yield chunk({"tool_calls": [{"index": 1, "id": "chatcmpl-tool-2", "type": "function",
                                     "function": {"name": "forecast", "arguments": ""}}]})
        for a in SECOND_ARGUMENTS:
            yield chunk({"tool_calls": [{"index": 1, "function": {"arguments": a}}]})
    yield chunk({}, "tool_calls")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self.send_json({"object": "list", "data": [{"id": "thinker", "object": "model"}]})
        else:
            self.send_json(LAST)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        LAST.clear()
        LAST.update(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for c in chunks():
            self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"listening on http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
server.serve_forever()
