"""Named entities with a token-classification head, the answers
``pipeline("token-classification")`` gives, batched.

A document is tokenized whole by the fast tokenizer into windows of the model's
length that overlap by ``stride`` tokens; every window of every document of a batch
is one padded row.  Each window's tokens become entities as the parameters say
(see :mod:`docqueue.tasks.ner`), and the entities of overlapping windows are merged:
where two overlap, the longer one stays (of two as long, the surer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from docqueue.params import InvalidParams
from docqueue.protocol import Document
from docqueue.worker.runners.base import Features, Output, Rows, Runner, collate_rows


@dataclass
class Piece:
    """One token of a window, as aggregation sees it."""

    #: Its position in the document's tokens (special tokens of the first window
    #: counted), which is its position in the window for a one-window document.
    index: int
    #: The token as the vocabulary writes it (``##ing``), or the text it covers
    #: when it is the unknown token.
    token: str
    probs: Any
    start: int
    end: int
    #: Whether it continues the word of the token before it.
    continues: bool
    #: Its most likely label's id, and that label's probability.
    best: int
    score: float


class NerRunner(Runner):
    task = "ner"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(
                f"model {self.loaded.name}: ner needs a fast tokenizer (character offsets)"
            )
        self.specials = self.tokenizer.num_special_tokens_to_add(pair=False)
        backend = self.tokenizer.backend_tokenizer.model
        #: WordPiece marks word continuations ("##"); other tokenizers are read by
        #: the text around each token.
        self.marks_continuations = bool(getattr(backend, "continuing_subword_prefix", None))
        config = self.model.config
        self.labels = [str(config.id2label[i]) for i in range(config.num_labels)]

    def stride(self, params: dict[str, Any]) -> int:
        given = params.get("stride")
        return default_stride(self.loaded.max_length, self.specials) if given is None else given

    def check(self, params: dict[str, Any]) -> None:
        room = self.loaded.max_length - self.specials
        if self.stride(params) >= room:
            raise InvalidParams(
                f"ner: stride {params.get('stride')} must be less than the {room} tokens "
                f"of text a window of model {self.loaded.name} holds"
            )

    def preprocess(self, docs: Sequence[Document], params: dict[str, Any]) -> list[Features | str]:
        texts = []
        for doc in docs:
            if not isinstance(doc, str):
                raise InvalidParams("ner takes text, not chat messages")
            texts.append(doc)
        encoded = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.loaded.max_length,
            stride=self.stride(params),
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        found: list[Features | str] = [
            Rows([], rows=[], extra={"text": t, "offsets": [], "special": []}) for t in texts
        ]
        for row, doc in enumerate(encoded["overflow_to_sample_mapping"]):
            features = found[doc]
            assert isinstance(features, Rows)
            features.rows.append(encoded["input_ids"][row])
            features.extra["offsets"].append(encoded["offset_mapping"][row])
            features.extra["special"].append(encoded["special_tokens_mask"][row])
        return found

    def collate(self, batch: Sequence[Features]) -> dict[str, Any]:
        return collate_rows([_rows(f) for f in batch], self.tokenizer.pad_token_id)

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        return self.by_rows(inputs, self._probabilities)

    def _probabilities(self, inputs: dict[str, Any]) -> Any:
        logits = self.model(**self.to_device(inputs)).logits
        return logits.float().softmax(dim=-1)

    def postprocess(
        self, raw: Any, batch: Sequence[Features], params: dict[str, Any]
    ) -> list[Output]:
        probs = raw.numpy()
        stride = self.stride(params)
        outputs = []
        row = 0
        for features in batch:
            windows = _rows(features)
            found: list[dict[str, Any]] = []
            first = 0  # this window's first text token, counted in the document's text tokens
            lead = _leading(features.extra["special"][0]) if windows.rows else 0
            for w, ids in enumerate(windows.rows):
                offsets = features.extra["offsets"][w]
                special = features.extra["special"][w]
                shift = first + lead - _leading(special)
                text = features.extra["text"]
                pieces = self.pieces(text, ids, offsets, special, probs[row], shift)
                found += self.entities(pieces, params)
                first += sum(1 for s in special if not s) - stride
                row += 1
            if len(windows.rows) > 1:
                found = merge_overlapping(found)
            outputs.append(Output({"entities": found}))
        return outputs

    def pieces(
        self,
        text: str,
        ids: Sequence[int],
        offsets: Sequence[tuple[int, int]],
        special: Sequence[int],
        probs: Any,
        shift: int,
    ) -> list[Piece]:
        """The window's tokens other than special ones; ``shift`` turns a position in
        the window into one in the document."""
        pieces = []
        unknown = self.tokenizer.unk_token_id
        tokens = self.tokenizer.convert_ids_to_tokens(list(ids))
        # Each token's best label and its probability, for the whole window at once.
        bests = probs.argmax(axis=-1).tolist()
        scores = probs.max(axis=-1).tolist()
        for i, token_id in enumerate(ids):
            if special[i]:
                continue
            start, end = offsets[i]
            covered = text[start:end]
            token = tokens[i]
            if token_id == unknown:
                token, continues = covered, False
            elif self.marks_continuations:
                continues = len(token) != len(covered)
            else:
                continues = start > 0 and " " not in text[start - 1 : start + 1]
            pieces.append(
                Piece(i + shift, token, probs[i], start, end, continues, bests[i], scores[i])
            )
        return pieces

    def entities(self, pieces: list[Piece], params: dict[str, Any]) -> list[dict[str, Any]]:
        """The window's entities as the aggregation strategy makes them, less the
        ignored labels."""
        how = params.get("aggregation_strategy", "simple")
        ignored = set(params.get("ignore_labels", ("O",)))
        if how == "none":
            found = [self.token_entity(p) for p in pieces]
            return [e for e in found if e["entity"] not in ignored]
        if how == "simple":
            labelled = [self.token_entity(p) for p in pieces]
        else:
            labelled = [self.word_entity(word, how) for word in _words(pieces)]
        groups = [self.group_entity(g) for g in _groups(labelled)]
        return [g for g in groups if g["entity_group"] not in ignored]

    def token_entity(self, piece: Piece) -> dict[str, Any]:
        return {
            "entity": self.labels[piece.best],
            "score": piece.score,
            "index": piece.index,
            "word": piece.token,
            "start": piece.start,
            "end": piece.end,
        }

    def word_entity(self, word: list[Piece], how: str) -> dict[str, Any]:
        """One label for a whole word: its first token's (``first``), its most
        confident token's (``max``), or the best of its tokens' averaged scores
        (``average``)."""
        import numpy as np

        if how == "first":
            scores = word[0].probs
        elif how == "max":
            surest = word[0]
            for piece in word[1:]:
                if piece.score > surest.score:
                    surest = piece
            scores = surest.probs
        else:
            scores = np.nanmean(np.stack([p.probs for p in word]), axis=0)
        best = int(scores.argmax())
        return {
            "entity": self.labels[best],
            "score": float(scores[best]),
            "word": self.tokenizer.convert_tokens_to_string([p.token for p in word]),
            "start": word[0].start,
            "end": word[-1].end,
        }

    def group_entity(self, group: list[dict[str, Any]]) -> dict[str, Any]:
        import numpy as np

        return {
            "entity_group": group[0]["entity"].split("-", 1)[-1],
            "score": float(np.nanmean([e["score"] for e in group])),
            "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in group]),
            "start": group[0]["start"],
            "end": group[-1]["end"],
        }


def default_stride(window: int, specials: int) -> int:
    """The tokens two windows share when a job names no stride: a quarter of the
    text a window holds."""
    return (window - specials) // 4


def _rows(features: Features) -> Rows:
    if not isinstance(features, Rows):
        raise TypeError("ner runs documents its own preprocess tokenized")
    return features


def _leading(special: Sequence[int]) -> int:
    """Special tokens at the start of a window ([CLS])."""
    count = 0
    for s in special:
        if not s:
            break
        count += 1
    return count


def _words(pieces: list[Piece]) -> list[list[Piece]]:
    """Tokens by word: a token that continues a word joins the one before it (the
    window's first token starts a word whatever it is)."""
    words: list[list[Piece]] = []
    for piece in pieces:
        if words and piece.continues:
            words[-1].append(piece)
        else:
            words.append([piece])
    return words


def _tag(label: str) -> tuple[bool, str]:
    """Whether a label begins an entity (``B-``), and the entity's type (``B-PER``
    and ``I-PER``: PER; a label without either prefix is its own type, inside)."""
    if label.startswith("B-"):
        return True, label[2:]
    if label.startswith("I-"):
        return False, label[2:]
    return False, label


def _groups(labelled: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Neighbours of one entity type together; a ``B-`` label starts a new group."""
    groups: list[list[dict[str, Any]]] = []
    for entity in labelled:
        begins, kind = _tag(entity["entity"])
        if groups and not begins and _tag(groups[-1][-1]["entity"])[1] == kind:
            groups[-1].append(entity)
        else:
            groups.append([entity])
    return groups


def merge_overlapping(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entities of overlapping windows, by start: of two where the second starts
    inside the first, the longer stays, and of two as long the one with the higher
    score."""
    kept: list[dict[str, Any]] = []
    for entity in sorted(entities, key=lambda e: e["start"]):
        if kept and kept[-1]["start"] <= entity["start"] < kept[-1]["end"]:
            last = kept[-1]
            length, last_length = entity["end"] - entity["start"], last["end"] - last["start"]
            if length > last_length or (length == last_length and entity["score"] > last["score"]):
                kept[-1] = entity
        else:
            kept.append(entity)
    return kept
