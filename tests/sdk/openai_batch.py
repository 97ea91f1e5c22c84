"""Runs a batch through the broker with the official `openai` SDK,
unmodified: uploads a JSONL file, creates the batch, waits for it to end,
and prints its output and errors as one JSON object for the Rust test.

    python openai_batch.py BASE_URL INPUT_JSONL
"""

import json
import sys
import time

import openai

base_url, path = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)

with open(path, "rb") as f:
    upload = client.files.create(file=f, purpose="batch")
batch = client.batches.create(
    input_file_id=upload.id,
    endpoint="/v1/chat/completions",
    completion_window="24h",
    metadata={"run": "sdk-test"},
)
deadline = time.time() + 60
while batch.status not in ("completed", "failed", "expired", "cancelled"):
    if time.time() > deadline:
        raise SystemExit(f"batch still {batch.status}")
    time.sleep(0.2)
    batch = client.batches.retrieve(batch.id)

out = {
    "upload_bytes": upload.bytes,
    "status": batch.status,
    "counts": batch.request_counts.model_dump(),
    "metadata": batch.metadata,
    "listed": [b.id for b in client.batches.list(limit=5)],
    "id": batch.id,
    "output": [],
    "errors": [],
}
if batch.output_file_id:
    out["output"] = [json.loads(l) for l in client.files.content(batch.output_file_id).text.splitlines()]
if batch.error_file_id:
    out["errors"] = [json.loads(l) for l in client.files.content(batch.error_file_id).text.splitlines()]
print(json.dumps(out))
