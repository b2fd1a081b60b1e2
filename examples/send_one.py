"""Send one batch of four digits to the gateway at localhost:8001 and print the answer."""

import numpy as np
import pyarrow.parquet as pq
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient("localhost:8001")
table = pq.read_table("examples/models/digits/1/reference.parquet")
pixels = np.column_stack([table.column(f"px_{i}").to_numpy() for i in range(64)]).astype(np.float32)

batch = grpcclient.InferInput("input", [4, 64], "FP32")
batch.set_data_from_numpy(pixels[:4])
result = client.infer("digits", [batch], request_id="readme-1")
print("answered by version", result.get_response().model_version)
print("labels", result.as_numpy("label"), "truth", table.column("label").to_numpy()[:4])
