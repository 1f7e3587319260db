"""load_tokenizer: a Hugging Face `tokenizers.Tokenizer` from a model directory."""
def load_tokenizer(path):
  """Returns a tokenizers.Tokenizer."""
  raise NotImplementedError
