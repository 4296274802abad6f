"""Drives a running `qforge serve` with the official `openai` client (run by serve_openai.rs).

Environment: QFORGE_BASE_URL, QFORGE_MODEL, QFORGE_PROMPT, QFORGE_EXPECTED (greedy text of
`qforge generate` for QFORGE_PROMPT, 12 tokens), QFORGE_TOOLS (JSON), QFORGE_TOOLS_PROMPT_TOKENS.
"""

import json
import os
import sys

import openai

client = openai.OpenAI(base_url=os.environ["QFORGE_BASE_URL"], api_key="unused", max_retries=0)
MODEL = os.environ["QFORGE_MODEL"]
PROMPT = os.environ["QFORGE_PROMPT"]
EXPECTED = os.environ["QFORGE_EXPECTED"]
TOOLS = json.loads(os.environ["QFORGE_TOOLS"])
TOOLS_PROMPT_TOKENS = int(os.environ["QFORGE_TOOLS_PROMPT_TOKENS"])
messages = [{"role": "user", "content": PROMPT}]
checks = []


def check(fn):
    checks.append(fn)
    return fn


@check
def models_lists_the_served_model():
    assert [m.id for m in client.models.list().data] == [MODEL]


@check
def greedy_chat_equals_qforge_generate():
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12)
    assert r.choices[0].message.content == EXPECTED, (r.choices[0].message.content, EXPECTED)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12 and r.usage.total_tokens == r.usage.prompt_tokens + 12


@check
def streaming_equals_whole_and_reports_usage():
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == EXPECTED, (text, EXPECTED)
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
    assert r.choices[0].message.content in (cut, None if cut == "" else cut), (r.choices[0].message.content, cut)
    assert r.choices[0].finish_reason == "stop"
    s = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in s if c.choices) == cut


@check
def n_choices_are_seeded_and_reproducible():
    kw = dict(model=MODEL, messages=messages, temperature=1.0, top_p=0.9, max_tokens=8, n=3, seed=11)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
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
    # The server still works afterwards.
    assert client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12).choices[0].message.content == EXPECTED


failed = 0
for fn in checks:
    try:
        fn()
        print(f"ok    {fn.__name__}")
    except Exception as e:  # report every failing check, not just the first
        failed += 1
        print(f"FAIL  {fn.__name__}: {type(e).__name__}: {e}")
print(f"{len(checks) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
