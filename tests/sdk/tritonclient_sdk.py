"""Drives a KServe v2 server with `tritonclient[http]`, unmodified, the same
way against Triton itself and against the broker, and prints what each
answered as one JSON object for the Rust test to compare.

    python tritonclient_sdk.py TRITON_HOST:PORT BROKER_HOST:PORT
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def drive(url):
    client = httpclient.InferenceServerClient(url=url)
    seen = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("tiny-linear"),
    }
    x = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    for binary in (True, False):
        tensor = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer("tiny-linear", [tensor], request_id="req-7")
        seen[f"binary_{binary}"] = {
            "output": result.as_numpy("OUTPUT0").round(5).tolist(),
            "id": result.get_response().get("id"),
        }
    tensor = httpclient.InferInput("INPUT0", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
    try:
        client.infer("tiny-linear", [tensor])
        seen["wrong_shape"] = None
    except InferenceServerException as e:
        seen["wrong_shape"] = {"status": e.status(), "unexpected_shape": "unexpected shape" in e.message()}
    return seen


print(json.dumps({"triton": drive(sys.argv[1]), "switchyard": drive(sys.argv[2])}))
