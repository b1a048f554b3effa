"""A small T5 tokenizer made offline, for model=flux-tiny: the same kind of tokenizer as FLUX's (a SentencePiece
Unigram model behind `T5TokenizerFast`: `</s>` appended, `<pad>` id 0, `▁` word boundaries), with a vocabulary
of a few hundred pieces instead of 32,000, written as `tokenizer.json` with the `tokenizers` library. No download.

Every text tokenizes: single characters are pieces, so a word the vocabulary lacks splits into letters.
"""

from __future__ import annotations

import string
from pathlib import Path

SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as in T5
# Whole words as pieces, so prompts are not all letters; any others split into the character pieces.
_WORDS = ("a an the and of in on at to with by for from is are her his their its who as it that this "
          "man woman girl boy cat dog office desk coffee comic panel style city street night day light red blue "
          "green black white old young small big happy sad walks sits looks holds window computer paper book "
          "morning evening rain sun sky tree house room door car").split()


def pieces() -> list[tuple[str, float]]:
    """The Unigram vocabulary: (piece, log-probability); longer pieces score higher so whole words win."""
    vocab = [(s, 0.0) for s in SPECIALS]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    vocab += [("\u2581", -2.0)] + [(c, -8.0) for c in chars] + [("\u2581" + c, -7.0) for c in chars]
    vocab += [("\u2581" + w, -3.0) for w in _WORDS]
    return vocab


def write_tokenizer_files(directory: Path) -> Path:
    """A `T5TokenizerFast` folder (tokenizer.json + its config) under `directory`; returns it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = pieces()
    tok = Tokenizer(models.Unigram(vocab, unk_id=SPECIALS.index("<unk>")))
    tok.normalizer = normalizers.Sequence([normalizers.Replace("  ", " "), normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    eos = SPECIALS.index("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    raw = directory / "raw-tokenizer.json"
    tok.save(str(raw))
    fast = T5TokenizerFast(tokenizer_file=str(raw), eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=512)
    fast.save_pretrained(directory)
    raw.unlink()
    return directory


def vocab_size() -> int:
    return len(pieces())
