"""Drives the broker with the official `openai` SDK, unmodified, and prints
what it saw as one JSON object for the Rust test to check.

    python openai_sdk.py BASE_URL
"""

import base64
import json
import struct
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
seen = {"sdk_version": openai.__version__}

seen["models"] = sorted(m.id for m in client.models.list())

chat = client.chat.completions.create(
    model="tiny-chat",
    messages=[{"role": "user", "content": "alpha beta gamma"}],
    max_tokens=5,
)
seen["chat"] = {
    "content": chat.choices[0].message.content,
    "finish_reason": chat.choices[0].finish_reason,
    "prompt_tokens": chat.usage.prompt_tokens,
    "completion_tokens": chat.usage.completion_tokens,
}

pieces, finish, usage, roles = [], None, None, []
for chunk in client.chat.completions.create(
    model="tiny-chat",
    messages=[{"role": "user", "content": "one two three"}],
    max_tokens=7,
    stream=True,
    stream_options={"include_usage": True},
    extra_headers={"X-Switchyard-Priority": "critical"},
):
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.role:
            roles.append(choice.delta.role)
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
seen["chat_stream"] = {
    "pieces": len(pieces),
    "content": "".join(pieces),
    "finish_reason": finish,
    "roles": roles,
    "completion_tokens": usage.completion_tokens if usage else None,
}

text = client.completions.create(model="tiny-text", prompt="red green", max_tokens=3)
seen["completion"] = {"text": text.choices[0].text, "usage": text.usage.total_tokens}

streamed = [
    c.choices[0].text
    for c in client.completions.create(
        model="tiny-text", prompt="red green", max_tokens=4, stream=True
    )
    if c.choices
]
seen["completion_stream"] = "".join(streamed)

# The SDK asks for base64 unless told otherwise, and decodes it itself.
default = client.embeddings.create(model="tiny-embed", input=["north", "south"])
floats = client.embeddings.create(
    model="tiny-embed", input="north", encoding_format="float"
)
seen["embeddings"] = {
    "count": len(default.data),
    "dims": len(default.data[0].embedding),
    "same_text_same_vector": [round(x, 5) for x in default.data[0].embedding]
    == [round(x, 5) for x in floats.data[0].embedding],
    "prompt_tokens": default.usage.prompt_tokens,
}

errors = {}
for name, call in {
    "unknown_model": lambda: client.chat.completions.create(
        model="no-such-model", messages=[{"role": "user", "content": "x"}]
    ),
    "wrong_endpoint": lambda: client.embeddings.create(model="tiny-chat", input="x"),
    "bad_parameter": lambda: client.completions.create(
        model="tiny-text", prompt="x", max_tokens=100000
    ),
}.items():
    try:
        call()
        errors[name] = None
    except openai.APIStatusError as e:
        errors[name] = {"status": e.status_code, "code": e.body.get("code") if isinstance(e.body, dict) else None}
seen["errors"] = errors

print(json.dumps(seen))
