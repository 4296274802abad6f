"""Drives a qforge proxy (`qforge guard proxy` or `qforge compress proxy`) with the official
`openai` client (run by serve_openai.rs).

QFORGE_CHECK=scripted: the proxy is in front of `scripted_upstream.py --parallel`
(QFORGE_UPSTREAM_URL; its `GET /last_request` returns the body the proxy forwarded). Checks: two
parallel tool calls arrive as two calls, streamed and whole; a multi-turn tool conversation
(both results fed back) goes through; every field the client sends that the proxy does not own
reaches the upstream unchanged.

QFORGE_CHECK=serve: the proxy is in front of `qforge serve` (QFORGE_UPSTREAM_URL). Penalties,
logit_bias and tool_choice "none" give through the proxy what they give directly; what the
server refuses (tool_choice "required", JSON response_format) comes back as the same 400.
"""

import json
import os
import urllib.request

import openai
from client_checks import run_checks

client = openai.OpenAI(base_url=os.environ["QFORGE_BASE_URL"], api_key="unused", max_retries=0)
UPSTREAM = os.environ["QFORGE_UPSTREAM_URL"]
CHECK = os.environ["QFORGE_CHECK"]
MODEL = client.models.list().data[0].id
TRACE = "\nThe user asks about the weather VWK in Paris."
ANSWER = "\n\nLet me look it up."
CALLS = [("weather", '{"city": "Paris XQZ"}'), ("forecast", '{"city": "Lyon", "days": 2}')]
TOOLS = [{"type": "function", "function": {"name": n, "description": "Weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
         for n in ("weather", "forecast")]
ASK = [{"role": "user", "content": "Weather in Paris and Lyon?"}]


def last_request():
    root = UPSTREAM[: -len("/v1")] if UPSTREAM.endswith("/v1") else UPSTREAM
    with urllib.request.urlopen(f"{root}/last_request") as r:
        return json.loads(r.read())


def parallel_streamed():
    reasoning, content, calls, ids, finish = "", "", {}, {}, None
    for chunk in client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, stream=True):
        for c in chunk.choices:
            reasoning += getattr(c.delta, "reasoning_content", None) or ""
            content += c.delta.content or ""
            for t in c.delta.tool_calls or []:
                call = calls.setdefault(t.index, ["", ""])
                if t.id:
                    ids.setdefault(t.index, t.id)
                call[0] += (t.function.name or "") if t.function else ""
                call[1] += (t.function.arguments or "") if t.function else ""
            finish = c.finish_reason or finish
    assert (reasoning, content) == (TRACE, ANSWER), (reasoning, content)
    assert sorted(calls) == [0, 1], calls
    assert [tuple(calls[i]) for i in (0, 1)] == CALLS, calls
    assert len(set(ids.values())) == 2, ids
    assert finish == "tool_calls", finish


def parallel_whole():
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    m = r.choices[0].message
    assert [(t.function.name, t.function.arguments) for t in m.tool_calls] == CALLS, m.tool_calls
    assert len({t.id for t in m.tool_calls}) == 2, m.tool_calls
    assert (getattr(m, "reasoning_content", None), m.content) == (TRACE, ANSWER), m
    assert r.choices[0].finish_reason == "tool_calls"


def multi_turn_tool_conversation():
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS).choices[0].message
    history = ASK + [first.model_dump(exclude_none=True)]
    for t in first.tool_calls:
        history.append({"role": "tool", "tool_call_id": t.id, "content": f"sunny in {json.loads(t.function.arguments)['city']}"})
    for stream in (False, True):
        r = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, stream=stream)
        if stream:
            list(r)
        sent = last_request()["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"], sent
        assert [t["id"] for t in sent[1]["tool_calls"]] == [t.id for t in first.tool_calls], sent[1]
        assert [m["tool_call_id"] for m in sent[2:]] == [t.id for t in first.tool_calls], sent


def fields_reach_the_upstream_unchanged():
    sent = dict(
        tool_choice={"type": "function", "function": {"name": "forecast"}}, parallel_tool_calls=False,
        presence_penalty=0.3, frequency_penalty=-0.7, logit_bias={"42": -100, "7": 2.5},
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
        temperature=0.7, top_p=0.95, max_completion_tokens=64, seed=3, stop=["\n\nObservation"],
        user="u-1", metadata={"run": "a"},
    )
    vendor = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05, "skip_special_tokens": False,
              "chat_template_kwargs": {"enable_thinking": True}, "guided_choice": None,
              "vendor_field": [1, {"x": None}]}
    for stream in (False, True):
        r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, stream=stream,
                                           extra_body=vendor, **sent)
        if stream:
            list(r)
        got = last_request()
        for key, value in {**sent, **vendor}.items():
            if value is None:
                continue  # the client drops None fields itself
            assert key in got and json.dumps(got[key]) == json.dumps(value), (key, got.get(key), value)
        assert got["tools"] == TOOLS, got["tools"]


def same_as_direct():
    direct = openai.OpenAI(base_url=UPSTREAM, api_key="unused", max_retries=0)
    direct_model = direct.models.list().data[0].id
    for kw in (dict(presence_penalty=2.0, frequency_penalty=2.0), dict(logit_bias={"100": 100}),
               dict(tools=TOOLS, tool_choice="none"), dict(extra_body={"chat_template_kwargs": {"enable_thinking": False}})):
        replies = []
        for c, m in ((client, MODEL), (direct, direct_model)):
            r = c.chat.completions.create(model=m, messages=ASK, temperature=0, max_tokens=8, **kw)
            msg = r.choices[0].message
            replies.append((getattr(msg, "reasoning_content", None), msg.content, msg.tool_calls))
        assert replies[0] == replies[1], (kw, replies)


def refusals_are_relayed():
    for kw in (dict(tools=TOOLS, tool_choice="required"), dict(response_format={"type": "json_object"})):
        try:
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2, **kw)
            raise AssertionError(f"{kw} was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400, e


checks = {
    "scripted": [("parallel tool calls streamed", parallel_streamed),
                 ("parallel tool calls whole", parallel_whole),
                 ("multi-turn tool conversation", multi_turn_tool_conversation),
                 ("fields forwarded", fields_reach_the_upstream_unchanged)],
    "serve": [("same as direct", same_as_direct), ("refusals relayed", refusals_are_relayed)],
}[CHECK]
run_checks(checks)
