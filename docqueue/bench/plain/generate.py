"""generate with ``pipeline("text-generation")``: greedy, batches of 64."""

import json
import sys

import torch
from transformers import pipeline

model, source, out, threads, dtype, new_tokens = sys.argv[1:7]
torch.set_num_threads(int(threads))
generator = pipeline("text-generation", model=model, dtype=getattr(torch, dtype))
tokenizer = generator.tokenizer
assert tokenizer is not None
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
tokenizer.padding_side = "left"
with open(source) as lines:
    texts = [json.loads(line)["text"] for line in lines if line.strip()]
found = generator(
    texts,
    batch_size=64,
    max_new_tokens=int(new_tokens),
    do_sample=False,
    return_full_text=False,
)
with open(out, "w") as results:
    for first, *_ in found:
        results.write(json.dumps({"text": first["generated_text"]}) + "\n")
