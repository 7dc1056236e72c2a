"""classify with ``pipeline("text-classification")``, batches of 64."""

import json
import sys

import torch
from transformers import pipeline

model, source, out, threads, dtype = sys.argv[1:6]
torch.set_num_threads(int(threads))
classifier = pipeline("text-classification", model=model, dtype=getattr(torch, dtype))
with open(source) as lines:
    texts = [json.loads(line)["text"] for line in lines if line.strip()]
with open(out, "w") as results:
    for found in classifier(texts, batch_size=64, truncation=True):
        results.write(json.dumps({"label": found["label"], "score": found["score"]}) + "\n")
