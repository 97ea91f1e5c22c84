"""Runs a workflow through the official `openai` SDK, unmodified, as the
model `workflow:<name>`, and prints what it saw as one JSON object.

    python openai_workflow.py BASE_URL WORKFLOW FAILING_WORKFLOW
"""

import json
import sys

import openai

base_url, workflow, failing = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
messages = [{"role": "user", "content": "alpha beta gamma"}]
seen = {}

chat = client.chat.completions.with_raw_response.create(
    model=f"workflow:{workflow}", messages=messages
)
completion = chat.parse()
seen["chat"] = {
    "content": completion.choices[0].message.content,
    "model": completion.model,
    "completion_tokens": completion.usage.completion_tokens,
    "run_id": chat.headers.get("x-switchyard-run-id"),
}

pieces = []
for chunk in client.chat.completions.create(
    model=f"workflow:{workflow}", messages=messages, stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
seen["stream"] = "".join(pieces)
seen["stream_pieces"] = len(pieces)

try:
    client.chat.completions.create(model=f"workflow:{failing}", messages=messages)
    seen["failed"] = None
except openai.APIStatusError as e:
    seen["failed"] = {"status": e.status_code, "code": e.body.get("code") if isinstance(e.body, dict) else None}

print(json.dumps(seen))
