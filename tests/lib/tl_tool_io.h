/* Input reading shared by the cross-check tools (tl_dump, tl_dump_pref): 1-D I32 tensors, numeric metadata and
 * the comma-separated LoRA target list of an IN.safetensors file, each failure a one-line TL_ERR_INPUT naming
 * the file and the tensor or key. Header-only: each tool is one translation unit. */
#ifndef TL_TOOL_IO_H
#define TL_TOOL_IO_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_safetensors.h"
#include "trainer/model/tl_model.h"

/* A 1-D I32 tensor of IN into a fresh array; *n receives its length (checked against want when want >= 0). */
static inline tl_status read_i32(tl_st_file *f, const char *name, int64_t want, int32_t **out, int64_t *n,
                                 tl_error *err) {
    const tl_st_tensor *t = tl_st_find(f, name);
    if (!t) return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' is missing", tl_st_path(f), name);
    if (t->dtype != TL_DT_I32 || t->ndim != 1)
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' must be a 1-D I32 tensor", tl_st_path(f), name);
    if (want >= 0 && t->shape[0] != want)
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' has %lld elements, expected %lld", tl_st_path(f), name,
                       (long long)t->shape[0], (long long)want);
    *n = t->shape[0];
    *out = malloc((size_t)(*n > 0 ? *n : 1) * sizeof(int32_t));
    if (!*out) return tl_fail(err, TL_ERR_RUNTIME, "out of memory reading '%s'", name);
    return tl_st_read_bytes(f, name, *out, (uint64_t)*n * sizeof(int32_t), err);
}

/* Metadata key as a number (the whole value must parse). */
static inline tl_status meta_num(tl_st_file *f, const char *key, double *v, tl_error *err) {
    const char *s = tl_st_metadata(f, key);
    char *end = NULL;
    if (!s) return tl_fail(err, TL_ERR_INPUT, "%s: metadata '%s' is missing", tl_st_path(f), key);
    *v = strtod(s, &end);
    if (end == s || *end)
        return tl_fail(err, TL_ERR_INPUT, "%s: metadata '%s' = '%s' is not a number", tl_st_path(f), key, s);
    return TL_OK;
}

/* Metadata "targets" (e.g. "q_proj,v_proj") as a bit mask over tl_target_names; empty or unknown names are errors. */
static inline tl_status parse_targets(tl_st_file *f, uint32_t *mask, tl_error *err) {
    const char *s = tl_st_metadata(f, "targets");
    if (!s) return tl_fail(err, TL_ERR_INPUT, "%s: metadata 'targets' is missing", tl_st_path(f));
    *mask = 0;
    while (*s) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        int found = -1;
        for (int t = 0; t < TL_N_TARGETS; t++)
            if (strlen(tl_target_names[t]) == len && !strncmp(tl_target_names[t], s, len)) found = t;
        if (found < 0)
            return tl_fail(err, TL_ERR_INPUT, "%s: metadata 'targets': unknown module '%.*s'", tl_st_path(f),
                           (int)len, s);
        *mask |= 1u << found;
        s += len + (e ? 1 : 0);
    }
    if (!*mask) return tl_fail(err, TL_ERR_INPUT, "%s: metadata 'targets' is empty", tl_st_path(f));
    return TL_OK;
}

/* Adds every slot's LoRA gradients (host copy of the pool's grads) as "grad.{slot}.{layer}.{target}.A|B". */
static inline tl_status add_lora_grads(tl_st_writer *w, const tl_lora_pool *p, const float *grads, int n_slots,
                                       tl_error *err) {
    char name[128];
    for (int s = 0; s < n_slots; s++)
        for (int l = 0; l < p->n_layers; l++)
            for (int t = 0; t < TL_N_TARGETS; t++) {
                if (!(p->targets & (1u << t))) continue;
                size_t k = (size_t)l * TL_N_TARGETS + t;
                int64_t sa[2] = {p->rank, p->in_dim[t]}, sb[2] = {p->out_dim[t], p->rank};
                snprintf(name, sizeof name, "grad.%d.%d.%s.A", s, l, tl_target_names[t]);
                TL_TRY(tl_st_writer_add_f32(w, name, sa, 2, grads + (size_t)s * p->P + p->off_A[k], err));
                snprintf(name, sizeof name, "grad.%d.%d.%s.B", s, l, tl_target_names[t]);
                TL_TRY(tl_st_writer_add_f32(w, name, sb, 2, grads + (size_t)s * p->P + p->off_B[k], err));
            }
    return TL_OK;
}

#endif
