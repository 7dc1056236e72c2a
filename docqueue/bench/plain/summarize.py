"""summarize with the Auto model (transformers 5 has no summarization pipeline):
greedy, batches of 64 in input order."""

import json
import sys

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

model_dir, source, out, threads, dtype, new_tokens = sys.argv[1:7]
torch.set_num_threads(int(threads))
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
with open(source) as lines:
    texts = [json.loads(line)["text"] for line in lines if line.strip()]
with open(out, "w") as results, torch.inference_mode():
    for start in range(0, len(texts), 64):
        batch = tokenizer(
            texts[start : start + 64], padding=True, truncation=True, return_tensors="pt"
        )
        ids = model.generate(**batch, max_new_tokens=int(new_tokens), do_sample=False)
        for summary in tokenizer.batch_decode(ids, skip_special_tokens=True):
            results.write(json.dumps({"summary": summary}) + "\n")
