"""embed with sentence-transformers' ``encode``, batches of 64."""

import json
import sys

import torch
from sentence_transformers import SentenceTransformer

model, source, out, threads, dtype = sys.argv[1:6]
torch.set_num_threads(int(threads))
encoder = SentenceTransformer(model, device="cpu", model_kwargs={"dtype": getattr(torch, dtype)})
with open(source) as lines:
    texts = [json.loads(line)["text"] for line in lines if line.strip()]
vectors = encoder.encode(texts, batch_size=64, normalize_embeddings=True)
with open(out, "w") as results:
    for vector in vectors:
        results.write(json.dumps({"embedding": vector.tolist()}) + "\n")
