/* tokenizer: byte-level BPE as HF `tokenizers` runs it for SmolLM2 / GPT-2, Llama 3 and Qwen2, loaded from a
 * tokenizer.json or from GGUF's tokenizer.ggml.* arrays; decoding; the ChatML template.
 *
 * Encoding follows tokenizers' pipeline step by step so the ids are the same: added tokens are cut out of the
 * text first (non-normalized ones, then normalized ones, each pass leftmost-longest), every remaining segment
 * goes through the pre-tokenizer steps (regex splits, digit splits, byte-level mapping), and every piece through
 * BPE with the same merge order as tokenizers' Word::merge_all (a heap on (rank, position)). The split regexes
 * are PCRE2's (tokenizer_pretok.c), compiled once per tokenizer. */
#include "data/tl_tokenizer.h"
#include "data/tl_dataset.h"
#include "data/tl_io.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOK_MAX_FILE_BYTES ((long)512 * 1024 * 1024)
#define MAX_STEPS 8

/* ---- hash maps: string -> id, (left id, right id) -> merge ---- */

typedef struct {
    const char *key; /* borrowed from tl_tokenizer.strings */
    size_t len;
    int32_t id;
} smap_slot;

typedef struct {
    smap_slot *slots;
    size_t cap, n; /* cap: power of two */
} smap;

typedef struct {
    uint64_t key; /* (left << 32) | right; UINT64_MAX: empty */
    int32_t rank, id;
} pmap_slot;

typedef struct {
    pmap_slot *slots;
    size_t cap, n;
} pmap;

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static int smap_init(smap *m, size_t expect) {
    m->cap = 16;
    while (m->cap < expect * 2) m->cap *= 2;
    m->n = 0;
    m->slots = calloc(m->cap, sizeof *m->slots);
    return m->slots != NULL;
}

/* Slot of key: the one holding it, or the empty one where it would go. */
static smap_slot *smap_find(const smap *m, const char *k, size_t n) {
    size_t i = hash_bytes(k, n) & (m->cap - 1);
    for (;;) {
        smap_slot *s = &m->slots[i];
        if (!s->key || (s->len == n && memcmp(s->key, k, n) == 0)) return s;
        i = (i + 1) & (m->cap - 1);
    }
}

static int32_t smap_get(const smap *m, const char *k, size_t n) {
    const smap_slot *s = smap_find(m, k, n);
    return s->key ? s->id : -1;
}

static int pmap_init(pmap *m, size_t expect) {
    m->cap = 16;
    while (m->cap < expect * 2) m->cap *= 2;
    m->n = 0;
    m->slots = malloc(m->cap * sizeof *m->slots);
    if (!m->slots) return 0;
    for (size_t i = 0; i < m->cap; i++) m->slots[i].key = UINT64_MAX;
    return 1;
}

static pmap_slot *pmap_find(const pmap *m, uint64_t k) {
    size_t i = hash_u64(k) & (m->cap - 1);
    for (;;) {
        pmap_slot *s = &m->slots[i];
        if (s->key == UINT64_MAX || s->key == k) return s;
        i = (i + 1) & (m->cap - 1);
    }
}

/* ---- the tokenizer ---- */

typedef enum { STEP_REGEX, STEP_DIGITS, STEP_BYTELEVEL } step_kind;

/* tokenizers' SplitDelimiterBehavior: what becomes of a match and the text between matches */
typedef enum { SPLIT_ISOLATED, SPLIT_REMOVED, SPLIT_MERGED_WITH_PREVIOUS, SPLIT_MERGED_WITH_NEXT, SPLIT_CONTIGUOUS } split_behavior;

typedef struct {
    step_kind kind;
    tl_regex *re;             /* STEP_REGEX: owned */
    split_behavior behavior;  /* STEP_REGEX */
    int invert;               /* STEP_REGEX: the text between matches is what the behavior applies to */
    int of_bytelevel;         /* STEP_REGEX: the GPT-2 split of a ByteLevel with use_regex */
    int individual_digits;    /* STEP_DIGITS */
    int add_prefix_space;     /* STEP_BYTELEVEL */
} pretok_step;

typedef struct {
    const char *content;
    size_t len;
    int32_t id;
    int normalized;
} added_tok;

struct tl_tokenizer {
    char *strings;            /* every token string, NUL-separated, owned */
    size_t n_ids;             /* one more than the largest id */
    const char **id_str;      /* id -> its string as written in the vocabulary / added token, NULL for holes */
    size_t *id_str_len;
    char **id_bytes;          /* id -> decoded bytes (malloc'ed each), NULL for holes */
    size_t *id_bytes_len;
    smap vocab;               /* model vocabulary */
    smap added_map;           /* added tokens by content */
    pmap merges;
    int32_t byte_id[256];     /* id of each single byte's byte-level character, -1 if absent */
    uint32_t byte_char[256];  /* GPT-2's bytes_to_unicode: the byte-level character of each byte */
    added_tok *added;         /* sorted by length, longest first */
    size_t n_added;
    int has_added[2];         /* any added token that is [0] not normalized, [1] normalized */
    int added_valid;          /* every added token is valid UTF-8, so cutting them out of valid text leaves valid text */
    uint8_t added_first[256]; /* first bytes of added tokens */
    pretok_step steps[MAX_STEPS];
    int n_steps;
    int ignore_merges;
    int nfc;                  /* normalizer NFC: refuse text it could change */
    int32_t unk_id;
    int32_t bos_id;
};

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the others to U+0100 upwards in order. */
static void byte_to_unicode_table(uint32_t map[256]) {
    uint32_t extra = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        map[b] = printable ? (uint32_t)b : extra++;
    }
}

static size_t utf8_put(uint32_t c, char *out) {
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xC0 | (c >> 6));
        out[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    out[0] = (char)(0xE0 | (c >> 12));
    out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
    out[2] = (char)(0x80 | (c & 0x3F));
    return 3;
}

void tl_tokenizer_free(tl_tokenizer *t) {
    if (!t) return;
    if (t->id_bytes)
        for (size_t i = 0; i < t->n_ids; i++) free(t->id_bytes[i]);
    for (int i = 0; i < t->n_steps; i++) tl_regex_free(t->steps[i].re);
    free(t->id_bytes);
    free(t->id_bytes_len);
    free(t->id_str);
    free(t->id_str_len);
    free(t->vocab.slots);
    free(t->added_map.slots);
    free(t->merges.slots);
    free(t->added);
    free(t->strings);
    free(t);
}

/* Frees t after the error message (which may quote t's strings) is formatted. */
static tl_status fail_free(tl_tokenizer *t, tl_status st) {
    tl_tokenizer_free(t);
    return st;
}

/* ---- building (shared by the JSON and GGUF paths) ---- */

typedef struct {
    const char *s;
    int32_t id;
} vocab_in;

typedef struct {
    const char *content;
    int32_t id;
    int normalized;
} added_in;

typedef struct {
    const char *left, *right; /* NUL-terminated */
    size_t left_len, right_len;
} merge_in;

static int cmp_added(const void *a, const void *b) {
    const added_tok *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* The byte-level inverse of a vocabulary string; a string with a character outside the byte map decodes to its
 * own UTF-8 bytes, as tokenizers' ByteLevel decoder does. */
static char *bytelevel_decode(const char *s, size_t n, const int16_t *inv, size_t *out_len) {
    char *out = malloc(n + 1);
    if (!out) return NULL;
    size_t o = 0, p = 0;
    while (p < n) {
        uint32_t cp;
        size_t w = tl_utf8_next((const uint8_t *)s, n, p, &cp);
        if (cp >= 0x200 || inv[cp] < 0) {
            memcpy(out, s, n);
            o = n;
            break;
        }
        out[o++] = (char)inv[cp];
        p += w;
    }
    out[o] = '\0';
    *out_len = o;
    return out;
}

/* The names of the vocabulary, added-token and merge fields in the source, for error messages: a tokenizer read
 * from GGUF metadata reports GGUF keys, not tokenizer.json's. */
typedef struct {
    const char *vocab, *added, *merges;
    int added_by_id; /* index added-token messages by token id (GGUF: the index into tokenizer.ggml.tokens) */
} tok_fields;
static const tok_fields JSON_FIELDS = {"model.vocab", "added_tokens", "model.merges", 0};
static const tok_fields GGUF_FIELDS = {"tokenizer.ggml.tokens", "tokenizer.ggml.tokens", "tokenizer.ggml.merges", 1};

/* Takes ownership of strings (all the const char* inputs point into it). */
static tl_status build(const char *what, const tok_fields *f, char *strings, const vocab_in *vocab, size_t n_vocab, const merge_in *merges,
                       size_t n_merges, const added_in *added, size_t n_added, tl_tokenizer **out, tl_error *err) {
    tl_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        free(strings);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", what);
    }
    t->strings = strings;
    t->unk_id = -1;
    t->bos_id = -1;
    int32_t max_id = -1;
    for (size_t i = 0; i < n_vocab; i++) {
        if (vocab[i].id < 0) return fail_free(t, tl_fail(err, TL_ERR_INPUT, "%s: %s: negative id %d for token \"%s\"", what, f->vocab, vocab[i].id, vocab[i].s));
        if (vocab[i].id > max_id) max_id = vocab[i].id;
    }
    for (size_t i = 0; i < n_added; i++) {
        if (added[i].id < 0) return fail_free(t, tl_fail(err, TL_ERR_INPUT, "%s: %s[%zu]: negative id %d", what, f->added, f->added_by_id ? (size_t)added[i].id : i, added[i].id));
        if (added[i].content[0] == '\0') return fail_free(t, tl_fail(err, TL_ERR_INPUT, "%s: %s[%zu]: empty content", what, f->added, f->added_by_id ? (size_t)added[i].id : i));
        if (added[i].id > max_id) max_id = added[i].id;
    }
    if (max_id < 0) return fail_free(t, tl_fail(err, TL_ERR_INPUT, "%s: %s: empty vocabulary", what, f->vocab));
    /* the id tables are sized by the largest id: ids number the tokens from 0 (a tokenizer with a handful of tokens
     * and an id of 2^31 - 1 would otherwise allocate gigabytes) */
    if ((size_t)max_id >= n_vocab + n_added)
        return fail_free(t, tl_fail(err, TL_ERR_INPUT, "%s: %s: id %d is not below the number of tokens (%zu): ids must "
                                    "number the tokens from 0", what, f->vocab, max_id, n_vocab + n_added));
    t->n_ids = (size_t)max_id + 1;
    t->id_str = calloc(t->n_ids, sizeof *t->id_str);
    t->id_str_len = calloc(t->n_ids, sizeof *t->id_str_len);
    t->id_bytes = calloc(t->n_ids, sizeof *t->id_bytes);
    t->id_bytes_len = calloc(t->n_ids, sizeof *t->id_bytes_len);
    t->added = calloc(n_added ? n_added : 1, sizeof *t->added);
    if (!t->id_str || !t->id_str_len || !t->id_bytes || !t->id_bytes_len || !t->added ||
        !smap_init(&t->vocab, n_vocab) || !smap_init(&t->added_map, n_added) || !pmap_init(&t->merges, n_merges))
        return fail_free(t, tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", what));

    uint32_t b2u[256];
    int16_t inv[0x200];
    byte_to_unicode_table(b2u);
    memcpy(t->byte_char, b2u, sizeof b2u);
    for (int i = 0; i < 0x200; i++) inv[i] = -1;
    for (int b = 0; b < 256; b++) inv[b2u[b]] = (int16_t)b;

    for (size_t i = 0; i < n_vocab; i++) {
        size_t len = strlen(vocab[i].s);
        smap_slot *s = smap_find(&t->vocab, vocab[i].s, len);
        if (s->key) return fail_free(t, tl_fail(err, TL_ERR_INPUT, "%s: %s: token \"%s\" appears twice", what, f->vocab, vocab[i].s));
        int32_t id = vocab[i].id;
        if (t->id_str[id]) return fail_free(t, tl_fail(err, TL_ERR_INPUT, "%s: %s: id %d given to \"%s\" and \"%s\"", what, f->vocab, id, t->id_str[id], vocab[i].s));
        *s = (smap_slot){vocab[i].s, len, id};
        t->vocab.n++;
        t->id_str[id] = vocab[i].s;
        t->id_str_len[id] = len;
        t->id_bytes[id] = bytelevel_decode(vocab[i].s, len, inv, &t->id_bytes_len[id]);
        if (!t->id_bytes[id]) return fail_free(t, tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", what));
    }
    for (int b = 0; b < 256; b++) {
        char buf[4];
        size_t n = utf8_put(b2u[b], buf);
        t->byte_id[b] = smap_get(&t->vocab, buf, n);
    }

    for (size_t i = 0; i < n_added; i++) {
        size_t len = strlen(added[i].content);
        int32_t id = added[i].id;
        smap_slot *s = smap_find(&t->added_map, added[i].content, len);
        if (s->key) return fail_free(t, tl_fail(err, TL_ERR_INPUT, "%s: %s[%zu]: content \"%s\" appears twice", what, f->added, f->added_by_id ? (size_t)added[i].id : i, added[i].content));
        *s = (smap_slot){added[i].content, len, id};
        t->added_map.n++;
        t->added[i] = (added_tok){added[i].content, len, id, added[i].normalized};
        t->has_added[added[i].normalized ? 1 : 0] = 1;
        t->added_first[(uint8_t)added[i].content[0]] = 1;
        /* an added token decodes to its content, also where the vocabulary has the same id */
        free(t->id_bytes[id]);
        t->id_str[id] = added[i].content;
        t->id_str_len[id] = len;
        t->id_bytes[id] = malloc(len + 1);
        if (!t->id_bytes[id]) return fail_free(t, tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", what));
        memcpy(t->id_bytes[id], added[i].content, len + 1);
        t->id_bytes_len[id] = len;
    }
    t->n_added = n_added;
    t->added_valid = 1;
    for (size_t i = 0; i < n_added; i++)
        if (!tl_utf8_valid((const unsigned char *)t->added[i].content, t->added[i].len)) t->added_valid = 0;
    if (n_added) qsort(t->added, n_added, sizeof *t->added, cmp_added);

    for (size_t i = 0; i < n_merges; i++) {
        int32_t a = smap_get(&t->vocab, merges[i].left, merges[i].left_len);
        int32_t b = smap_get(&t->vocab, merges[i].right, merges[i].right_len);
        if (a < 0 || b < 0)
            return fail_free(t, tl_fail(err, TL_ERR_INPUT, "%s: %s[%zu]: token \"%s\" is not in the vocabulary", what, f->merges, i, a < 0 ? merges[i].left : merges[i].right));
        size_t n = merges[i].left_len + merges[i].right_len;
        char *cat = malloc(n + 1);
        if (!cat) return fail_free(t, tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", what));
        memcpy(cat, merges[i].left, merges[i].left_len);
        memcpy(cat + merges[i].left_len, merges[i].right, merges[i].right_len);
        int32_t c = smap_get(&t->vocab, cat, n);
        if (c < 0) {
            tl_fail(err, TL_ERR_INPUT, "%s: %s[%zu]: merged token \"%.*s\" is not in the vocabulary", what, f->merges, i, (int)(n > 200 ? 200 : n), cat);
            free(cat);
            return fail_free(t, TL_ERR_INPUT);
        }
        free(cat);
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        pmap_slot *s = pmap_find(&t->merges, key);
        /* a repeated pair takes its last rank: tokenizers collects the merges into a HashMap, later wins */
        if (s->key == UINT64_MAX) t->merges.n++;
        *s = (pmap_slot){key, (int32_t)i, c};
    }
    *out = t;
    return TL_OK;
}

/* ---- tokenizer.json ---- */

/* an integral double within int32 (the cast alone is undefined for values out of range: 2^32+5 became 5) */
static int is_int32(double x) { return x >= -2147483648.0 && x <= 2147483647.0 && x == (double)(int32_t)x; }

static tl_status read_file(const char *path, char **out, tl_error *err) {
    FILE *f;
    TL_TRY(tl_fopen_regular(path, NULL, &f, NULL, err));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot seek: %s", path, strerror(errno));
    }
    long size = ftell(f);
    if (size < 0 || size > TOK_MAX_FILE_BYTES || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return tl_fail(err, TL_ERR_INPUT, "%s: cannot read (size %ld, at most %ld bytes)", path, size, TOK_MAX_FILE_BYTES);
    }
    char *buf = malloc((size_t)size + 1);
    if (!buf) {
        fclose(f);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    }
    size_t got = fread(buf, 1, (size_t)size, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || got != (size_t)size) {
        free(buf);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: read error", path);
    }
    buf[size] = '\0';
    *out = buf;
    return TL_OK;
}

/* 1 / 0 for a JSON bool (absent: dflt), -1 for another type. */
static int json_bool(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) return dflt;
    if (!cJSON_IsBool(v)) return -1;
    return cJSON_IsTrue(v) ? 1 : 0;
}

static tl_status parse_pretok_one(const char *path, const cJSON *p, const char *field, tl_tokenizer *t, tl_error *err) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(p, "type");
    if (!cJSON_IsString(ty)) return tl_fail(err, TL_ERR_INPUT, "%s: %s.type: expected a string", path, field);
    if (t->n_steps >= MAX_STEPS - 1) return tl_fail(err, TL_ERR_INPUT, "%s: %s: more than %d pre-tokenizer steps", path, field, MAX_STEPS - 1);
    pretok_step *s = &t->steps[t->n_steps];
    memset(s, 0, sizeof *s);
    if (strcmp(ty->valuestring, "ByteLevel") == 0) {
        int aps = json_bool(p, "add_prefix_space", 1), ur = json_bool(p, "use_regex", 1);
        if (aps < 0 || ur < 0) return tl_fail(err, TL_ERR_INPUT, "%s: %s: add_prefix_space / use_regex must be booleans", path, field);
        s->kind = STEP_BYTELEVEL;
        s->add_prefix_space = aps;
        t->n_steps++;
        if (ur) {
            pretok_step *r = &t->steps[t->n_steps];
            *r = (pretok_step){.kind = STEP_REGEX, .behavior = SPLIT_ISOLATED, .of_bytelevel = 1};
            TL_TRY(tl_regex_compile(tl_pretok_pattern(TL_RE_GPT2), 0, path, field, &r->re, err));
            t->n_steps++;
        }
        return TL_OK;
    }
    if (strcmp(ty->valuestring, "Digits") == 0) {
        int ind = json_bool(p, "individual_digits", 0);
        if (ind < 0) return tl_fail(err, TL_ERR_INPUT, "%s: %s.individual_digits: expected a boolean", path, field);
        *s = (pretok_step){.kind = STEP_DIGITS, .individual_digits = ind};
        t->n_steps++;
        return TL_OK;
    }
    if (strcmp(ty->valuestring, "Split") == 0) {
        static const char *const behaviors[] = {[SPLIT_ISOLATED] = "Isolated", [SPLIT_REMOVED] = "Removed",
                                                [SPLIT_MERGED_WITH_PREVIOUS] = "MergedWithPrevious",
                                                [SPLIT_MERGED_WITH_NEXT] = "MergedWithNext",
                                                [SPLIT_CONTIGUOUS] = "Contiguous"};
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *re = pat ? cJSON_GetObjectItemCaseSensitive(pat, "Regex") : NULL;
        const cJSON *lit = pat ? cJSON_GetObjectItemCaseSensitive(pat, "String") : NULL;
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        if (!cJSON_IsString(re) && !cJSON_IsString(lit))
            return tl_fail(err, TL_ERR_INPUT, "%s: %s.pattern: expected {\"Regex\": ...} or {\"String\": ...}", path, field);
        int b = -1;
        for (int k = 0; cJSON_IsString(beh) && k < (int)(sizeof behaviors / sizeof behaviors[0]); k++)
            if (strcmp(beh->valuestring, behaviors[k]) == 0) b = k;
        if (b < 0)
            return tl_fail(err, TL_ERR_INPUT, "%s: %s.behavior: expected Isolated, Removed, MergedWithPrevious, "
                           "MergedWithNext or Contiguous", path, field);
        int inv = json_bool(p, "invert", 0);
        if (inv < 0) return tl_fail(err, TL_ERR_INPUT, "%s: %s.invert: expected a boolean", path, field);
        *s = (pretok_step){.kind = STEP_REGEX, .behavior = (split_behavior)b, .invert = inv};
        char rfield[96];
        snprintf(rfield, sizeof rfield, "%s.pattern.%s", field, cJSON_IsString(re) ? "Regex" : "String");
        TL_TRY(tl_regex_compile(cJSON_IsString(re) ? re->valuestring : lit->valuestring, !cJSON_IsString(re), path,
                                rfield, &s->re, err));
        t->n_steps++;
        return TL_OK;
    }
    return tl_fail(err, TL_ERR_INPUT, "%s: %s.type: \"%s\" is not supported (ByteLevel, Digits, Split)", path, field, ty->valuestring);
}

/* Normalizer, pre-tokenizer, decoder and BOS. Pre-tokenizer steps run in file order; a ByteLevel contributes
 * (prefix space) then, with use_regex, (GPT-2 regex split); its byte mapping is how BPE reads a piece. */
static tl_status parse_json_rest(const char *path, const cJSON *root, tl_tokenizer *t, tl_error *err) {
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (norm && !cJSON_IsNull(norm)) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(norm, "type");
        if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "NFC") != 0)
            return tl_fail(err, TL_ERR_INPUT, "%s: normalizer: only null or NFC is supported, got %s", path, cJSON_IsString(ty) ? ty->valuestring : "(no type)");
        t->nfc = 1;
    }
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (!pre || cJSON_IsNull(pre)) return tl_fail(err, TL_ERR_INPUT, "%s: pre_tokenizer: missing; a byte-level BPE needs a ByteLevel pre-tokenizer", path);
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(pre, "type");
    if (cJSON_IsString(ty) && strcmp(ty->valuestring, "Sequence") == 0) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
        if (!cJSON_IsArray(arr)) return tl_fail(err, TL_ERR_INPUT, "%s: pre_tokenizer.pretokenizers: expected an array", path);
        int i = 0;
        const cJSON *p;
        cJSON_ArrayForEach(p, arr) {
            char field[64];
            snprintf(field, sizeof field, "pre_tokenizer.pretokenizers[%d]", i++);
            TL_TRY(parse_pretok_one(path, p, field, t, err));
        }
    } else {
        TL_TRY(parse_pretok_one(path, pre, "pre_tokenizer", t, err));
    }
    int nbl = 0, last_bl = -1;
    for (int i = 0; i < t->n_steps; i++)
        if (t->steps[i].kind == STEP_BYTELEVEL) nbl++, last_bl = i;
    int tail = last_bl >= 0 && last_bl + 1 < t->n_steps && t->steps[last_bl + 1].of_bytelevel ? 1 : 0;
    if (nbl != 1 || last_bl + 1 + tail != t->n_steps)
        return tl_fail(err, TL_ERR_INPUT, "%s: pre_tokenizer: expected exactly one ByteLevel, as the last step", path);

    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    const cJSON *dty = dec ? cJSON_GetObjectItemCaseSensitive(dec, "type") : NULL;
    if (!cJSON_IsString(dty) || strcmp(dty->valuestring, "ByteLevel") != 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: decoder: expected type ByteLevel", path);

    /* BOS: the first special token of a TemplateProcessing's single template (alone or inside a Sequence) */
    const cJSON *post = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    const cJSON *procs = post ? cJSON_GetObjectItemCaseSensitive(post, "processors") : NULL;
    const cJSON *tp = post, *p;
    if (cJSON_IsArray(procs)) {
        cJSON_ArrayForEach(p, procs) {
            const cJSON *pty = cJSON_GetObjectItemCaseSensitive(p, "type");
            if (cJSON_IsString(pty) && strcmp(pty->valuestring, "TemplateProcessing") == 0) tp = p;
        }
    }
    const cJSON *pty = tp ? cJSON_GetObjectItemCaseSensitive(tp, "type") : NULL;
    if (cJSON_IsString(pty) && strcmp(pty->valuestring, "TemplateProcessing") == 0) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(tp, "single");
        const cJSON *first = cJSON_IsArray(single) ? cJSON_GetArrayItem(single, 0) : NULL;
        const cJSON *sp = first ? cJSON_GetObjectItemCaseSensitive(first, "SpecialToken") : NULL;
        const cJSON *sid = sp ? cJSON_GetObjectItemCaseSensitive(sp, "id") : NULL;
        if (cJSON_IsString(sid)) {
            int32_t id = tl_tokenizer_token_id(t, sid->valuestring);
            if (id < 0) return tl_fail(err, TL_ERR_INPUT, "%s: post_processor.single: special token \"%s\" is not a token", path, sid->valuestring);
            t->bos_id = id;
        }
    }
    return TL_OK;
}

/* Copies s into the string arena at *pos. */
static const char *arena_put(char *arena, size_t *pos, const char *s, size_t n) {
    char *d = arena + *pos;
    memcpy(d, s, n);
    d[n] = '\0';
    *pos += n + 1;
    return d;
}

tl_status tl_tokenizer_load_json(const char *path, tl_tokenizer **out, tl_error *err) {
    *out = NULL;
    char *text = NULL;
    TL_TRY(read_file(path, &text, err));
    cJSON *root = cJSON_ParseWithLength(text, strlen(text));
    free(text);
    if (!root) return tl_fail(err, TL_ERR_INPUT, "%s: not valid JSON", path);
    tl_status st = TL_OK;
    char *arena = NULL;
    vocab_in *vin = NULL;
    merge_in *min = NULL;
    added_in *ain = NULL;
    tl_tokenizer *t = NULL;

    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: model: missing (expected an object)", path);
        goto done;
    }
    const cJSON *mty = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (!cJSON_IsString(mty) || strcmp(mty->valuestring, "BPE") != 0) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: model.type: \"%s\" is not supported (only BPE)", path, cJSON_IsString(mty) ? mty->valuestring : "(missing)");
        goto done;
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout)) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: model.dropout: BPE dropout is not supported (expected null)", path);
        goto done;
    }
    if (json_bool(model, "byte_fallback", 0) != 0) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: model.byte_fallback: only false is supported", path);
        goto done;
    }
    const char *affix[2] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(model, affix[i]);
        if (a && !cJSON_IsNull(a) && !(cJSON_IsString(a) && a->valuestring[0] == '\0')) {
            st = tl_fail(err, TL_ERR_INPUT, "%s: model.%s: only null is supported", path, affix[i]);
            goto done;
        }
    }
    int im = json_bool(model, "ignore_merges", 0);
    if (im < 0) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: model.ignore_merges: expected a boolean", path);
        goto done;
    }
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(vocab)) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: model.vocab: expected an object token -> id", path);
        goto done;
    }
    if (!cJSON_IsArray(merges)) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: model.merges: expected an array", path);
        goto done;
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added)) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: added_tokens: expected an array", path);
        goto done;
    }
    size_t nv = (size_t)cJSON_GetArraySize(vocab), nm = (size_t)cJSON_GetArraySize(merges);
    size_t na = cJSON_IsArray(added) ? (size_t)cJSON_GetArraySize(added) : 0;

    /* arena size: every string once plus a NUL */
    size_t total = 1;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) total += strlen(it->string) + 1;
    cJSON_ArrayForEach(it, merges) {
        if (cJSON_IsString(it)) total += strlen(it->valuestring) + 2;
        else if (cJSON_IsArray(it)) {
            const cJSON *x;
            cJSON_ArrayForEach(x, it) if (cJSON_IsString(x)) total += strlen(x->valuestring) + 1;
        }
    }
    if (na) cJSON_ArrayForEach(it, added) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (cJSON_IsString(c)) total += strlen(c->valuestring) + 1;
    }
    arena = malloc(total);
    vin = malloc((nv ? nv : 1) * sizeof *vin);
    min = malloc((nm ? nm : 1) * sizeof *min);
    ain = malloc((na ? na : 1) * sizeof *ain);
    if (!arena || !vin || !min || !ain) {
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
        goto done;
    }
    size_t pos = 0, i = 0;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || !is_int32(it->valuedouble)) {
            st = tl_fail(err, TL_ERR_INPUT, "%s: model.vocab[\"%s\"]: expected an integer id", path, it->string);
            goto done;
        }
        vin[i].s = arena_put(arena, &pos, it->string, strlen(it->string));
        vin[i].id = (int32_t)it->valuedouble;
        i++;
    }
    i = 0;
    cJSON_ArrayForEach(it, merges) {
        if (cJSON_IsString(it)) {
            const char *sp = strchr(it->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                st = tl_fail(err, TL_ERR_INPUT, "%s: model.merges[%zu]: expected \"left right\" with one space, got \"%.200s\"", path, i, it->valuestring);
                goto done;
            }
            size_t ll = (size_t)(sp - it->valuestring), rl = strlen(sp + 1);
            min[i].left = arena_put(arena, &pos, it->valuestring, ll);
            min[i].right = arena_put(arena, &pos, sp + 1, rl);
            min[i].left_len = ll, min[i].right_len = rl;
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            const char *l = cJSON_GetArrayItem(it, 0)->valuestring, *r = cJSON_GetArrayItem(it, 1)->valuestring;
            min[i].left_len = strlen(l), min[i].right_len = strlen(r);
            min[i].left = arena_put(arena, &pos, l, min[i].left_len);
            min[i].right = arena_put(arena, &pos, r, min[i].right_len);
        } else {
            st = tl_fail(err, TL_ERR_INPUT, "%s: model.merges[%zu]: expected \"left right\" or [left, right]", path, i);
            goto done;
        }
        i++;
    }
    i = 0;
    if (na) cJSON_ArrayForEach(it, added) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "content");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        if (!cJSON_IsString(c) || !cJSON_IsNumber(id) || !is_int32(id->valuedouble)) {
            st = tl_fail(err, TL_ERR_INPUT, "%s: added_tokens[%zu]: expected string content and integer id", path, i);
            goto done;
        }
        const char *flags[3] = {"single_word", "lstrip", "rstrip"};
        for (int k = 0; k < 3; k++)
            if (json_bool(it, flags[k], 0) != 0) {
                st = tl_fail(err, TL_ERR_INPUT, "%s: added_tokens[%zu].%s: only false is supported (token \"%s\")", path, i, flags[k], c->valuestring);
                goto done;
            }
        int special = json_bool(it, "special", 0), normalized = json_bool(it, "normalized", !special);
        if (special < 0 || normalized < 0) {
            st = tl_fail(err, TL_ERR_INPUT, "%s: added_tokens[%zu]: special / normalized must be booleans", path, i);
            goto done;
        }
        ain[i].content = arena_put(arena, &pos, c->valuestring, strlen(c->valuestring));
        ain[i].id = (int32_t)id->valuedouble;
        ain[i].normalized = normalized;
        i++;
    }
    char *a = arena;
    arena = NULL;
    st = build(path, &JSON_FIELDS, a, vin, nv, min, nm, ain, na, &t, err);
    if (st != TL_OK) goto done;
    t->ignore_merges = im;
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (cJSON_IsString(unk)) {
        t->unk_id = smap_get(&t->vocab, unk->valuestring, strlen(unk->valuestring));
        if (t->unk_id < 0) {
            st = tl_fail(err, TL_ERR_INPUT, "%s: model.unk_token: \"%s\" is not in the vocabulary", path, unk->valuestring);
            goto done;
        }
    }
    st = parse_json_rest(path, root, t, err);
done:
    cJSON_Delete(root);
    free(arena);
    free(vin);
    free(min);
    free(ain);
    if (st != TL_OK) {
        tl_tokenizer_free(t);
        return st;
    }
    *out = t;
    return TL_OK;
}

/* ---- GGUF arrays ---- */

tl_status tl_tokenizer_from_vocab(const char *what, const tl_gguf_vocab *v, tl_tokenizer **out, tl_error *err) {
    *out = NULL;
    const char *model = v->model, *pre = v->pre;
    const char *const *tokens = v->tokens, *const *merges = v->merges;
    size_t n_tokens = v->n_tokens, n_merges = v->n_merges;
    const int32_t *token_types = v->token_types;
    int32_t bos_id = v->bos_id;
    if (!model || strcmp(model, "gpt2") != 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: tokenizer.ggml.model: \"%s\" is not supported (only gpt2, byte-level BPE)", what, model ? model : "(missing)");
    /* tokenizer.ggml.pre names, as llama.cpp groups them (llama-vocab.cpp), with each group's split as the HF
     * tokenizer.json of its models has it: digits = a Digits(individual_digits) step first */
    static const struct {
        const char *names;
        int digits;
        tl_pretok_regex re;
        int ignore_merges;
    } pre_names[] = {
        {"default gpt2 gpt-2 mpt olmo jais phi-2", 0, TL_RE_GPT2, 0},
        {"smollm starcoder refact command-r codeshell exaone minerva-7b", 1, TL_RE_GPT2, 0},
        {"llama-bpe llama3 llama-v3 falcon3", 0, TL_RE_LLAMA3, 1}, /* as Llama 3's tokenizer.json and llama.cpp */
        {"dbrx smaug-bpe", 0, TL_RE_LLAMA3, 0},
        {"qwen2 stablelm2 deepseek-r1-qwen megrez", 0, TL_RE_QWEN2, 0},
    };
    int which = pre ? -1 : 0;
    size_t pre_len = pre ? strlen(pre) : 0;
    for (int k = 0; which < 0 && k < (int)(sizeof pre_names / sizeof pre_names[0]); k++)
        for (const char *w = pre_names[k].names; *w && pre_len; w += strcspn(w, " "), w += *w == ' ')
            if (strcspn(w, " ") == pre_len && strncmp(w, pre, pre_len) == 0) which = k;
    if (which < 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: tokenizer.ggml.pre: \"%s\" is not a pre-tokenizer tailor knows (known: "
                       "%s, %s, %s, %s, %s)", what, pre, pre_names[0].names, pre_names[1].names, pre_names[2].names,
                       pre_names[3].names, pre_names[4].names);
    int ignore_merges = pre_names[which].ignore_merges;

    size_t total = 1, na = 0;
    for (size_t i = 0; i < n_tokens; i++) {
        if (!tokens[i]) return tl_fail(err, TL_ERR_INPUT, "%s: tokenizer.ggml.tokens[%zu]: missing", what, i);
        total += strlen(tokens[i]) + 1;
        if (token_types && (token_types[i] == TL_TOKTYPE_CONTROL || token_types[i] == TL_TOKTYPE_USER_DEFINED)) na++;
    }
    for (size_t i = 0; i < n_merges; i++) {
        if (!merges[i]) return tl_fail(err, TL_ERR_INPUT, "%s: tokenizer.ggml.merges[%zu]: missing", what, i);
        total += strlen(merges[i]) + 2;
    }
    char *arena = malloc(total);
    vocab_in *vin = malloc((n_tokens ? n_tokens : 1) * sizeof *vin);
    merge_in *min = malloc((n_merges ? n_merges : 1) * sizeof *min);
    added_in *ain = malloc((na ? na : 1) * sizeof *ain);
    tl_status st = TL_OK;
    if (!arena || !vin || !min || !ain) {
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", what);
        goto fail;
    }
    size_t pos = 0, nv = 0, k = 0;
    for (size_t i = 0; i < n_tokens; i++) {
        const char *s = arena_put(arena, &pos, tokens[i], strlen(tokens[i]));
        if (token_types && (token_types[i] == TL_TOKTYPE_CONTROL || token_types[i] == TL_TOKTYPE_USER_DEFINED))
            ain[k++] = (added_in){s, (int32_t)i, 0};
        vin[nv++] = (vocab_in){s, (int32_t)i}; /* as in tokenizer.json, added tokens are vocabulary entries too */
    }
    for (size_t i = 0; i < n_merges; i++) {
        const char *sp = strchr(merges[i], ' ');
        if (!sp || strchr(sp + 1, ' ')) {
            st = tl_fail(err, TL_ERR_INPUT, "%s: tokenizer.ggml.merges[%zu]: expected \"left right\", got \"%.200s\"", what, i, merges[i]);
            goto fail;
        }
        min[i].left_len = (size_t)(sp - merges[i]), min[i].right_len = strlen(sp + 1);
        min[i].left = arena_put(arena, &pos, merges[i], min[i].left_len);
        min[i].right = arena_put(arena, &pos, sp + 1, min[i].right_len);
    }
    tl_tokenizer *t = NULL;
    st = build(what, &GGUF_FIELDS, arena, vin, nv, min, n_merges, ain, na, &t, err);
    arena = NULL;
    if (st != TL_OK) goto fail;
    t->ignore_merges = ignore_merges;
    if (pre_names[which].digits) t->steps[t->n_steps++] = (pretok_step){.kind = STEP_DIGITS, .individual_digits = 1};
    t->steps[t->n_steps] = (pretok_step){.kind = STEP_REGEX, .behavior = SPLIT_ISOLATED};
    st = tl_regex_compile(tl_pretok_pattern(pre_names[which].re), 0, what, "tokenizer.ggml.pre", &t->steps[t->n_steps].re, err);
    if (st != TL_OK) {
        tl_tokenizer_free(t);
        goto fail;
    }
    t->n_steps++;
    t->steps[t->n_steps++] = (pretok_step){.kind = STEP_BYTELEVEL};
    if (bos_id >= 0 && (size_t)bos_id >= t->n_ids) {
        tl_tokenizer_free(t);
        st = tl_fail(err, TL_ERR_INPUT, "%s: tokenizer.ggml.bos_token_id: %d is not below %zu", what, bos_id, n_tokens);
        goto fail;
    }
    t->bos_id = bos_id < 0 ? -1 : bos_id;
    *out = t;
fail:
    free(arena);
    free(vin);
    free(min);
    free(ain);
    return st;
}

/* ---- encoding ---- */

typedef struct {
    int32_t *ids;
    size_t n, cap;
    /* BPE scratch */
    int32_t *sym;
    int32_t *prev, *next;
    size_t sym_cap, link_cap; /* link_cap: the size of prev and next */
    struct heap_e { int32_t rank, pos, id; } *heap;
    size_t heap_n, heap_cap;
    char *buf; /* byte-level string of a piece (ignore_merges lookup) and prefix-space copies */
    size_t buf_cap;
    /* split steps: PCRE2 match data, and per step the pieces of the text being split and, for text that is not
     * valid UTF-8, its stand-in (each invalid byte as U+E000) with the map back to the text's offsets */
    tl_regex_match *md;
    int text_valid; /* the whole text, and so every piece of it, is valid UTF-8: pieces need no check */
    struct split_scratch {
        struct segment { size_t start, end; int match; } *seg;
        size_t seg_cap;
        uint8_t *text;
        size_t text_cap;
        size_t *map;
        size_t map_cap;
    } split[MAX_STEPS];
} enc_state;

static int push_id(enc_state *e, int32_t id) {
    if (e->n == e->cap) {
        size_t nc = e->cap ? e->cap * 2 : 256;
        int32_t *p = realloc(e->ids, nc * sizeof *p);
        if (!p) return 0;
        e->ids = p, e->cap = nc;
    }
    e->ids[e->n++] = id;
    return 1;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 1;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, nc * elem);
    if (!q) return 0;
    *p = q, *cap = nc;
    return 1;
}

static int heap_less(const struct heap_e *a, const struct heap_e *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static int heap_push(enc_state *e, struct heap_e x) {
    if (!grow((void **)&e->heap, &e->heap_cap, e->heap_n + 1, sizeof *e->heap)) return 0;
    size_t i = e->heap_n++;
    while (i > 0 && heap_less(&x, &e->heap[(i - 1) / 2])) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = x;
    return 1;
}

static struct heap_e heap_pop(enc_state *e) {
    struct heap_e top = e->heap[0], x = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_less(&e->heap[c + 1], &e->heap[c])) c++;
        if (!heap_less(&e->heap[c], &x)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = x;
    return top;
}

static const pmap_slot *merge_of(const tl_tokenizer *t, int32_t a, int32_t b) {
    const pmap_slot *s = pmap_find(&t->merges, ((uint64_t)(uint32_t)a << 32) | (uint32_t)b);
    return s->key == UINT64_MAX ? NULL : s;
}

/* BPE of one pre-tokenized piece (raw bytes). */
static tl_status bpe_piece(const tl_tokenizer *t, enc_state *e, const uint8_t *s, size_t n, tl_error *err) {
    if (t->ignore_merges) {
        if (!grow((void **)&e->buf, &e->buf_cap, 2 * n + 1, 1)) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
        size_t m = 0;
        for (size_t i = 0; i < n; i++) m += utf8_put(t->byte_char[s[i]], e->buf + m);
        int32_t id = smap_get(&t->vocab, e->buf, m);
        if (id >= 0) return push_id(e, id) ? TL_OK : tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
    }
    if (!grow((void **)&e->sym, &e->sym_cap, n, sizeof *e->sym)) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
    if (e->link_cap < e->sym_cap) { /* prev and next follow sym's size; reallocated only when it grew */
        int32_t *p = realloc(e->prev, e->sym_cap * sizeof *p);
        if (!p) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
        e->prev = p;
        p = realloc(e->next, e->sym_cap * sizeof *p);
        if (!p) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
        e->next = p;
        e->link_cap = e->sym_cap;
    }
    size_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[s[i]];
        if (id < 0) {
            if (t->unk_id < 0) return tl_fail(err, TL_ERR_INPUT, "tokenizer: byte 0x%02X has no token and there is no unk_token", s[i]);
            id = t->unk_id;
        }
        e->sym[ns] = id;
        e->prev[ns] = (int32_t)ns - 1;
        e->next[ns] = (int32_t)ns + 1;
        ns++;
    }
    if (ns) e->next[ns - 1] = -1;
    e->heap_n = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        const pmap_slot *m = merge_of(t, e->sym[i], e->sym[i + 1]);
        if (m && !heap_push(e, (struct heap_e){m->rank, (int32_t)i, m->id})) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
    }
    /* tokenizers' Word::merge_all: pop the lowest (rank, position); skip entries made stale by earlier merges */
    while (e->heap_n) {
        struct heap_e top = heap_pop(e);
        int32_t i = top.pos;
        if (e->sym[i] < 0) continue; /* merged into its left neighbour */
        int32_t j = e->next[i];
        if (j < 0) continue;
        const pmap_slot *m = merge_of(t, e->sym[i], e->sym[j]);
        if (!m || m->rank != top.rank || m->id != top.id) continue;
        e->sym[i] = top.id;
        e->sym[j] = -1;
        e->next[i] = e->next[j];
        if (e->next[j] >= 0) e->prev[e->next[j]] = i;
        if (e->prev[i] >= 0) {
            const pmap_slot *l = merge_of(t, e->sym[e->prev[i]], e->sym[i]);
            if (l && !heap_push(e, (struct heap_e){l->rank, e->prev[i], l->id})) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
        }
        if (e->next[i] >= 0) {
            const pmap_slot *r = merge_of(t, e->sym[i], e->sym[e->next[i]]);
            if (r && !heap_push(e, (struct heap_e){r->rank, i, r->id})) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
        }
    }
    for (int32_t i = ns ? 0 : -1; i >= 0; i = e->next[i])
        if (!push_id(e, e->sym[i])) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
    return TL_OK;
}

static tl_status pretok(const tl_tokenizer *t, enc_state *e, int k, const uint8_t *s, size_t n, tl_error *err);

/* Whether the character at s[p] is \p{N}, and its byte length; ASCII without a table lookup. */
static inline int is_number_at(const uint8_t *s, size_t n, size_t p, size_t *w) {
    if (s[p] < 0x80) {
        *w = 1;
        return s[p] >= '0' && s[p] <= '9';
    }
    uint32_t cp;
    *w = tl_utf8_next(s, n, p, &cp);
    return tl_unicode_class(cp) == TL_UC_NUMBER;
}

static int push_segment(struct split_scratch *sc, size_t *ns, size_t start, size_t end, int match) {
    if (!grow((void **)&sc->seg, &sc->seg_cap, *ns + 1, sizeof *sc->seg)) return 0;
    sc->seg[(*ns)++] = (struct segment){start, end, match};
    return 1;
}

/* A Split step as tokenizers runs it: the regex's matches and the text between them become segments (an empty match
 * splits too; one right after a match is skipped, as the onig crate's find_iter does), invert flips which are
 * matches, the behavior merges or drops them, and every non-empty piece goes on to step k + 1. Text that is not
 * valid UTF-8 (HF cannot take it) is matched through a stand-in where each invalid byte is U+E000, a private-use
 * character: neither letter, number nor space, as tailor treats invalid bytes (docs/tokenizer.md). */
static tl_status split_step(const tl_tokenizer *t, enc_state *e, int k, const uint8_t *s, size_t n, tl_error *err) {
    const pretok_step *st = &t->steps[k];
    struct split_scratch *sc = &e->split[k];
    if (!e->md && !(e->md = tl_regex_match_create())) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
    const uint8_t *subj = s;
    size_t sn = n;
    const size_t *map = NULL;
    if (!e->text_valid && !tl_utf8_valid(s, n)) {
        if (!grow((void **)&sc->text, &sc->text_cap, 3 * n, 1) || !grow((void **)&sc->map, &sc->map_cap, 3 * n + 1, sizeof *sc->map))
            return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
        sn = 0;
        for (size_t p = 0; p < n;) {
            uint32_t cp;
            size_t w = tl_utf8_next(s, n, p, &cp);
            if (cp >= TL_UC_INVALID_BASE) {
                static const uint8_t stand_in[3] = {0xEE, 0x80, 0x80}; /* U+E000 */
                for (int b = 0; b < 3; b++) sc->text[sn] = stand_in[b], sc->map[sn++] = p;
            } else {
                for (size_t b = 0; b < w; b++) sc->text[sn] = s[p + b], sc->map[sn++] = p + b;
            }
            p += w;
        }
        sc->map[sn] = n;
        subj = sc->text, map = sc->map;
    }
    size_t ns = 0, prev = 0, pos = 0, last_end = 0;
    int matched = 0;
    while (pos <= sn) {
        size_t a, b;
        int r = tl_regex_find(st->re, e->md, subj, sn, pos, 0, &a, &b, err);
        if (r < 0) return TL_ERR_RUNTIME;
        if (r == 0) break;
        if (a == b && matched && a == last_end) { /* an empty match right after a match */
        } else {
            if (a != prev && !push_segment(sc, &ns, prev, a, 0)) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
            if (!push_segment(sc, &ns, a, b, 1)) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
            prev = b, last_end = b, matched = 1;
        }
        if (a < b) {
            pos = b;
        } else { /* past the empty match by one character */
            if (a >= sn) break;
            uint32_t cp;
            pos = a + tl_utf8_next(subj, sn, a, &cp);
        }
    }
    if (prev != sn && !push_segment(sc, &ns, prev, sn, 0)) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
    struct segment *g = sc->seg;
    if (st->invert)
        for (size_t i = 0; i < ns; i++) g[i].match = !g[i].match;
    /* tokenizers' NormalizedString::split folds, in place */
    size_t m = 0;
    int prev_match = 0;
    switch (st->behavior) {
    case SPLIT_ISOLATED: m = ns; break;
    case SPLIT_REMOVED:
        for (size_t i = 0; i < ns; i++)
            if (!g[i].match) g[m++] = g[i];
        break;
    case SPLIT_MERGED_WITH_PREVIOUS:
        for (size_t i = 0; i < ns; i++) {
            if (g[i].match && !prev_match && m > 0) g[m - 1].end = g[i].end;
            else g[m++] = g[i];
            prev_match = g[i].match;
        }
        break;
    case SPLIT_MERGED_WITH_NEXT: /* the same from the end */
        m = ns;
        for (size_t i = ns; i-- > 0;) {
            if (g[i].match && !prev_match && m < ns) g[m].start = g[i].start;
            else g[--m] = g[i];
            prev_match = g[i].match;
        }
        memmove(g, g + m, (ns - m) * sizeof *g);
        m = ns - m;
        break;
    case SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < ns; i++) {
            if (g[i].match == prev_match && m > 0) g[m - 1].end = g[i].end;
            else g[m++] = g[i];
            prev_match = g[i].match;
        }
        break;
    }
    for (size_t i = 0; i < m; i++) {
        size_t a = map ? map[g[i].start] : g[i].start, b = map ? map[g[i].end] : g[i].end;
        TL_TRY(pretok(t, e, k + 1, s + a, b - a, err));
    }
    return TL_OK;
}

/* Runs pre-tokenizer steps k.. on the piece s[0..n), then BPE on every final piece. */
static tl_status pretok(const tl_tokenizer *t, enc_state *e, int k, const uint8_t *s, size_t n, tl_error *err) {
    if (n == 0) return TL_OK;
    if (k == t->n_steps) return bpe_piece(t, e, s, n, err);
    const pretok_step *st = &t->steps[k];
    if (st->kind == STEP_BYTELEVEL) {
        if (st->add_prefix_space && s[0] != ' ') {
            uint8_t *c = malloc(n + 1);
            if (!c) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
            c[0] = ' ';
            memcpy(c + 1, s, n);
            tl_status r = pretok(t, e, k + 1, c, n + 1, err);
            free(c);
            return r;
        }
        return pretok(t, e, k + 1, s, n, err);
    }
    if (st->kind == STEP_REGEX) return split_step(t, e, k, s, n, err);
    size_t p = 0, gap = 0; /* gap: start of unmatched text, kept as its own piece (Isolated) */
    while (p < n) {
        size_t m = 0, w;
        if (is_number_at(s, n, p, &w)) { /* Digits: char::is_numeric */
            m = w;
            if (!st->individual_digits)
                for (size_t q = p + w, w2; q < n && is_number_at(s, n, q, &w2); q += w2) m += w2;
        }
        if (m == 0) {
            p += w;
            continue;
        }
        TL_TRY(pretok(t, e, k + 1, s + gap, p - gap, err));
        TL_TRY(pretok(t, e, k + 1, s + p, m, err));
        p += m;
        gap = p;
    }
    return pretok(t, e, k + 1, s + gap, n - gap, err);
}

/* Longest added token of the pass (normalized or not) that starts at s[p], or NULL. */
static const added_tok *added_at(const tl_tokenizer *t, const uint8_t *s, size_t n, size_t p, int normalized) {
    for (size_t i = 0; i < t->n_added; i++) {
        const added_tok *a = &t->added[i];
        if (a->normalized == normalized && a->len <= n - p && (uint8_t)a->content[0] == s[p] &&
            memcmp(a->content, s + p, a->len) == 0)
            return a;
    }
    return NULL;
}

/* Added tokens: pass 0 cuts non-normalized ones, pass 1 normalized ones from what is left, then pre-tokenization. */
static tl_status split_added(const tl_tokenizer *t, enc_state *e, int pass, const uint8_t *s, size_t n, tl_error *err) {
    if (pass == 2) return pretok(t, e, 0, s, n, err);
    if (!t->has_added[pass]) return split_added(t, e, pass + 1, s, n, err);
    size_t gap = 0;
    for (size_t p = 0; p < n;) {
        const added_tok *a = t->added_first[s[p]] ? added_at(t, s, n, p, pass) : NULL;
        if (!a) {
            p++;
            continue;
        }
        TL_TRY(split_added(t, e, pass + 1, s + gap, p - gap, err));
        if (!push_id(e, a->id)) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
        p += a->len;
        gap = p;
    }
    return split_added(t, e, pass + 1, s + gap, n - gap, err);
}

tl_status tl_tokenizer_encode(const tl_tokenizer *t, const char *text, size_t len, unsigned flags, int32_t **ids,
                              size_t *n, tl_error *err) {
    *ids = NULL;
    *n = 0;
    const uint8_t *s = (const uint8_t *)text;
    if (t->nfc) { /* UAX #15 quick check: text that passes is already NFC, so HF's normalizer leaves it alone */
        int last_ccc = 0;
        for (size_t p = 0; p < len;) {
            uint32_t cp;
            size_t w = tl_utf8_next(s, len, p, &cp);
            int ccc = cp < TL_UC_INVALID_BASE ? tl_unicode_ccc(cp) : 0;
            if (cp < TL_UC_INVALID_BASE && ((ccc != 0 && last_ccc > ccc) || tl_unicode_nfc_qc_not_yes(cp)))
                return tl_fail(err, TL_ERR_INPUT, "tokenizer: text byte %zu: U+%04X may change under the NFC normalizer, which tailor does not implement; normalize the text to NFC first", p, (unsigned)cp);
            last_ccc = ccc;
            p += w;
        }
    }
    enc_state e;
    memset(&e, 0, sizeof e);
    e.text_valid = t->added_valid && tl_utf8_valid(s, len);
    tl_status st = TL_OK;
    if (flags & TL_TOK_ADD_BOS) {
        if (t->bos_id < 0) {
            st = tl_fail(err, TL_ERR_INPUT, "tokenizer: add BOS requested but the tokenizer has no BOS token");
            goto out;
        }
        if (!push_id(&e, t->bos_id)) {
            st = tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
            goto out;
        }
    }
    if (t->n_added)
        st = split_added(t, &e, 0, s, len, err);
    else
        st = pretok(t, &e, 0, s, len, err);
out:
    free(e.sym);
    free(e.prev);
    free(e.next);
    free(e.heap);
    free(e.buf);
    tl_regex_match_free(e.md);
    for (int k = 0; k < MAX_STEPS; k++) {
        free(e.split[k].seg);
        free(e.split[k].text);
        free(e.split[k].map);
    }
    if (st != TL_OK) {
        free(e.ids);
        return st;
    }
    if (!e.ids) {
        e.ids = malloc(sizeof *e.ids);
        if (!e.ids) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
    }
    *ids = e.ids;
    *n = e.n;
    return TL_OK;
}

/* ---- decoding, lookups ---- */

tl_status tl_tokenizer_decode(const tl_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len,
                              tl_error *err) {
    *text = NULL;
    *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= t->n_ids || !t->id_bytes[ids[i]])
            return tl_fail(err, TL_ERR_INPUT, "tokenizer: decode: ids[%zu] = %d is not a token id (vocabulary size %zu)", i, ids[i], t->n_ids);
        total += t->id_bytes_len[ids[i]];
    }
    char *out = malloc(total + 1);
    if (!out) return tl_fail(err, TL_ERR_RUNTIME, "tokenizer: out of memory");
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(out + o, t->id_bytes[ids[i]], t->id_bytes_len[ids[i]]);
        o += t->id_bytes_len[ids[i]];
    }
    out[o] = '\0';
    *text = out;
    *len = o;
    return TL_OK;
}

int32_t tl_tokenizer_token_id(const tl_tokenizer *t, const char *token) {
    size_t n = strlen(token);
    int32_t id = smap_get(&t->added_map, token, n);
    return id >= 0 ? id : smap_get(&t->vocab, token, n);
}

size_t tl_tokenizer_vocab_size(const tl_tokenizer *t) { return t->n_ids; }

int32_t tl_tokenizer_bos_id(const tl_tokenizer *t) { return t->bos_id; }

tl_status tl_tokenizer_set_bos_id(tl_tokenizer *t, int32_t id, tl_error *err) {
    if (id >= 0 && ((size_t)id >= t->n_ids || !t->id_bytes[id]))
        return tl_fail(err, TL_ERR_INPUT, "tokenizer: BOS id %d is not a token id (vocabulary size %zu)", id, t->n_ids);
    t->bos_id = id < 0 ? -1 : id;
    return TL_OK;
}

/* ---- ChatML ---- */

tl_status tl_chat_render(const tl_chat_msg *msgs, size_t n, int add_generation_prompt, char **out, size_t *len,
                         tl_error *err) {
    static const char start[] = "<|im_start|>", end[] = "<|im_end|>\n", gen[] = "<|im_start|>assistant\n";
    *out = NULL;
    *len = 0;
    size_t total = 1;
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content || msgs[i].role[0] == '\0')
            return tl_fail(err, TL_ERR_INPUT, "chat: messages[%zu]: missing role or content", i);
        total += strlen(start) + strlen(msgs[i].role) + 1 + strlen(msgs[i].content) + strlen(end);
    }
    if (add_generation_prompt) total += strlen(gen);
    char *s = malloc(total);
    if (!s) return tl_fail(err, TL_ERR_RUNTIME, "chat: out of memory");
    size_t o = 0;
#define PUT(str)                         \
    do {                                 \
        size_t l_ = strlen(str);         \
        memcpy(s + o, (str), l_);        \
        o += l_;                         \
    } while (0)
    for (size_t i = 0; i < n; i++) {
        PUT(start);
        PUT(msgs[i].role);
        PUT("\n");
        PUT(msgs[i].content);
        PUT(end);
    }
    if (add_generation_prompt) PUT(gen);
#undef PUT
    s[o] = '\0';
    *out = s;
    *len = o;
    return TL_OK;
}
