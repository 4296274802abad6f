"""Sends images to a running `qforge serve` of a vision-language model with the official
`openai` client (run by serve_openai.rs).

Environment: QFORGE_BASE_URL, QFORGE_MODEL, QFORGE_PROMPT, QFORGE_IMAGE (a PNG path),
QFORGE_IMAGE_NAME (its name under the server's --allowed-local-media-path), QFORGE_EXPECTED
(greedy text of `qforge generate --image QFORGE_IMAGE --prompt QFORGE_PROMPT`, 8 tokens),
QFORGE_PROMPT_TOKENS (that prompt's length, placeholders expanded) and QFORGE_TEXT_ONLY_URL (a
server of a text-only model).
"""

import base64
import os

import openai
from client_checks import run_checks

client = openai.OpenAI(base_url=os.environ["QFORGE_BASE_URL"], api_key="unused", max_retries=0)
text_only = openai.OpenAI(base_url=os.environ["QFORGE_TEXT_ONLY_URL"], api_key="unused", max_retries=0)
MODEL = os.environ["QFORGE_MODEL"]
PROMPT = os.environ["QFORGE_PROMPT"]
EXPECTED = os.environ["QFORGE_EXPECTED"]
PROMPT_TOKENS = int(os.environ["QFORGE_PROMPT_TOKENS"])
with open(os.environ["QFORGE_IMAGE"], "rb") as f:
    DATA_URL = "data:image/png;base64," + base64.b64encode(f.read()).decode()


def ask(url, model=MODEL, api=None, **kw):
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": PROMPT},
    ]}]
    return (api or client).chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0, **kw)


def a_data_url_image_gets_the_reply_qforge_generate_gives():
    r = ask(DATA_URL)
    assert r.choices[0].message.content == EXPECTED, (r.choices[0].message.content, EXPECTED)
    assert r.usage.prompt_tokens == PROMPT_TOKENS, (r.usage.prompt_tokens, PROMPT_TOKENS)


def streaming_gives_the_same_text():
    chunks = list(ask(DATA_URL, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == EXPECTED, (text, EXPECTED)


def a_local_path_under_the_allowed_directory_is_read():
    r = ask(os.environ["QFORGE_IMAGE_NAME"])
    assert r.choices[0].message.content == EXPECTED


def remote_urls_are_refused_with_a_400():
    try:
        ask("https://example.com/cat.png")
    except openai.BadRequestError as e:
        assert "remote" in str(e), e
    else:
        raise AssertionError("a remote URL was accepted")


def a_corrupt_image_is_a_400_naming_the_part():
    try:
        ask("data:image/png;base64," + base64.b64encode(b"not a png").decode())
    except openai.BadRequestError as e:
        assert "messages[0].content[0]" in str(e), e
    else:
        raise AssertionError("a corrupt image was accepted")


def a_path_outside_the_allowed_directory_is_refused():
    try:
        ask("../../../../etc/passwd")
    except openai.BadRequestError as e:
        assert "outside" in str(e), e
    else:
        raise AssertionError("a path outside the allowed directory was read")


def a_text_only_model_refuses_images():
    try:
        ask(DATA_URL, model="text", api=text_only)
    except openai.BadRequestError as e:
        assert "text-only" in str(e), e
    else:
        raise AssertionError("a text-only model accepted an image")


run_checks([(f.__name__, f) for f in [
    a_data_url_image_gets_the_reply_qforge_generate_gives,
    streaming_gives_the_same_text,
    a_local_path_under_the_allowed_directory_is_read,
    remote_urls_are_refused_with_a_400,
    a_corrupt_image_is_a_400_naming_the_part,
    a_path_outside_the_allowed_directory_is_refused,
    a_text_only_model_refuses_images,
]])
