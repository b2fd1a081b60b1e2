"""Send 1,000 requests from 100 users; count which version answered."""
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient("localhost:8001")
table = pq.read_table("examples/models/digits/1/reference.parquet")
pixels = np.column_stack([table.column(f"px_{i}").to_numpy() for i in range(64)]).astype(np.float32)
served: Counter[str] = Counter()
for i in range(1000):
    row = grpcclient.InferInput("input", [1, 64], "FP32")
    row.set_data_from_numpy(pixels[i : i + 1])
    result = client.infer("digits", [row], headers={"x-user-id": f"user-{i % 100}"})
    served[result.get_response().model_version] += 1
print(dict(sorted(served.items())))
