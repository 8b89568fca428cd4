/* tl_tokenizer: byte-level BPE tokenization as HF `tokenizers` does it (SmolLM/SmolLM2, GPT-2, Llama 3, Qwen2 and
 * any other byte-level BPE whose split regex PCRE2 accepts), plus the ChatML chat template.
 *
 * Sources: an HF tokenizer.json (model BPE, byte-level, added tokens, Split / Digits / ByteLevel pre-tokenizers) or
 * the tokenizer.ggml.* arrays of a GGUF file. Encoding gives exactly the ids of
 * `tokenizers.Tokenizer.encode(text, add_special_tokens=False).ids`; decoding is the byte-level inverse.
 * What is supported and what is refused is listed in docs/tokenizer.md. A tokenizer is immutable after loading
 * and may be shared between threads. */
#ifndef TL_TOKENIZER_H
#define TL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/tl_status.h"

typedef struct tl_tokenizer tl_tokenizer;

/* Loads an HF tokenizer.json. Anything this module would encode differently from HF (another model type, a
 * normalizer, unknown pre-tokenizers, a regex PCRE2 refuses, BPE dropout, ...) is refused with TL_ERR_INPUT naming
 * the file and the field. */
tl_status tl_tokenizer_load_json(const char *path, tl_tokenizer **out, tl_error *err);

/* GGUF token types (tokenizer.ggml.token_type). CONTROL and USER_DEFINED tokens are matched in text as added
 * tokens, the way llama.cpp does with special-token parsing on. */
enum {
    TL_TOKTYPE_NORMAL = 1,
    TL_TOKTYPE_UNKNOWN = 2,
    TL_TOKTYPE_CONTROL = 3,
    TL_TOKTYPE_USER_DEFINED = 4,
    TL_TOKTYPE_UNUSED = 5,
    TL_TOKTYPE_BYTE = 6
};

/* A GGUF file's tokenizer arrays (tokenizer.ggml.*), borrowed. */
typedef struct {
    const char *model;          /* tokenizer.ggml.model: must be "gpt2" (byte-level BPE) */
    const char *pre;            /* tokenizer.ggml.pre, or NULL (then "default") */
    const char *const *tokens;  /* [n_tokens] the byte-level string of id i */
    size_t n_tokens;
    const char *const *merges;  /* [n_merges] "left right", rank i */
    size_t n_merges;
    const int32_t *token_types; /* [n_tokens] or NULL (all normal) */
    int32_t bos_id;             /* tokenizer.ggml.bos_token_id or -1 */
} tl_gguf_vocab;

/* Builds a tokenizer from GGUF's arrays. pre is a name llama.cpp knows mapped to its models' split
 * (docs/tokenizer.md), e.g. "smollm" (Digits + GPT-2 regex), "llama-bpe" (Llama 3 regex, merges ignored for
 * whole-word vocabulary hits), "qwen2" (Qwen2 regex), "gpt2" or "default" (GPT-2 regex); another name is
 * TL_ERR_INPUT naming the key. `what` names the source in error messages (the GGUF path). */
tl_status tl_tokenizer_from_vocab(const char *what, const tl_gguf_vocab *v, tl_tokenizer **out, tl_error *err);

void tl_tokenizer_free(tl_tokenizer *t);

/* Flags of tl_tokenizer_encode. */
#define TL_TOK_ADD_BOS 1u /* prepend the BOS token (TL_ERR_INPUT when the tokenizer has none) */

/* Encodes len bytes of text into *ids (malloc'ed, *n entries; the caller frees). Text need not be valid UTF-8:
 * each invalid byte is taken as one character that is neither letter, number nor space, and byte-level BPE
 * encodes it like any byte, so decode gives the bytes back. Added/special tokens in the text are matched first
 * (leftmost, then longest). */
tl_status tl_tokenizer_encode(const tl_tokenizer *t, const char *text, size_t len, unsigned flags, int32_t **ids,
                              size_t *n, tl_error *err);

/* Decodes ids into *text (malloc'ed, NUL-terminated, *len bytes without the NUL): byte-level inverse for vocabulary
 * tokens, the content for added tokens. An id outside the vocabulary is TL_ERR_INPUT. */
tl_status tl_tokenizer_decode(const tl_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len,
                              tl_error *err);

/* The id of a token given by its string (an added token's content, or a vocabulary entry in its byte-level
 * spelling); -1 when there is none. */
int32_t tl_tokenizer_token_id(const tl_tokenizer *t, const char *token);

/* Number of ids (one more than the largest id). */
size_t tl_tokenizer_vocab_size(const tl_tokenizer *t);

/* BOS id, -1 when none is known. tokenizer.json: the first special token of a TemplateProcessing post-processor's
 * "single" template; GGUF: bos_id. */
int32_t tl_tokenizer_bos_id(const tl_tokenizer *t);
/* Overrides the BOS id (e.g. from tokenizer_config.json's bos_token); -1 clears it. TL_ERR_INPUT if out of range. */
tl_status tl_tokenizer_set_bos_id(tl_tokenizer *t, int32_t id, tl_error *err);

/* ---- ChatML ---- */

typedef struct {
    const char *role;    /* "system", "user", "assistant", ... */
    const char *content;
} tl_chat_msg;

/* Renders messages as "<|im_start|>{role}\n{content}<|im_end|>\n" each, then "<|im_start|>assistant\n" when
 * add_generation_prompt. No default system message is inserted (SmolLM2's template adds one when the first
 * message is not a system message; tailor leaves that to the data). *out is malloc'ed and NUL-terminated. */
tl_status tl_chat_render(const tl_chat_msg *msgs, size_t n, int add_generation_prompt, char **out, size_t *len,
                         tl_error *err);

/* ---- internals shared by data/tokenizer.c, data/tokenizer_pretok.c and tests/unit/test_tokenizer.c ---- */

/* Character classes: \p{L}, \p{N} (the Digits step), Oniguruma's \s (U+0009-000D, U+0085, Zs, Zl, Zp), anything
 * else. */
enum { TL_UC_OTHER = 0, TL_UC_LETTER = 1, TL_UC_NUMBER = 2, TL_UC_SPACE = 3 };
int tl_unicode_class(uint32_t cp);
/* NFC quick check (UAX #15) inputs: 1 if NFC_Quick_Check(cp) is No or Maybe; the canonical combining class. */
int tl_unicode_nfc_qc_not_yes(uint32_t cp);
int tl_unicode_ccc(uint32_t cp);
/* Decodes the character at s[pos] (pos < len) into *cp and returns its byte length. An invalid or truncated
 * sequence decodes as its first byte alone, *cp = TL_UC_INVALID_BASE + byte (class TL_UC_OTHER). */
#define TL_UC_INVALID_BASE 0x110000u
size_t tl_utf8_next(const uint8_t *s, size_t len, size_t pos, uint32_t *cp);

/* ---- split regexes (PCRE2; data/tokenizer_pretok.c) ---- */

/* The split patterns of the models tailor names (GGUF tokenizer.ggml.pre maps to them; docs/tokenizer.md). */
typedef enum { TL_RE_GPT2 = 0, TL_RE_LLAMA3 = 1, TL_RE_QWEN2 = 2 } tl_pretok_regex;
/* The pattern as tokenizer.json spells it; NULL for an unknown value. */
const char *tl_pretok_pattern(tl_pretok_regex re);

/* A compiled split regex: immutable, shareable between threads; each thread matches with its own tl_regex_match. */
typedef struct tl_regex tl_regex;
typedef struct tl_regex_match tl_regex_match;

/* Compiles an HF (Oniguruma syntax) pattern with PCRE2_UTF | PCRE2_UCP and JIT-compiles it. The few constructs whose
 * PCRE2 meaning differs are translated first (docs/tokenizer.md); literal: the pattern is a plain string (a Split's
 * String pattern). A pattern PCRE2 refuses is TL_ERR_INPUT "<what>: <field>: PCRE2 refuses the regex at offset N:
 * <PCRE2's message>", the offset counted in the pattern as given. */
tl_status tl_regex_compile(const char *pattern, int literal, const char *what, const char *field, tl_regex **out,
                           tl_error *err);
void tl_regex_free(tl_regex *re);
/* 1 when matching uses PCRE2's JIT, 0 when the interpreter (JIT unavailable on this build or platform). */
int tl_regex_jit(const tl_regex *re);
tl_regex_match *tl_regex_match_create(void); /* NULL when out of memory */
void tl_regex_match_free(tl_regex_match *md);

#define TL_REGEX_ANCHORED 1u /* tl_regex_find: the match must start at pos */
/* The leftmost match in s[0..len) starting at or after pos; s must be valid UTF-8 (tl_utf8_valid in tl_dataset.h: it is not checked
 * again). Returns 1 with [*start, *end), 0 when there is none, -1 with err set when PCRE2 fails (resource limits). */
int tl_regex_find(const tl_regex *re, tl_regex_match *md, const uint8_t *s, size_t len, size_t pos, uint32_t flags,
                  size_t *start, size_t *end, tl_error *err);

/* Length in bytes of the match of a named pattern starting exactly at s[pos] (s[0..len) valid UTF-8), 0 if none. It
 * compiles the pattern on every call: for tests. */
size_t tl_pretok_match(tl_pretok_regex re, const uint8_t *s, size_t len, size_t pos);

#endif
