"""Send 1,000 digits as a scanner with a bright top edge would: the first two rows of pixels raised by 4."""
import numpy as np
import pyarrow.parquet as pq
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient("localhost:8001")
table = pq.read_table("examples/models/digits/1/reference.parquet")
pixels = np.column_stack([table.column(f"px_{i}").to_numpy() for i in range(64)]).astype(np.float32)
pixels[:, :16] = np.minimum(pixels[:, :16] + 4, 16)  # px_0 .. px_15, the top two rows of the 8x8 image
for start in range(0, 1000, 10):
    batch = grpcclient.InferInput("input", [10, 64], "FP32")
    batch.set_data_from_numpy(pixels[start : start + 10])
    client.infer("digits", [batch])
print("sent 1000 drifted rows")
