"""Extractive question answering, as transformers 4's question-answering pipeline
answered (transformers 5 removed it): the question and the context tokenized as a
pair, the context cut into windows of ``max_seq_len`` tokens that overlap by
``doc_stride``; in each window the start and end logits of the tokens that may
begin or end an answer (the context's, and the first token, which some models use
for "no answer") are softmaxed, a span's score is its start's probability times
its end's, spans longer than ``max_answer_len`` or ending before they start are
dropped, and the best spans of every window are widened to whole words and pooled
(the same answer found twice, in any case, adds its scores)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from docqueue.params import InvalidParams
from docqueue.protocol import Document
from docqueue.worker.runners.base import Features, Output, Rows, Runner, collate_rows

#: What a window's masked logits are set to (the pipeline's value).
MASKED = -10000.0
#: The "no answer" score before any window is read (the pipeline's value).
NO_NULL_SCORE = 1000000.0


@dataclass(frozen=True)
class Window:
    """What postprocess needs of one window besides its logits: which tokens may
    be part of an answer (1) or not (0), and its tokenizer encoding (offsets and
    words, to map tokens back to the context's characters)."""

    allowed: Any  # numpy int array, one per token
    encoding: Any  # tokenizers.Encoding


class AnswerRunner(Runner):
    task = "answer"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.with_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())
        # the pipeline's rule: a tokenizer that pads on the left puts the context first
        self.question_first = getattr(self.tokenizer, "padding_side", "right") == "right"

    def window(self, params: dict[str, Any]) -> tuple[int, int]:
        """The tokens a window holds and the tokens two windows share."""
        limit = self.loaded.max_length
        window = params.get("max_seq_len") or min(limit, 384)
        if window > limit:
            raise InvalidParams(
                f"max_seq_len {window} is past the model's window of {limit} tokens"
            )
        stride = params.get("doc_stride")
        stride = min(window // 2, 128) if stride is None else stride
        if stride > window:
            raise InvalidParams(f"doc_stride ({stride}) is larger than max_seq_len ({window})")
        return window, stride

    def check(self, params: dict[str, Any]) -> None:
        self.window(params)
        if not getattr(self.tokenizer, "is_fast", False):
            raise InvalidParams(
                f"model {self.loaded.name} has no fast tokenizer (answer needs one)"
            )

    def preprocess(self, docs: Sequence[Document], params: dict[str, Any]) -> list[Features | str]:
        window, stride = self.window(params)
        questions, contexts = [], []
        for doc in docs:
            if not isinstance(doc, dict):  # refused at intake: answer takes no text
                raise InvalidParams("answer takes a question and a context, not text")
            questions.append(doc["question"])
            contexts.append(doc["context"])
        # the tokens a question takes in a pair, special tokens included
        empty = [""] * len(docs)
        taken = self.tokenizer(
            *((questions, empty) if self.question_first else (empty, questions)),
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        found: list[Features | str] = [""] * len(docs)
        by_stride: dict[int, list[int]] = {}
        for i, ids in enumerate(taken):
            room = window - len(ids)
            if room < 1:
                found[i] = (
                    f"the question is too long: it takes {len(ids)} of the {window} tokens "
                    "a window holds, leaving none for the context (shorten it, or raise "
                    "max_seq_len up to the model's window)"
                )
                continue
            # the tokenizer needs the stride below the room left for the context
            by_stride.setdefault(min(stride, room - 1), []).append(i)
        for shared, indices in by_stride.items():
            pairs = [(questions[i], contexts[i]) for i in indices]
            for i, rows in zip(indices, self.windows(pairs, window, shared), strict=True):
                found[i] = rows
        return found

    def windows(self, pairs: Sequence[tuple[str, str]], window: int, stride: int) -> list[Rows]:
        """Each (question, context) pair as the rows of its windows."""
        import numpy as np

        first, second = zip(*pairs, strict=True) if self.question_first else _swapped(pairs)
        encoded = self.tokenizer(
            list(first),
            list(second),
            truncation="only_second" if self.question_first else "only_first",
            max_length=window,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=self.with_types,
        )
        context_index = 1 if self.question_first else 0
        cls = self.tokenizer.cls_token_id
        found = [Rows([], rows=[], types=[] if self.with_types else None) for _ in pairs]
        for row, sample in enumerate(encoded["overflow_to_sample_mapping"]):
            ids = encoded["input_ids"][row]
            allowed = np.fromiter(
                (s == context_index for s in encoded.sequence_ids(row)), dtype=np.int64
            )
            if cls is not None:
                allowed[np.asarray(ids) == cls] = 1
            doc = found[sample]
            doc.rows.append(ids)
            if doc.types is not None:
                doc.types.append(encoded["token_type_ids"][row])
            doc.extra.setdefault("windows", []).append(Window(allowed, encoded.encodings[row]))
        for doc, (_, context) in zip(found, pairs, strict=True):
            doc.extra["context"] = context
        return found

    def collate(self, batch: Sequence[Features]) -> dict[str, Any]:
        return collate_rows([_rows(f) for f in batch], self.tokenizer.pad_token_id)

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        import torch

        def run(chunk: dict[str, Any]) -> Any:
            out = self.model(**self.to_device(chunk))
            return torch.stack((out.start_logits, out.end_logits), dim=1).float()

        return self.by_rows(inputs, run)

    def postprocess(
        self, raw: Any, batch: Sequence[Features], params: dict[str, Any]
    ) -> list[Output]:
        logits = raw.numpy()
        outputs, row = [], 0
        for features in batch:
            windows: list[Window] = features.extra["windows"]
            answers = self.answers(logits[row : row + len(windows)], features, params)
            row += len(windows)
            best = answers[0] if answers else {"answer": "", "score": 0.0, "start": 0, "end": 0}
            output = dict(best)
            if params["top_k"] > 1:
                output["answers"] = answers
            outputs.append(Output(output))
        return outputs

    def answers(self, logits: Any, features: Features, params: dict[str, Any]) -> list[dict]:
        """A document's best answers, best first, from its windows' logits."""
        top_k, align = params["top_k"], params["align_to_words"]
        impossible = params["handle_impossible_answer"]
        # words widen spans, and two spans may widen to one answer: take more
        candidates = top_k * 2 + 10 if align else top_k
        context: str = features.extra["context"]
        found: dict[str, dict[str, Any]] = {}  # by answer, any case
        null = NO_NULL_SCORE
        for window, both in zip(features.extra["windows"], logits, strict=True):
            length = len(window.allowed)
            starts, ends, scores, null = choose_spans(
                both[0, :length],
                both[1, :length],
                window.allowed,
                null,
                candidates,
                impossible,
                params["max_answer_len"],
            )
            sequence = 1 if self.question_first else 0
            for s, e, score in zip(starts, ends, scores, strict=True):
                first, last = char_span(window.encoding, int(s), int(e), sequence, align)
                text = context[first:last]
                same = found.get(text.lower())
                if same is not None:
                    same["score"] += float(score)
                else:
                    found[text.lower()] = {
                        "answer": text,
                        "score": float(score),
                        "start": first,
                        "end": last,
                    }
        answers = list(found.values())
        if impossible:
            answers.append({"answer": "", "score": null, "start": 0, "end": 0})
        return sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]


def choose_spans(
    start: Any,
    end: Any,
    allowed: Any,
    null: float,
    top_k: int,
    impossible: bool,
    max_answer_len: int,
) -> tuple[Any, Any, Any, float]:
    """The ``top_k`` best (start, end) token spans of one window and their scores,
    and the lowest "no answer" score seen so far (the first token's start and end
    probabilities' product, when ``impossible`` answers are allowed)."""
    import numpy as np

    blocked = allowed == 0
    start = np.where(blocked, MASKED, start)[None]
    end = np.where(blocked, MASKED, end)[None]
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if impossible:
        null = min(null, float(start[0, 0] * end[0, 0]))
    start[0, 0] = end[0, 0] = 0.0
    # every span's score; none that ends before it starts or runs past the limit
    spans = np.tril(np.triu(np.matmul(start[..., None], end[:, None, :])), max_answer_len - 1)
    flat = spans.flatten()
    if top_k == 1:
        order = np.array([np.argmax(flat)])
    elif len(flat) < top_k:
        order = np.argsort(-flat)
    else:
        best = np.argpartition(-flat, top_k)[:top_k]
        order = best[np.argsort(-flat[best])]
    starts, ends = np.unravel_index(order, spans.shape)[1:]
    may = allowed.nonzero()
    kept = np.isin(starts, may) & np.isin(ends, may)
    starts, ends = starts[kept], ends[kept]
    return starts, ends, spans[0, starts, ends], null


def char_span(encoding: Any, start: int, end: int, sequence: int, align: bool) -> tuple[int, int]:
    """The characters of the context that tokens ``start`` to ``end`` cover, widened
    to whole words when ``align`` (tokens outside any word keep their offsets)."""
    if align:
        first_word, last_word = encoding.token_to_word(start), encoding.token_to_word(end)
        if first_word is not None and last_word is not None:
            first = encoding.word_to_chars(first_word, sequence)
            last = encoding.word_to_chars(last_word, sequence)
            if first is not None and last is not None:
                return first[0], last[1]
    return encoding.offsets[start][0], encoding.offsets[end][1]


def _swapped(pairs: Sequence[tuple[str, str]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    questions, contexts = zip(*pairs, strict=True)
    return contexts, questions


def _rows(features: Features) -> Rows:
    if not isinstance(features, Rows):
        raise TypeError("answer runs windows its own preprocess tokenized")
    return features
