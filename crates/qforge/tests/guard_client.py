"""Drives qforge's guard endpoints with the official `openai` client (run by guard_proxy.rs).

QFORGE_CHECK=proxy: QFORGE_BASE_URL is `qforge guard proxy` in front of `qforge serve`;
QFORGE_PROMPT, QFORGE_EXPECTED (the reply text that precedes the guard's flagging pair: all the
client may see).
QFORGE_CHECK=moderation: QFORGE_BASE_URL is `qforge serve --guard-model`; QFORGE_GUARD_MODEL.
"""

import os
import sys

import openai

client = openai.OpenAI(base_url=os.environ["QFORGE_BASE_URL"], api_key="unused", max_retries=0)
CHECK = os.environ["QFORGE_CHECK"]
messages = [{"role": "user", "content": os.environ.get("QFORGE_PROMPT", "")}]
EXPECTED = os.environ.get("QFORGE_EXPECTED", "")
failed = 0


def run(name, fn):
    global failed
    try:
        fn()
        print(f"ok {name}")
    except Exception as e:  # noqa: BLE001 - report every check
        failed += 1
        print(f"FAILED {name}: {e!r}")


def streamed():
    text, finish = "", None
    for chunk in client.chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=40, stream=True
    ):
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert finish == "content_filter", finish
    assert text == EXPECTED, (text, EXPECTED)


def whole():
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=messages, temperature=0, max_tokens=40
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


checks = {
    "proxy": [("streamed", streamed), ("whole", whole), ("models", models)],
    "moderation": [("moderation", moderation)],
}[CHECK]
for name, fn in checks:
    run(name, fn)
print(f"{len(checks) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
