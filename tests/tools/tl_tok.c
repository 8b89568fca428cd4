/* tl_tok: the tokenizer module from the command line, for tests/torch/test_tokenizer_vs_hf.py.
 *
 *   tl_tok encode [--bos] [--gguf PRE] TOKENIZER_JSON RECORDS   one line of ids per record ("ERR msg" on failure)
 *   tl_tok decode [--gguf PRE] TOKENIZER_JSON IDS               IDS: a line of ids per text; writes records
 *   tl_tok load TOKENIZER_JSON                                  prints "vocab N bos B", or the error (exit code)
 *   tl_tok chat [--gen] MESSAGES_JSON                           prints the ChatML rendering of [{role, content}]
 *
 * RECORDS is a file of "<byte length>\n<bytes>" records, so texts may hold any bytes. --gguf PRE builds the
 * tokenizer with tl_tokenizer_from_vocab from the tokenizer.json's arrays laid out as a GGUF has them (tokens by
 * id, "a b" merges, added special tokens as CONTROL, other added tokens as USER_DEFINED), pre-tokenizer PRE. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_tokenizer.h"

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        char *nb = realloc(buf, 2 * cap + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb, cap *= 2;
    }
    if (ferror(f)) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    *len = n;
    return buf;
}

static int die(const tl_error *err) {
    fprintf(stderr, "%s\n", err->msg);
    return err->code ? (int)err->code : 1;
}

/* The tokenizer.json's arrays as a GGUF would store them. */
static tl_status load_gguf_style(const char *path, const char *pre, tl_tokenizer **out, tl_error *err) {
    size_t len;
    char *text = slurp(path, &len);
    if (!text) return tl_fail(err, TL_ERR_INPUT, "%s: cannot read", path);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return tl_fail(err, TL_ERR_INPUT, "%s: not JSON", path);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    size_t n = 0, nm = (size_t)cJSON_GetArraySize(merges);
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) if ((size_t)it->valuedouble + 1 > n) n = (size_t)it->valuedouble + 1;
    cJSON_ArrayForEach(it, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        if ((size_t)id->valuedouble + 1 > n) n = (size_t)id->valuedouble + 1;
    }
    const char **tokens = calloc(n, sizeof *tokens);
    int32_t *types = calloc(n, sizeof *types);
    const char **mer = calloc(nm ? nm : 1, sizeof *mer);
    char **owned = calloc(nm ? nm : 1, sizeof *owned);
    tl_status st = TL_OK;
    if (!tokens || !types || !mer || !owned) {
        st = tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        goto out;
    }
    cJSON_ArrayForEach(it, vocab) {
        tokens[(size_t)it->valuedouble] = it->string;
        types[(size_t)it->valuedouble] = TL_TOKTYPE_NORMAL;
    }
    cJSON_ArrayForEach(it, added) {
        size_t id = (size_t)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble;
        tokens[id] = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
        types[id] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "special")) ? TL_TOKTYPE_CONTROL
                                                                                   : TL_TOKTYPE_USER_DEFINED;
    }
    size_t i = 0;
    cJSON_ArrayForEach(it, merges) {
        if (cJSON_IsString(it)) {
            mer[i] = it->valuestring;
        } else {
            const char *a = cJSON_GetArrayItem(it, 0)->valuestring, *b = cJSON_GetArrayItem(it, 1)->valuestring;
            owned[i] = malloc(strlen(a) + strlen(b) + 2);
            if (!owned[i]) {
                st = tl_fail(err, TL_ERR_RUNTIME, "out of memory");
                goto out;
            }
            sprintf(owned[i], "%s %s", a, b);
            mer[i] = owned[i];
        }
        i++;
    }
    const tl_gguf_vocab v = {.model = "gpt2", .pre = pre, .tokens = (const char *const *)tokens, .n_tokens = n,
                             .merges = (const char *const *)mer, .n_merges = nm, .token_types = types, .bos_id = -1};
    st = tl_tokenizer_from_vocab(path, &v, out, err);
out:
    for (size_t k = 0; owned && k < nm; k++) free(owned[k]);
    free(owned);
    free(mer);
    free(types);
    free(tokens);
    cJSON_Delete(root);
    return st;
}

int main(int argc, char **argv) {
    tl_error err = {0};
    int bos = 0, gen = 0;
    const char *gguf = NULL;
    if (argc < 3) goto usage;
    const char *cmd = argv[1];
    int a = 2;
    for (; a < argc && strncmp(argv[a], "--", 2) == 0; a++) {
        if (strcmp(argv[a], "--bos") == 0) bos = 1;
        else if (strcmp(argv[a], "--gen") == 0) gen = 1;
        else if (strcmp(argv[a], "--gguf") == 0 && a + 1 < argc) gguf = argv[++a];
        else goto usage;
    }
    if (strcmp(cmd, "chat") == 0) {
        if (a + 1 != argc) goto usage;
        size_t len;
        char *text = slurp(argv[a], &len);
        cJSON *root = text ? cJSON_ParseWithLength(text, len) : NULL;
        free(text);
        if (!cJSON_IsArray(root)) {
            fprintf(stderr, "%s: expected a JSON array of messages\n", argv[a]);
            cJSON_Delete(root);
            return 2;
        }
        size_t n = (size_t)cJSON_GetArraySize(root), i = 0;
        tl_chat_msg *m = calloc(n ? n : 1, sizeof *m);
        if (!m) {
            cJSON_Delete(root);
            return 1;
        }
        const cJSON *it;
        cJSON_ArrayForEach(it, root) {
            const cJSON *r = cJSON_GetObjectItemCaseSensitive(it, "role"), *c = cJSON_GetObjectItemCaseSensitive(it, "content");
            m[i].role = cJSON_IsString(r) ? r->valuestring : NULL;
            m[i].content = cJSON_IsString(c) ? c->valuestring : NULL;
            i++;
        }
        char *out;
        size_t olen;
        tl_status st = tl_chat_render(m, n, gen, &out, &olen, &err);
        free(m);
        cJSON_Delete(root);
        if (st != TL_OK) return die(&err);
        fwrite(out, 1, olen, stdout);
        free(out);
        return 0;
    }
    if (a >= argc) goto usage;
    const char *tok_path = argv[a++];
    tl_tokenizer *t = NULL;
    if ((gguf ? load_gguf_style(tok_path, gguf, &t, &err) : tl_tokenizer_load_json(tok_path, &t, &err)) != TL_OK)
        return die(&err);
    int rc = 0;
    if (strcmp(cmd, "load") == 0 && a == argc) {
        printf("vocab %zu bos %d\n", tl_tokenizer_vocab_size(t), (int)tl_tokenizer_bos_id(t));
    } else if (strcmp(cmd, "encode") == 0 && a + 1 == argc) {
        size_t len;
        char *data = slurp(argv[a], &len);
        if (!data) {
            fprintf(stderr, "%s: cannot read\n", argv[a]);
            tl_tokenizer_free(t);
            return 2;
        }
        size_t p = 0;
        while (p < len) {
            char *end;
            unsigned long long n = strtoull(data + p, &end, 10);
            if (end == data + p || *end != '\n' || n > len - (size_t)(end + 1 - data)) {
                fprintf(stderr, "%s: bad record at byte %zu\n", argv[a], p);
                rc = 2;
                break;
            }
            p = (size_t)(end + 1 - data);
            int32_t *ids;
            size_t nid;
            if (tl_tokenizer_encode(t, data + p, (size_t)n, bos ? TL_TOK_ADD_BOS : 0, &ids, &nid, &err) != TL_OK) {
                printf("ERR %s\n", err.msg);
            } else {
                for (size_t i = 0; i < nid; i++) printf(i ? " %d" : "%d", (int)ids[i]);
                printf("\n");
                free(ids);
            }
            p += (size_t)n;
        }
        free(data);
    } else if (strcmp(cmd, "decode") == 0 && a + 1 == argc) {
        FILE *f = fopen(argv[a], "r");
        if (!f) {
            fprintf(stderr, "%s: cannot open\n", argv[a]);
            tl_tokenizer_free(t);
            return 2;
        }
        char *line = NULL;
        size_t cap = 0;
        ssize_t got;
        while (rc == 0 && (got = getline(&line, &cap, f)) >= 0) {
            size_t n = 0, ncap = 16;
            int32_t *ids = malloc(ncap * sizeof *ids);
            char *q = line;
            while (ids) {
                char *end;
                long v = strtol(q, &end, 10);
                if (end == q) break;
                if (n == ncap) {
                    int32_t *nids = realloc(ids, (ncap *= 2) * sizeof *ids);
                    if (!nids) free(ids);
                    ids = nids;
                    if (!ids) break;
                }
                ids[n++] = (int32_t)v;
                q = end;
            }
            if (!ids) {
                fprintf(stderr, "out of memory\n");
                rc = 1;
                break;
            }
            char *text;
            size_t tlen;
            if (tl_tokenizer_decode(t, ids, n, &text, &tlen, &err) != TL_OK) {
                rc = die(&err);
            } else {
                printf("%zu\n", tlen);
                fwrite(text, 1, tlen, stdout);
                free(text);
            }
            free(ids);
        }
        free(line);
        fclose(f);
    } else {
        tl_tokenizer_free(t);
        goto usage;
    }
    tl_tokenizer_free(t);
    return rc;
usage:
    fprintf(stderr, "usage: tl_tok encode [--bos] [--gguf PRE] TOKENIZER_JSON RECORDS | decode [--gguf PRE] "
                    "TOKENIZER_JSON IDS | load TOKENIZER_JSON | chat [--gen] MESSAGES_JSON\n");
    return 2;
}
