/* Unit tests of data/tokenizer.c and data/tokenizer_pretok.c without Python: the PCRE2 regex splits on cases whose
 * HF result is known, the Oniguruma-to-PCRE2 translation, Split regexes and behaviors read from tokenizer.json, UTF-8 decoding of invalid input, BPE merge order, added tokens, decode, BOS,
 * ChatML, and refusals of bad tokenizer.json files and GGUF arrays. tests/torch/test_tokenizer_vs_hf.py compares
 * ids with HF tokenizers on real text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/tl_tokenizer.h"
#include "tests/lib/tl_check.h"


/* Splits s with regex re into pieces joined by '|' (the regexes cover every character, so no gaps). */
static void split(tl_pretok_regex re, const char *s, char *out) {
    size_t n = strlen(s), p = 0, o = 0;
    while (p < n) {
        size_t m = tl_pretok_match(re, (const uint8_t *)s, n, p);
        if (m == 0) m = 1, out[o++] = '!';
        if (p) out[o++] = '|';
        memcpy(out + o, s + p, m);
        o += m, p += m;
    }
    out[o] = '\0';
}

static void check_split(tl_pretok_regex re, const char *s, const char *want) {
    char got[512];
    split(re, s, got);
    CHECK(strcmp(got, want) == 0, "regex %d on \"%s\": got \"%s\", want \"%s\"", (int)re, s, got, want);
}

/* 1 when regex pat (compiled as tokenizer.json's would be) matches the whole of s. */
static int whole_match(const char *pat, const char *s) {
    tl_regex *re = NULL;
    tl_error err = {0};
    if (tl_regex_compile(pat, 0, "t", "f", &re, &err) != TL_OK) return -1;
    tl_regex_match *md = tl_regex_match_create();
    size_t a = 0, b = 0, n = strlen(s);
    int r = tl_regex_find(re, md, (const uint8_t *)s, n, 0, TL_REGEX_ANCHORED, &a, &b, &err);
    tl_regex_match_free(md);
    tl_regex_free(re);
    return r == 1 && a == 0 && b == n;
}

static char *write_tmp(const char *json) {
    char *path = malloc(64);
    strcpy(path, "/tmp/tl_tok_unit_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, json, strlen(json)) != (ssize_t)strlen(json) || close(fd) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    return path;
}

/* Byte-level vocabulary: printable ASCII, "Ġ" (space), "ÿ" (byte 0xFF), merges h e, he l, l l, Ġ h (ranks 0-3), so
 * "hello" is h e -> he, then he l -> hel (rank 1) wins over l l (rank 2): hel l o. */
/* The GGUF route's cases: four tokens and one merge, as x.gguf would hold them. */
static tl_status from_vocab(const char *model, const char *pre, const char *const *toks, const char *const *mer,
                            const int32_t *types, tl_tokenizer **g, tl_error *err) {
    const tl_gguf_vocab v = {.model = model, .pre = pre, .tokens = toks, .n_tokens = 4, .merges = mer,
                             .n_merges = 1, .token_types = types, .bos_id = -1};
    return tl_tokenizer_from_vocab("x.gguf", &v, g, err);
}

static const char *TOK_JSON_FMT =
    "{\"added_tokens\": [{\"id\": 100, \"content\": \"<|im_start|>\", \"special\": true, \"normalized\": false},"
    " {\"id\": 101, \"content\": \"<|im_end|>\", \"special\": true, \"normalized\": false},"
    " {\"id\": 102, \"content\": \"<|im_end|>X\", \"special\": true, \"normalized\": false}],"
    " \"normalizer\": null,"
    " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\", \"individual_digits\": true},"
    "   {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}]},"
    " \"post_processor\": null, \"decoder\": {\"type\": \"ByteLevel\"},"
    " \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"vocab\": {%s},"
    "  \"merges\": [\"h e\", [\"he\", \"l\"], \"l l\", \"Ġ h\"]}}";

int main(void) {
    /* ---- regexes (expected splits are HF tokenizers' own, checked by hand with the Python package) ---- */
    check_split(TL_RE_GPT2, "Hello world", "Hello| world");
    check_split(TL_RE_GPT2, "it's DON'T", "it|'s| DON|'|T");
    check_split(TL_RE_GPT2, "a   b", "a|  | b");
    check_split(TL_RE_GPT2, "x  ", "x|  ");
    check_split(TL_RE_GPT2, "12345 67", "12345| 67");
    check_split(TL_RE_GPT2, "a\n\nb", "a|\n|\n|b");
    check_split(TL_RE_GPT2, "f(x) ?!", "f|(|x|)| ?!");
    check_split(TL_RE_LLAMA3, "DON'T it's", "DON|'T| it|'s");
    check_split(TL_RE_LLAMA3, "1234567", "123|456|7");
    check_split(TL_RE_QWEN2, "1234", "1|2|3|4");
    check_split(TL_RE_LLAMA3, "a\r\n\r\nb", "a|\r\n\r\n|b");
    check_split(TL_RE_LLAMA3, "x  \n  y", "x|  \n| | y");
    check_split(TL_RE_LLAMA3, "(hello) ...\n", "(hello|)| ...\n");
    check_split(TL_RE_LLAMA3, "\thi", "\thi");

    /* ---- UTF-8 and classes ---- */
    uint32_t cp;
    const uint8_t inv[] = {0xC3, 0x28, 0xED, 0xA0, 0x80, 0xE2, 0x82, 0xAC};
    CHECK(tl_utf8_next(inv, 8, 0, &cp) == 1 && cp == TL_UC_INVALID_BASE + 0xC3, "bad lead byte");
    CHECK(tl_utf8_next(inv, 8, 2, &cp) == 1 && cp == TL_UC_INVALID_BASE + 0xED, "surrogate accepted");
    CHECK(tl_utf8_next(inv, 8, 5, &cp) == 3 && cp == 0x20AC, "euro sign");
    CHECK(tl_utf8_next(inv, 7, 5, &cp) == 1, "truncated sequence accepted");
    CHECK(tl_unicode_class(0x4E2D) == TL_UC_LETTER && tl_unicode_class(0x0663) == TL_UC_NUMBER &&
              tl_unicode_class(0x3000) == TL_UC_SPACE && tl_unicode_class(0x1F600) == TL_UC_OTHER &&
              tl_unicode_class(0x1C) == TL_UC_OTHER && tl_unicode_class(0x85) == TL_UC_SPACE,
          "unicode classes");

    /* ---- a small tokenizer ---- */
    char vocab[8192];
    size_t o = 0;
    int id = 0;
    for (int c = '!'; c <= '~'; c++) {
        if (c == '"' || c == '\\')
            o += (size_t)sprintf(vocab + o, "\"\\%c\": %d, ", c, id++);
        else
            o += (size_t)sprintf(vocab + o, "\"%c\": %d, ", c, id++);
    }
    o += (size_t)sprintf(vocab + o, "\"\xc4\xa0\": %d, \"he\": %d, \"hel\": %d, \"ll\": %d, \"\xc4\xa0h\": %d, \"\xc3\xbf\": %d",
                         id, id + 1, id + 2, id + 3, id + 4, id + 5);
    int sp = id, he = id + 1, hel = id + 2, sph = id + 4, ff = id + 5;
    char json[16384];
    snprintf(json, sizeof json, TOK_JSON_FMT, vocab);
    char *path = write_tmp(json);
    tl_tokenizer *t = NULL;
    tl_error err = {0};
    CHECK(tl_tokenizer_load_json(path, &t, &err) == TL_OK, "load: %s", err.msg);
    if (t) {
        int32_t *ids = NULL;
        size_t n = 0;
        /* "hello": h e -> he (rank 0) before l l (rank 2), then he l -> hel (rank 1): hel l o */
        const char *txt = "hello hx<|im_end|>X<|im_end|> 12\xff";
        CHECK(tl_tokenizer_encode(t, txt, strlen(txt), 0, &ids, &n, &err) == TL_OK, "encode: %s", err.msg);
        int32_t want[] = {hel, 'l' - '!', 'o' - '!', sph, 'x' - '!', 102, 101, sp, '1' - '!', '2' - '!', ff};
        CHECK(n == sizeof want / sizeof want[0] && memcmp(ids, want, sizeof want) == 0, "ids of \"%s\" (n=%zu)", txt, n);
        char *back = NULL;
        size_t blen = 0;
        CHECK(tl_tokenizer_decode(t, ids, n, &back, &blen, &err) == TL_OK && blen == strlen(txt) &&
                  memcmp(back, txt, blen) == 0,
              "decode round trip");
        free(back);
        free(ids);
        CHECK(tl_tokenizer_token_id(t, "<|im_end|>") == 101 && tl_tokenizer_token_id(t, "he") == he &&
                  tl_tokenizer_token_id(t, "nope") == -1,
              "token_id");
        int32_t badid = 55555;
        CHECK(tl_tokenizer_decode(t, &badid, 1, &back, &blen, &err) == TL_ERR_INPUT && strstr(err.msg, "55555"),
              "decode of an unknown id: %s", err.msg);
        CHECK(tl_tokenizer_encode(t, "a", 1, TL_TOK_ADD_BOS, &ids, &n, &err) == TL_ERR_INPUT, "BOS without one");
        CHECK(tl_tokenizer_set_bos_id(t, 100, &err) == TL_OK, "set bos");
        CHECK(tl_tokenizer_encode(t, "", 0, TL_TOK_ADD_BOS, &ids, &n, &err) == TL_OK && n == 1 && ids[0] == 100,
              "BOS alone");
        free(ids);
        tl_tokenizer_free(t);
    }
    unlink(path);
    free(path);

    /* ---- split regexes from tokenizer.json (PCRE2): any pattern, every behavior ---- */
    {
        static const char *fmt =
            "{\"normalizer\": null, \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [%s,"
            " {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": false}]},"
            " \"decoder\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {%s},"
            " \"merges\": [\"h e\", [\"he\", \"l\"], \"l l\", \"\xc4\xa0 h\"]}}";
        /* Llama 3's pattern as its tokenizer.json spells it (JSON-escaped), a pattern tailor names nowhere, a
         * String pattern with Removed ("hel lo" gives hel l o once the space is removed), MergedWithNext, Contiguous */
        struct {
            const char *step;
            const char *text;
            int32_t want[4];
            size_t n;
        } cases[] = {
            {"{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|"
             "\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, "
             "\"behavior\": \"Isolated\", \"invert\": false}", "hello", {hel, 'l' - '!', 'o' - '!'}, 3},
            {"{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\w+|\\\\S\"}, \"behavior\": \"Isolated\", \"invert\": false}",
             "hel!", {hel, '!' - '!'}, 2},
            {"{\"type\": \"Split\", \"pattern\": {\"String\": \" \"}, \"behavior\": \"Removed\", \"invert\": false}",
             "hel lo", {hel, 'l' - '!', 'o' - '!'}, 3},
            {"{\"type\": \"Split\", \"pattern\": {\"Regex\": \"h\"}, \"behavior\": \"MergedWithNext\", \"invert\": false}",
             "xhel", {'x' - '!', hel}, 2},
            {"{\"type\": \"Split\", \"pattern\": {\"Regex\": \"l\"}, \"behavior\": \"Contiguous\", \"invert\": false}",
             "hell", {he, id + 3}, 2},
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            char j[16384];
            snprintf(j, sizeof j, fmt, cases[i].step, vocab);
            char *p = write_tmp(j);
            tl_tokenizer *r = NULL;
            CHECK(tl_tokenizer_load_json(p, &r, &err) == TL_OK, "split case %zu: load: %s", i, err.msg);
            if (r) {
                int32_t *ids = NULL;
                size_t n = 0;
                CHECK(tl_tokenizer_encode(r, cases[i].text, strlen(cases[i].text), 0, &ids, &n, &err) == TL_OK &&
                          n == cases[i].n && memcmp(ids, cases[i].want, n * sizeof *ids) == 0,
                      "split case %zu: ids of \"%s\" (n=%zu)", i, cases[i].text, n);
                free(ids);
            }
            tl_tokenizer_free(r);
            unlink(p);
            free(p);
        }
        /* a regex PCRE2 refuses, and \S inside a class (no PCRE2 equivalent with Oniguruma's meaning) */
        const char *refused[][2] = {
            {"{\"type\": \"Split\", \"pattern\": {\"Regex\": \"ab(?<=a+)\"}, \"behavior\": \"Isolated\"}",
             "pre_tokenizer.pretokenizers[0].pattern.Regex: PCRE2 refuses the regex at offset"},
            {"{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(ab\"}, \"behavior\": \"Isolated\"}",
             "at offset 3: missing closing parenthesis"},
            {"{\"type\": \"Split\", \"pattern\": {\"Regex\": \"[\\\\Sx]\"}, \"behavior\": \"Isolated\"}",
             "pre_tokenizer.pretokenizers[0].pattern.Regex: \\S inside a character class"},
            {"{\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Spread\"}",
             "pre_tokenizer.pretokenizers[0].behavior"},
        };
        for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
            char j[16384];
            snprintf(j, sizeof j, fmt, refused[i][0], vocab);
            char *p = write_tmp(j);
            tl_tokenizer *r = NULL;
            tl_status st = tl_tokenizer_load_json(p, &r, &err);
            CHECK(st == TL_ERR_INPUT && !r && strstr(err.msg, p) && strstr(err.msg, refused[i][1]),
                  "refused regex %zu: status %d, message \"%s\" should name %s", i, (int)st, err.msg, refused[i][1]);
            tl_tokenizer_free(r);
            unlink(p);
            free(p);
        }
    }

    /* ---- Oniguruma's classes in PCRE2 (HF's meaning, where PCRE2's own differs) ---- */
    CHECK(whole_match("\\s", "\xc2\x85") == 1 && whole_match("\\s", "\xe1\xa0\x8e") == 0 &&
              whole_match("\\S", "\xe1\xa0\x8e") == 1 && whole_match("[^\\s\\p{L}]", "\xe1\xa0\x8e") == 1,
          "\\s is 0009-000D, 0085 and Z: U+180E is not a space");
    CHECK(whole_match("\\w+", "e\xcc\x81\xe2\x80\xbf_1") == 1 && whole_match("\\W", "\xcc\x81") == 0,
          "\\w takes marks and connector punctuation");
    CHECK(whole_match("\\h+", "09afAF") == 1 && whole_match("\\h", " ") == 0 && whole_match("[\\h]", "g") == 0,
          "\\h is a hex digit");
    CHECK(whole_match("\\Q\\s\\E", "\\s") == 1 && whole_match("[]s]", "]") == 1 && whole_match("a$", "a") == 1,
          "quoted text and a leading ] are copied as they are");
    CHECK(whole_match("(?i:'s)", "'\xc5\xbf") == 1 && whole_match("(?i:'s)", "'S") == 1, "case folding: long s");

    /* ---- bad files ---- */
    const char *bad[][2] = {
        {"{\"pre_tokenizer\": null}", "model"},
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "model.type"},
        {"{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", "model.type"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a q\"]}}", "model.merges[0]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Metaspace\"}, \"decoder\": {\"type\": \"ByteLevel\"}}", "pre_tokenizer.type"},
        {"not json", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *p = write_tmp(bad[i][0]);
        tl_tokenizer *b = NULL;
        tl_status st = tl_tokenizer_load_json(p, &b, &err);
        CHECK(st == TL_ERR_INPUT && b == NULL && strstr(err.msg, p) && strstr(err.msg, bad[i][1]),
              "bad file %zu: status %d, message \"%s\" should name %s", i, (int)st, err.msg, bad[i][1]);
        tl_tokenizer_free(b);
        unlink(p);
        free(p);
    }

    /* ---- GGUF arrays ---- */
    const char *toks[] = {"a", "b", "ab", "<|im_end|>"};
    const char *mer[] = {"a b"};
    const int32_t types[] = {1, 1, 1, TL_TOKTYPE_CONTROL};
    tl_tokenizer *g = NULL;
    CHECK(from_vocab("gpt2", "qwen2", toks, mer, types, &g, &err) == TL_OK, "gguf: %s", err.msg);
    if (g) {
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK(tl_tokenizer_encode(g, "ab<|im_end|>ba", 14, 0, &ids, &n, &err) == TL_OK && n == 4 && ids[0] == 2 &&
                  ids[1] == 3 && ids[2] == 1 && ids[3] == 0,
              "gguf encode");
        free(ids);
        tl_tokenizer_free(g);
    }
    CHECK(from_vocab("llama", "qwen2", toks, mer, types, &g, &err) == TL_ERR_INPUT &&
              strstr(err.msg, "tokenizer.ggml.model"),
          "gguf model llama (SentencePiece) refused: %s", err.msg);
    const char *known_pre[] = {"llama3", "gpt-2", "starcoder", "dbrx", "stablelm2", "default"};
    for (size_t i = 0; i < sizeof known_pre / sizeof known_pre[0]; i++) {
        CHECK(from_vocab("gpt2", known_pre[i], toks, mer, types, &g, &err) == TL_OK,
              "gguf pre %s: %s", known_pre[i], err.msg);
        tl_tokenizer_free(g);
        g = NULL;
    }
    CHECK(from_vocab("gpt2", "falcon", toks, mer, types, &g, &err) == TL_ERR_INPUT &&
              strstr(err.msg, "tokenizer.ggml.pre"),
          "unknown pre refused: %s", err.msg);
    const char *mer_bad[] = {"a zz"};
    CHECK(from_vocab("gpt2", "smollm", toks, mer_bad, NULL, &g, &err) == TL_ERR_INPUT &&
              strstr(err.msg, "merges[0]"),
          "bad merge refused: %s", err.msg);
    /* a tokenizer from GGUF metadata names the GGUF keys, never tokenizer.json's fields */
    const char *mer_unknown[] = {"a q"};
    CHECK(from_vocab("gpt2", "smollm", toks, mer_unknown, NULL, &g, &err) ==
                  TL_ERR_INPUT &&
              strstr(err.msg, "x.gguf: tokenizer.ggml.merges[0]") && !strstr(err.msg, "model."),
          "unknown merge token: %s", err.msg);
    const char *toks_dup[] = {"a", "b", "a", "ab"};
    CHECK(from_vocab("gpt2", "smollm", toks_dup, mer, NULL, &g, &err) ==
                  TL_ERR_INPUT &&
              strstr(err.msg, "x.gguf: tokenizer.ggml.tokens") && !strstr(err.msg, "model.vocab"),
          "duplicate token: %s", err.msg);
    const char *toks_empty_added[] = {"a", "b", "ab", ""};
    CHECK(from_vocab("gpt2", "smollm", toks_empty_added, mer, types, &g, &err) ==
                  TL_ERR_INPUT &&
              strstr(err.msg, "tokenizer.ggml.tokens[3]") && !strstr(err.msg, "added_tokens"),
          "empty control token: %s", err.msg);

    /* ---- ChatML ---- */
    tl_chat_msg msgs[] = {{"user", "Hi"}, {"assistant", "Hello!\n"}};
    char *out = NULL;
    size_t len = 0;
    CHECK(tl_chat_render(msgs, 2, 1, &out, &len, &err) == TL_OK &&
              strcmp(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!\n<|im_end|>\n"
                          "<|im_start|>assistant\n") == 0 && len == strlen(out),
          "chat render: %s", out ? out : "(null)");
    free(out);
    tl_chat_msg bad_msg[] = {{NULL, "x"}};
    CHECK(tl_chat_render(bad_msg, 1, 0, &out, &len, &err) == TL_ERR_INPUT && strstr(err.msg, "messages[0]"),
          "chat without role");

    tl_regex *jre = NULL;
    if (tl_regex_compile(tl_pretok_pattern(TL_RE_GPT2), 0, "t", "f", &jre, &err) == TL_OK)
        printf("test_tokenizer: PCRE2 %s\n", tl_regex_jit(jre) ? "JIT" : "interpreter (no JIT)");
    tl_regex_free(jre);
    return tl_check_done("test_tokenizer");
}
