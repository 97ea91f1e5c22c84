"""Checks webhook requests with the Standard Webhooks reference verifier
(PyPI `standardwebhooks`), unmodified.

Argument: a JSON file holding a list of {"secret", "headers", "body"}.
Prints a JSON list: for each request, the verified payload, or
{"refused": reason} when the verifier refused it.
"""

import json
import sys

import standardwebhooks
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

with open(sys.argv[1]) as f:
    requests = json.load(f)

out = []
for r in requests:
    try:
        out.append(Webhook(r["secret"]).verify(r["body"], r["headers"]))
    except WebhookVerificationError as e:
        out.append({"refused": str(e)})
print(json.dumps(out))
