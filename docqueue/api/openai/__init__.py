"""The OpenAI-compatible routes: ``files`` and ``batches`` (the Batch API, over
:mod:`docqueue.core.files` and :mod:`docqueue.core.batches`), ``sync`` (embeddings,
completions, chat completions and models, answered as they finish), and
``schemas`` (their request and response models).  They parse, refuse and shape;
what they do is the core's, which a Python caller reaches as ``client.files`` and
``client.batches``."""
