"""load_tokenizer gives the same ids as the transformers tokenizers, for all three directory layouts.

The tokenizers are trained here on a few lines of text (nothing is downloaded), saved in the
layout of each family, and loaded both by tfm and by transformers. One loader, one interface: the
same function reads tfm's own tokenizer.json and a run directory, and pairs are encoded with a
pretrained tokenizer's template exactly as transformers does.
"""

import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from tokenizers.implementations import ByteLevelBPETokenizer  # noqa: E402

import tfm  # noqa: E402
from tfm.data.tokenizers import ByteTokenizer, CharTokenizer, HFTokenizer, save_tokenizer  # noqa: E402

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
    ids = ours.encode(text, add_special_tokens=True).tolist()
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
    assert ours.encode(text, add_special_tokens=True).tolist() == gpt2(text)["input_ids"]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}))
  roberta = transformers.RobertaTokenizer(vocab=vocab, merges=merges)
  ours = tfm.load_tokenizer(str(tmp_path))
  for text in TEXTS:
    ids = ours.encode(text, add_special_tokens=True).tolist()
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
    assert ours.encode(text, add_special_tokens=True).tolist() == ref(text)["input_ids"]


def test_directory_without_tokenizer_is_a_clear_error(tmp_path):
  (tmp_path / "spiece.model").write_bytes(b"\0")
  with pytest.raises(FileNotFoundError, match="expected tokenizer.json, vocab.txt.*SentencePiece"):
    tfm.load_tokenizer(str(tmp_path))


def test_one_loader_for_tfm_files_run_directories_and_model_directories(tmp_path):
  byte = tmp_path / "byte.json"
  save_tokenizer(ByteTokenizer(num_sentinels=2), str(byte))
  assert isinstance(tfm.load_tokenizer(str(byte)), ByteTokenizer)
  assert tfm.load_tokenizer(str(byte)).sentinel_ids.tolist() == [3, 4]
  run = tmp_path / "run"
  run.mkdir()
  save_tokenizer(CharTokenizer.train(CORPUS), str(run / "tokenizer.json"))
  (run / "config.json").write_text(json.dumps({"config": {}, "model_config": {"family": "decoder"}}))
  char = tfm.load_tokenizer(str(run))
  assert isinstance(char, CharTokenizer) and char.decode(char.encode("speak")) == "speak"
  (tmp_path / "bert").mkdir()
  directory = _wordpiece_vocab(tmp_path / "bert")
  bert = tfm.load_tokenizer(str(directory))
  assert isinstance(bert, HFTokenizer)
  ref = transformers.BertTokenizer(vocab=str(directory / "vocab.txt"))
  assert (bert.pad_id, bert.eos_id, bert.mask_id) == (ref.pad_token_id, ref.sep_token_id, ref.mask_token_id)
  assert bert.encode(TEXTS[0]).tolist() == ref(TEXTS[0], add_special_tokens=False)["input_ids"]


def test_model_config_names_the_end_and_padding_ids(tmp_path):
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<unk>"]))
  tok.save(str(tmp_path / "tokenizer.json"))
  plain = tfm.load_tokenizer(str(tmp_path / "tokenizer.json"))
  assert (plain.eos_id, plain.pad_id) == (1, 1)  # "</s>" by name; no padding token: pads with it
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "eos_token_id": [2, 1], "pad_token_id": 0}))
  model = tfm.load_tokenizer(str(tmp_path))
  assert (model.eos_id, model.pad_id) == (2, 0)


def test_pairs_use_a_pretrained_template_else_tfm_eos_separators(tmp_path):
  directory = _wordpiece_vocab(tmp_path)
  bert = tfm.load_tokenizer(str(directory))
  ref = transformers.BertTokenizer(vocab=str(directory / "vocab.txt"))
  ids, types = bert.encode_pairs(TEXTS[:2], TEXTS[1:3])
  for i in range(2):
    want = ref(TEXTS[i], TEXTS[i + 1])
    assert ids[i].tolist() == want["input_ids"] and types[i].tolist() == want["token_type_ids"]
  byte = ByteTokenizer()
  ids, types = byte.encode_pairs(["ab"], ["c"])
  e = byte.eos_id
  assert ids[0].tolist() == [e, *byte.encode("ab").tolist(), e, *byte.encode("c").tolist(), e]
  assert types[0].tolist() == [0, 0, 0, 0, 1, 1]
  untemplated = Tokenizer(models.WordLevel({"[PAD]": 0, "[EOS]": 1, "a": 2}, unk_token="[PAD]"))
  untemplated.pre_tokenizer = pre_tokenizers.Whitespace()
  ids, _ = HFTokenizer(untemplated, ["[PAD]", "[EOS]"]).encode_pairs(["a"])
  np.testing.assert_array_equal(ids[0], [1, 2, 1])
