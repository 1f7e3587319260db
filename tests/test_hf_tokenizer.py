"""load_tokenizer gives the same ids as the transformers tokenizers, for all three directory layouts.

The tokenizers are trained here on a few lines of text (nothing is downloaded), saved in the
layout of each family, and loaded both by tfm and by transformers.
"""

import json

import pytest

transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from tokenizers.implementations import ByteLevelBPETokenizer  # noqa: E402

import tfm  # noqa: E402

CORPUS = [
    "First Citizen: Before we proceed any further, hear me speak.",
    "All: Speak, speak. You are all resolved rather to die than to famish?",
    "Café naïve résumé — Ünïcödé and CamelCase words, numbers 12345 and symbols #!?",
    "the quick brown fox jumps over the lazy dog " * 3,
]
TEXTS = ["Hear me speak, First Citizen!", "Unseen WORDS: résumé, zebra-crossing 987.", "  spaces   and\ttabs "]


def _wordpiece_vocab(tmp_path):
  tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
      vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
  vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
  (tmp_path / "vocab.txt").write_text("\n".join(t for t, _ in vocab) + "\n")
  return tmp_path


def test_wordpiece_vocab_txt_matches_bert_tokenizer(tmp_path):
  directory = _wordpiece_vocab(tmp_path)
  ours = tfm.load_tokenizer(str(directory))
  ref = transformers.BertTokenizer(vocab=str(directory / "vocab.txt"))
  for text in TEXTS:
    ids = ours.encode(text).ids
    assert ids == ref(text)["input_ids"]
    assert ids[0] == ref.cls_token_id and ids[-1] == ref.sep_token_id


def test_byte_level_bpe_vocab_and_merges_match_gpt2_and_roberta(tmp_path):
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(CORPUS, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>",
                                                                   "<|endoftext|>"])
  bpe.save_model(str(tmp_path))
  vocab, merges = str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")
  gpt2 = transformers.GPT2Tokenizer(vocab=vocab, merges=merges)
  ours = tfm.load_tokenizer(str(tmp_path))
  for text in TEXTS:
    assert ours.encode(text).ids == gpt2(text)["input_ids"]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}))
  roberta = transformers.RobertaTokenizer(vocab=vocab, merges=merges)
  ours = tfm.load_tokenizer(str(tmp_path))
  for text in TEXTS:
    ids = ours.encode(text).ids
    assert ids == roberta(text)["input_ids"]
    assert ids[0] == roberta.bos_token_id and ids[-1] == roberta.eos_token_id


def test_tokenizer_json_matches_fast_tokenizer(tmp_path):
  tok = Tokenizer(models.Unigram())
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"],
                                                          unk_token="<unk>"))
  tok.save(str(tmp_path / "tokenizer.json"))
  ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
  ours = tfm.load_tokenizer(str(tmp_path))
  for text in TEXTS:
    assert ours.encode(text).ids == ref(text)["input_ids"]


def test_directory_without_tokenizer_is_a_clear_error(tmp_path):
  (tmp_path / "spiece.model").write_bytes(b"\0")
  with pytest.raises(FileNotFoundError, match="expected tokenizer.json, vocab.txt.*SentencePiece"):
    tfm.load_tokenizer(str(tmp_path))
