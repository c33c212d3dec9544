"""Query a running ``dnnspec serve`` (or Triton Inference Server) with the official client.

    dnnspec serve model.onnx --port 8000 &
    python examples/triton_client.py --url 127.0.0.1:8000 --model model

Needs ``pip install 'tritonclient[http]'``. Random inputs of the model's shape are sent
twice, as binary tensor data (the client's default) and as JSON, with the top-3 class
names asked for through the ``top_k`` request parameter (a dnnspec extension; Triton
answers the same question with ``class_count`` on a requested output, shown as well).
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.http as httpclient


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="127.0.0.1:8000", help="host:port of the server (no http://)")
    p.add_argument("--model", required=True, help="model name, e.g. the ONNX file name without .onnx")
    p.add_argument("--rows", type=int, default=4)
    args = p.parse_args()

    client = httpclient.InferenceServerClient(args.url)
    assert client.is_server_ready(), "server not ready"
    meta = client.get_model_metadata(args.model)
    print("server:", client.get_server_metadata()["name"], "| model:", meta["name"], "versions", meta["versions"])
    spec = meta["inputs"][0]
    shape = [args.rows if d == -1 else d for d in spec["shape"]]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)

    for binary in (True, False):
        inp = httpclient.InferInput(spec["name"], shape, spec["datatype"])
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
        result = client.infer(args.model, [inp], outputs=[out], parameters={"top_k": 3})
        probs = result.as_numpy("probabilities")
        names = result.as_numpy("top_k_classes")
        print(f"binary={binary}: probabilities {probs.shape}, row 0 top-3: "
              f"{[n.decode() if isinstance(n, bytes) else n for n in names[0]]}")

    # The Triton way: classification on an output gives "score:index:label" strings.
    inp = httpclient.InferInput(spec["name"], shape, spec["datatype"])
    inp.set_data_from_numpy(x)
    result = client.infer(args.model, [inp], outputs=[httpclient.InferRequestedOutput("probabilities", class_count=2)])
    print("classification, row 0:", [s.decode() for s in result.as_numpy("probabilities")[0]])
    client.close()


if __name__ == "__main__":
    main()
