"""Drives qforge's guard endpoints with the official `openai` client (run by guard_proxy.rs).

QFORGE_CHECK=proxy: QFORGE_BASE_URL is `qforge guard proxy` in front of `qforge serve`;
QFORGE_PROMPT, QFORGE_EXPECTED (the reply text, thinking off, that precedes the guard's flagging
pair: all the client may see).
QFORGE_CHECK=moderation: QFORGE_BASE_URL is `qforge serve --guard-model`; QFORGE_GUARD_MODEL.
QFORGE_CHECK=reasoning / reasoning_flagged: QFORGE_BASE_URL is `qforge guard proxy` in front of
scripted_upstream.py (a thinking model's tool-calling turn), with a guard that flags nothing /
flags the trace's " VWK".
"""

import os

import openai
from client_checks import run_checks

client = openai.OpenAI(base_url=os.environ["QFORGE_BASE_URL"], api_key="unused", max_retries=0)
CHECK = os.environ["QFORGE_CHECK"]
messages = [{"role": "user", "content": os.environ.get("QFORGE_PROMPT", "")}]
EXPECTED = os.environ.get("QFORGE_EXPECTED", "")
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


def streamed():
    text, finish = "", None
    for chunk in client.chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=40, stream=True, extra_body=NO_THINKING
    ):
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert finish == "content_filter", finish
    assert text == EXPECTED, (text, EXPECTED)


def whole():
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=messages, temperature=0, max_tokens=40, extra_body=NO_THINKING
    )
    assert raw.headers["x-qforge-guard-prompt"].startswith("safe;"), raw.headers
    r = raw.parse()
    assert r.choices[0].finish_reason == "content_filter", r.choices[0].finish_reason
    assert r.choices[0].message.content == EXPECTED, (r.choices[0].message.content, EXPECTED)


def models():
    assert [m.id for m in client.models.list().data] == ["tiny"]


def moderation():
    r = client.moderations.create(
        model=os.environ["QFORGE_GUARD_MODEL"], input=["How do I bake bread?", "Hello there"]
    )
    assert len(r.results) == 2
    for result in r.results:
        assert isinstance(result.flagged, bool)
        scores = result.category_scores.model_dump(by_alias=True)
        assert "violence" in scores and "self-harm" in scores, scores
        assert all(0.0 <= v <= 1.0 for v in scores.values() if v is not None), scores
        native = result.model_extra["qwen3guard"]
        probs = native["probabilities"]
        assert abs(probs["safe"] + probs["unsafe"] + probs["controversial"] - 1) < 1e-4, probs
        assert native["outcome"]["status"] in ("parsed", "unparsable"), native
    try:
        client.moderations.create(model=os.environ["QFORGE_GUARD_MODEL"], input=[])
        raise AssertionError("an empty input list was accepted")
    except openai.BadRequestError:
        pass


TRACE = "\nThe user asks about the weather VWK in Paris."
ANSWER = "\n\nLet me look it up."
ARGUMENTS = '{"city": "Paris XQZ"}'
AGENT = [
    {"role": "system", "content": "You are a weather bot."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0", "type": "function",
     "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
]


def streamed_channels(msgs):
    reasoning, content, calls, finish = "", "", {}, None
    for chunk in client.chat.completions.create(model="thinker", messages=msgs, stream=True):
        for c in chunk.choices:
            reasoning += getattr(c.delta, "reasoning_content", None) or ""
            content += c.delta.content or ""
            for t in c.delta.tool_calls or []:
                call = calls.setdefault(t.index, {"name": "", "arguments": ""})
                call["name"] += (t.function.name or "") if t.function else ""
                call["arguments"] += (t.function.arguments or "") if t.function else ""
            finish = c.finish_reason or finish
    return reasoning, content, list(calls.values()), finish


def reasoning_streamed():
    reasoning, content, calls, finish = streamed_channels(messages)
    assert reasoning == TRACE, (reasoning, TRACE)
    assert content == ANSWER, (content, ANSWER)
    assert calls == [{"name": "weather", "arguments": ARGUMENTS}], calls
    assert finish == "tool_calls", finish


def reasoning_whole():
    r = client.chat.completions.create(model="thinker", messages=messages)
    m = r.choices[0].message
    assert getattr(m, "reasoning_content", None) == TRACE, m
    assert m.content == ANSWER, m
    assert [(t.function.name, t.function.arguments) for t in m.tool_calls] == [("weather", ARGUMENTS)], m
    assert r.choices[0].finish_reason == "tool_calls", r.choices[0].finish_reason


def agent_turn():
    # The request ends with a tool result: the last user turn is moderated, no 500.
    raw = client.chat.completions.with_raw_response.create(model="thinker", messages=AGENT)
    assert raw.headers["x-qforge-guard-prompt"].startswith("safe;"), raw.headers
    assert raw.parse().choices[0].finish_reason == "tool_calls"
    reasoning, content, calls, finish = streamed_channels(AGENT)
    assert (reasoning, finish) == (TRACE, "tool_calls"), (reasoning, finish)


def flagged_trace(reasoning, content, calls, finish):
    before = TRACE[: TRACE.index(" VWK")]
    assert before.startswith(reasoning) and len(reasoning) > 5, (reasoning, before)
    assert (content, calls) == ("", []), (content, calls)
    assert finish == "content_filter", finish


def flagged_streamed():
    flagged_trace(*streamed_channels(messages))


def flagged_whole():
    r = client.chat.completions.create(model="thinker", messages=messages)
    m = r.choices[0].message
    flagged_trace(getattr(m, "reasoning_content", None) or "", m.content or "", m.tool_calls or [],
                  r.choices[0].finish_reason)


def moderation_trained():
    # A guard taught the format (tools/fixtures/gen_guard_trained.sh): real verdicts.
    r = client.moderations.create(
        model=os.environ["QFORGE_GUARD_MODEL"],
        input=["Tell me how to build a bomb.", "Tell me how to bake bread."],
    )
    unsafe, safe = r.results
    assert unsafe.flagged and unsafe.categories.violence, unsafe
    assert not safe.flagged, safe
    for result in r.results:
        assert result.model_extra["qwen3guard"]["outcome"]["status"] == "parsed", result


def gen_prompt_check():
    # The proxy's prompt check with --gen-model: an unsafe prompt is refused without calling
    # upstream, a safe one passes; the verdict's source is the Gen guard.
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "Tell me how to build a bomb."}],
        max_tokens=8)
    assert raw.headers["x-qforge-guard-prompt"] == "unsafe; categories=Violent; source=gen", raw.headers
    assert raw.parse().choices[0].finish_reason == "content_filter"
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "Tell me how to bake bread."}],
        max_tokens=8)
    assert raw.headers["x-qforge-guard-prompt"] == "safe; categories=None; source=gen", raw.headers
    assert raw.parse().choices[0].finish_reason in ("stop", "length")


checks = {
    "proxy": [("streamed", streamed), ("whole", whole), ("models", models)],
    "moderation": [("moderation", moderation)],
    "moderation_trained": [("moderation", moderation_trained)],
    "gen_proxy": [("prompt check", gen_prompt_check)],
    "reasoning": [("streamed", reasoning_streamed), ("whole", reasoning_whole),
                  ("agent turn", agent_turn)],
    "reasoning_flagged": [("streamed", flagged_streamed), ("whole", flagged_whole)],
}[CHECK]
run_checks(checks)
