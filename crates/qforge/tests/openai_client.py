"""Drives a running `qforge serve` with the official `openai` client (run by serve_openai.rs).

Environment: QFORGE_BASE_URL, QFORGE_MODEL, QFORGE_PROMPT, QFORGE_EXPECTED (greedy text of
`qforge generate` for QFORGE_PROMPT, 12 tokens), QFORGE_TOOLS (JSON), QFORGE_TOOLS_PROMPT_TOKENS,
QFORGE_CONVERSATION (JSON: a multi-turn tool conversation, parallel calls and their results fed
back) and QFORGE_CONVERSATION_PROMPT_TOKENS (its prompt as `qforge template` renders it).

The fixture's template is Qwen3's, so thinking is on by default: the reply is split as vLLM's
qwen3 reasoning parser splits it (`split` below states the rule).
"""

import json
import os
import urllib.request

import openai
from client_checks import run_checks

client = openai.OpenAI(base_url=os.environ["QFORGE_BASE_URL"], api_key="unused", max_retries=0)
MODEL = os.environ["QFORGE_MODEL"]
PROMPT = os.environ["QFORGE_PROMPT"]
EXPECTED = os.environ["QFORGE_EXPECTED"]
TOOLS = json.loads(os.environ["QFORGE_TOOLS"])
TOOLS_PROMPT_TOKENS = int(os.environ["QFORGE_TOOLS_PROMPT_TOKENS"])
CONVERSATION = json.loads(os.environ["QFORGE_CONVERSATION"])
CONVERSATION_PROMPT_TOKENS = int(os.environ["QFORGE_CONVERSATION_PROMPT_TOKENS"])
messages = [{"role": "user", "content": PROMPT}]
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
checks = []


def split(text):
    """(reasoning, content) of a thinking reply, vLLM's rule: a <think> tag is dropped, reasoning
    runs to the first </think>; a reply that never closes the block is all reasoning."""
    text = text.partition("<think>")[2] if "<think>" in text else text
    if "</think>" in text:
        reasoning, _, content = text.partition("</think>")
        return reasoning or None, content or None
    return text or None, None


def channels(message):
    return getattr(message, "reasoning_content", None), message.content


def streamed_channels(chunks):
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return reasoning or None, content or None


def check(fn):
    checks.append(fn)
    return fn


@check
def models_lists_the_served_model():
    assert [m.id for m in client.models.list().data] == [MODEL]


@check
def greedy_chat_equals_qforge_generate():
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12)
    assert channels(r.choices[0].message) == split(EXPECTED), (channels(r.choices[0].message), EXPECTED)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12 and r.usage.total_tokens == r.usage.prompt_tokens + 12


@check
def streaming_equals_whole_and_reports_usage():
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12,
                                                 stream=True, stream_options={"include_usage": True}))
    assert streamed_channels(chunks) == split(EXPECTED), (streamed_channels(chunks), EXPECTED)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"], finishes
    assert chunks[-1].usage.completion_tokens == 12 and not chunks[-1].choices


@check
def stop_strings_cut_the_output():
    stop = EXPECTED[len(EXPECTED) // 2:][:3]
    assert stop, "expected text too short"
    cut = EXPECTED[:EXPECTED.find(stop)]
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12, stop=[stop])
    assert channels(r.choices[0].message) == split(cut), (channels(r.choices[0].message), cut)
    assert r.choices[0].finish_reason == "stop"
    s = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12, stop=stop, stream=True)
    assert streamed_channels(list(s)) == split(cut)


@check
def n_choices_are_seeded_and_reproducible():
    kw = dict(model=MODEL, messages=messages, temperature=1.0, top_p=0.9, max_tokens=8, n=3, seed=11)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [channels(c.message) for c in a.choices] == [channels(c.message) for c in b.choices]
    assert a.usage.completion_tokens == 24


@check
def logprobs_and_top_logprobs():
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
        assert abs(t.logprob - t.top_logprobs[0].logprob) < 1e-6  # greedy picks the most likely token


@check
def tools_are_rendered_into_the_prompt():
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=2)
    assert r.usage.prompt_tokens == TOOLS_PROMPT_TOKENS, (r.usage.prompt_tokens, TOOLS_PROMPT_TOKENS)


@check
def text_completions():
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, temperature=0)
    s = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in s if c.choices) == r.choices[0].text
    assert r.usage.completion_tokens == 5


def expect_error(cls, code=None, **kw):
    try:
        client.chat.completions.create(**kw)
    except cls as e:
        if code is not None:
            assert e.code == code, (e.code, code)
        return
    raise AssertionError(f"expected {cls.__name__}")


@check
def errors_are_openai_errors():
    expect_error(openai.BadRequestError, model=MODEL, messages=[])
    expect_error(openai.NotFoundError, "model_not_found", model="no-such-model", messages=messages)
    expect_error(openai.BadRequestError, "context_length_exceeded", model=MODEL, messages=[{"role": "user", "content": "word " * 1500}])
    expect_error(openai.BadRequestError, model=MODEL, messages=messages, temperature="hot")
    for bad in (dict(presence_penalty="x"), dict(frequency_penalty=3.0), dict(logit_bias=[1]),
                dict(logit_bias={"a": 1}), dict(logit_bias={"10000000": 5}), dict(tool_choice=5),
                dict(parallel_tool_calls="no"), dict(response_format="json"), dict(tool_choice="required")):
        expect_error(openai.BadRequestError, model=MODEL, messages=messages, max_tokens=2, **bad)
    # The server still works afterwards.
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12)
    assert channels(r.choices[0].message) == split(EXPECTED)


def greedy_tokens(**kw):
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12, logprobs=True, **kw)
    return [t.token for t in r.choices[0].logprobs.content]


@check
def thinking_off_is_all_content():
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12, extra_body=NO_THINKING)
    assert getattr(r.choices[0].message, "reasoning_content", None) is None, r.choices[0].message
    assert r.choices[0].message.content and r.usage.completion_tokens == 12, r


@check
def presence_and_frequency_penalties_are_applied():
    plain = greedy_tokens()
    penalised = greedy_tokens(presence_penalty=2.0, frequency_penalty=2.0)
    assert penalised == greedy_tokens(presence_penalty=2.0, frequency_penalty=2.0), "not deterministic"
    assert len(set(penalised)) > len(set(plain)), (plain, penalised)
    # Penalties count the output only: the first token, before any output exists, is unchanged.
    assert penalised[0] == plain[0], (plain, penalised)


@check
def logit_bias_steers_every_token():
    plain = greedy_tokens()
    forced = greedy_tokens(logit_bias={"100": 100})
    assert len(set(forced)) == 1 and forced != plain, (plain, forced)
    banned = greedy_tokens(logit_bias={"100": 100}, extra_body={"logit_bias": {"100": -100}})
    assert forced[0] not in banned, (forced, banned)


@check
def tool_choice_none_and_auto_are_honoured_the_rest_refused():
    for choice in ("none", "auto"):
        r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice=choice,
                                           temperature=0, max_tokens=4)
        assert r.usage.prompt_tokens == TOOLS_PROMPT_TOKENS, (choice, r.usage)
        if choice == "none":
            assert not r.choices[0].message.tool_calls
    named = {"type": "function", "function": {"name": TOOLS[0]["function"]["name"]}}
    for choice in ("required", named, {"type": "function", "function": {"name": "no_such_tool"}}):
        expect_error(openai.BadRequestError, model=MODEL, messages=messages, tools=TOOLS, tool_choice=choice)
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, parallel_tool_calls=False,
                                       temperature=0, max_tokens=4)
    assert r.choices[0].finish_reason in ("length", "stop", "tool_calls")


@check
def response_format_text_is_accepted_json_refused():
    r = client.chat.completions.create(model=MODEL, messages=messages, response_format={"type": "text"},
                                       temperature=0, max_tokens=12)
    assert channels(r.choices[0].message) == split(EXPECTED)
    for fmt in ({"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}):
        try:
            client.chat.completions.create(model=MODEL, messages=messages, response_format=fmt, max_tokens=2)
            raise AssertionError(f"{fmt} was accepted")
        except openai.BadRequestError as e:
            assert e.body["param"] == "response_format", e.body


@check
def multi_turn_tool_conversation_is_rendered_as_the_template_says():
    for stream in (False, True):
        r = client.chat.completions.create(model=MODEL, messages=CONVERSATION, tools=TOOLS, temperature=0,
                                           max_tokens=3, stream=stream, stream_options={"include_usage": True} if stream else None)
        usage = [c for c in r][-1].usage if stream else r.usage
        assert usage.prompt_tokens == CONVERSATION_PROMPT_TOKENS, (stream, usage, CONVERSATION_PROMPT_TOKENS)


@check
def repeated_prompts_hit_the_prefix_cache():
    # Every check above re-sent the same prompts (the tools' block of the template is long):
    # /metrics (beside /v1) counts the prompt tokens that came from the prefix cache.
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=1)
    root = os.environ["QFORGE_BASE_URL"].removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/metrics") as r:
        metrics = dict(line.split(" ", 1) for line in r.read().decode().splitlines() if not line.startswith("#"))
    assert float(metrics["qforge_prefix_cache_hits_total"]) > 0, metrics
    assert 0 < float(metrics["qforge_prefix_cache_hit_rate"]) <= 1, metrics


run_checks([(fn.__name__, fn) for fn in checks])
