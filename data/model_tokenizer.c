/* model_tokenizer: finds and loads a model's tokenizer (see tl_model_tokenizer.h). */
#include "tl_model_tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tl_gguf.h"

static tl_status from_gguf(const char *path, tl_tokenizer **out, tl_error *err) {
    tl_gguf *g;
    TL_TRY(tl_gguf_open(path, &g, err));
    const char *model = NULL, *pre = "default";
    const char *const *tokens = NULL, *const *merges = NULL;
    uint64_t n_tokens = 0, n_merges = 0;
    int32_t *types = NULL;
    int64_t *types64 = NULL, bos = -1;
    tl_status s = tl_gguf_get_str(g, "tokenizer.ggml.model", &model, NULL, err);
    if (!s && tl_gguf_find_key(g, "tokenizer.ggml.pre") >= 0) s = tl_gguf_get_str(g, "tokenizer.ggml.pre", &pre, NULL, err);
    if (!s) s = tl_gguf_get_str_array(g, "tokenizer.ggml.tokens", &tokens, NULL, &n_tokens, err);
    if (!s && tl_gguf_find_key(g, "tokenizer.ggml.merges") >= 0)
        s = tl_gguf_get_str_array(g, "tokenizer.ggml.merges", &merges, NULL, &n_merges, err);
    if (!s && tl_gguf_find_key(g, "tokenizer.ggml.token_type") >= 0) {
        types64 = malloc(n_tokens * sizeof *types64);
        types = malloc(n_tokens * sizeof *types);
        if (!types64 || !types) s = tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        if (!s) s = tl_gguf_get_i64_array(g, "tokenizer.ggml.token_type", types64, n_tokens, err);
        for (uint64_t i = 0; !s && i < n_tokens; i++) types[i] = (int32_t)types64[i];
    }
    if (!s && tl_gguf_find_key(g, "tokenizer.ggml.bos_token_id") >= 0)
        s = tl_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &bos, err);
    if (!s)
        s = tl_tokenizer_from_vocab(path, model, pre, tokens, (size_t)n_tokens, merges, (size_t)n_merges, types,
                                    (int32_t)bos, out, err);
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
