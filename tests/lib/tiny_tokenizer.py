"""A tiny byte-level BPE tokenizer for tests that need a tokenizer.json next to a random model.

tiny_tokenizer(corpus, vocab_size=300) trains one the way HF's GPT-2 / SmolLM family is built (ByteLevel
pre-tokenizer without a prefix space, the ByteLevel decoder, every byte in the initial alphabet) with the chat
special tokens <|endoftext|>, <|im_start|> and <|im_end|> (ids 0, 1, 2). Deterministic for a given corpus.
Shell tests use it from their Python heredocs:
    sys.path.insert(0, os.environ["TAILOR_SRC"] + "/tests/lib"); from tiny_tokenizer import tiny_tokenizer
"""
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer(corpus, vocab_size=300):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, tr)
    return tok
