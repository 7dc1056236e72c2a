"""Formats: reading documents from files and writing results to them (JSONL, CSV,
JSON arrays, Parquet, Label Studio), and the OpenAI batch line formats.  Pure
functions over streams and rows: nothing here talks to SQL or Redis."""
