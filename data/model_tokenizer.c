/* model_tokenizer: finds and loads a model's tokenizer (see tl_model_tokenizer.h). */
#include "data/tl_model_tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/tl_gguf.h"

/* A token id from the metadata: absent is -1; present, it must be an integer naming a token (an id such as
 * 2^32 + 5 is refused, never truncated to 5). */
static tl_status token_id_key(tl_gguf *g, const char *key, uint64_t n_tokens, int64_t *out, tl_error *err) {
    *out = -1;
    if (tl_gguf_find_key(g, key) < 0) return TL_OK;
    int64_t v;
    TL_TRY(tl_gguf_get_int(g, key, &v, err));
    if (v < 0 || (uint64_t)v >= n_tokens)
        return tl_fail(err, TL_ERR_INPUT, "%s: metadata key '%s': token id %lld is not in [0, %llu) (the size of "
                       "tokenizer.ggml.tokens)", tl_gguf_path(g), key, (long long)v, (unsigned long long)n_tokens);
    *out = v;
    return TL_OK;
}

static tl_status from_gguf(const char *path, tl_tokenizer **out, tl_error *err) {
    tl_gguf *g;
    TL_TRY(tl_gguf_open(path, &g, err));
    const char *model = NULL, *pre = "default";
    const char *const *tokens = NULL, *const *merges = NULL;
    uint64_t n_tokens = 0, n_merges = 0;
    int32_t *types = NULL;
    int64_t *types64 = NULL, bos = -1, other;
    tl_status s = tl_gguf_get_str(g, "tokenizer.ggml.model", &model, NULL, err);
    if (!s && tl_gguf_find_key(g, "tokenizer.ggml.pre") >= 0) s = tl_gguf_get_str(g, "tokenizer.ggml.pre", &pre, NULL, err);
    if (!s) s = tl_gguf_get_str_array(g, "tokenizer.ggml.tokens", &tokens, NULL, &n_tokens, err);
    /* token ids are int32 everywhere after this */
    if (!s && (n_tokens == 0 || n_tokens > INT32_MAX))
        s = tl_fail(err, TL_ERR_INPUT, "%s: metadata key 'tokenizer.ggml.tokens': %llu entries (expected 1 to %d)",
                    path, (unsigned long long)n_tokens, INT32_MAX);
    if (!s && tl_gguf_find_key(g, "tokenizer.ggml.merges") >= 0)
        s = tl_gguf_get_str_array(g, "tokenizer.ggml.merges", &merges, NULL, &n_merges, err);
    if (!s && n_merges > INT32_MAX)
        s = tl_fail(err, TL_ERR_INPUT, "%s: metadata key 'tokenizer.ggml.merges': %llu entries (expected at most %d)",
                    path, (unsigned long long)n_merges, INT32_MAX);
    if (!s && tl_gguf_find_key(g, "tokenizer.ggml.token_type") >= 0) {
        types64 = malloc(n_tokens * sizeof *types64);
        types = malloc(n_tokens * sizeof *types);
        if (!types64 || !types) s = tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        if (!s) s = tl_gguf_get_i64_array(g, "tokenizer.ggml.token_type", types64, n_tokens, err);
        /* llama.cpp's token types: 0 undefined, 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte */
        for (uint64_t i = 0; !s && i < n_tokens; i++) {
            if (types64[i] < 0 || types64[i] > 6)
                s = tl_fail(err, TL_ERR_INPUT, "%s: metadata key 'tokenizer.ggml.token_type' element %llu: %lld is not "
                            "a token type (expected 0 to 6)", path, (unsigned long long)i, (long long)types64[i]);
            else
                types[i] = (int32_t)types64[i];
        }
    }
    if (!s) s = token_id_key(g, "tokenizer.ggml.bos_token_id", n_tokens, &bos, err);
    static const char *const other_ids[] = {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                                            "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.separator_token_id",
                                            "tokenizer.ggml.eot_token_id"};
    for (size_t k = 0; !s && k < sizeof other_ids / sizeof other_ids[0]; k++)
        s = token_id_key(g, other_ids[k], n_tokens, &other, err);
    if (!s) {
        const tl_gguf_vocab v = {.model = model, .pre = pre, .tokens = (const char *const *)tokens,
                                 .n_tokens = (size_t)n_tokens, .merges = (const char *const *)merges,
                                 .n_merges = (size_t)n_merges, .token_types = types, .bos_id = (int32_t)bos};
        s = tl_tokenizer_from_vocab(path, &v, out, err);
    }
    free(types);
    free(types64);
    tl_gguf_close(g);
    return s;
}

tl_status tl_tokenizer_for_model(const char *model_path, tl_tokenizer **out, tl_error *err) {
    size_t n = strlen(model_path);
    if (n > 5 && !strcmp(model_path + n - 5, ".gguf")) return from_gguf(model_path, out, err);
    char path[8192];
    snprintf(path, sizeof path, "%s/tokenizer.json", model_path);
    if (access(path, R_OK) != 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: no tokenizer.json (expected an HF model directory or a .gguf file)",
                       model_path);
    return tl_tokenizer_load_json(path, out, err);
}
