/* Input reading shared by the cross-check tools (tl_dump, tl_dump_pref): 1-D I32 tensors, numeric metadata, the
 * comma-separated LoRA target list and the LoRA weights of an IN.safetensors file, each failure a one-line
 * TL_ERR_INPUT naming the file and the tensor or key; and the host micro-batch both tools build by the batchers'
 * row rules. Header-only: each tool is one translation unit. */
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

/* The LoRA metadata of IN (rank, alpha, rslora 0/1, n_slots, targets), range-checked. */
typedef struct {
    double rank, alpha, rslora, n_slots;
    uint32_t targets;
} tool_lora_meta;
static inline tl_status read_lora_meta(tl_st_file *f, tool_lora_meta *m, tl_error *err) {
    memset(m, 0, sizeof *m);
    TL_TRY(meta_num(f, "rank", &m->rank, err));
    TL_TRY(meta_num(f, "alpha", &m->alpha, err));
    TL_TRY(meta_num(f, "rslora", &m->rslora, err));
    TL_TRY(meta_num(f, "n_slots", &m->n_slots, err));
    TL_TRY(parse_targets(f, &m->targets, err));
    if (m->n_slots < 1 || m->n_slots > 1024 || m->rank < 1)
        return tl_fail(err, TL_ERR_INPUT, "%s: metadata n_slots %g / rank %g out of range", tl_st_path(f),
                       m->n_slots, m->rank);
    return TL_OK;
}

/* Adapter names "slot0".."slot{n-1}" for the pool (freed with free_slot_names, also after a partial failure). */
static inline tl_status slot_names(int n_slots, char ***names, tl_error *err) {
    *names = calloc((size_t)n_slots, sizeof(char *));
    if (!*names) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    for (int s = 0; s < n_slots; s++) {
        (*names)[s] = malloc(32);
        if (!(*names)[s]) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        snprintf((*names)[s], 32, "slot%d", s);
    }
    return TL_OK;
}
static inline void free_slot_names(char **names, int n_slots) {
    if (names)
        for (int s = 0; s < n_slots; s++) free(names[s]);
    free(names);
}

/* Reads every slot's LoRA A [r, in] and B [out, r] of pool p from IN tensors "{prefix}.{slot}.{layer}.{target}.A|B"
 * into host (the pool's layout, n_slots * P floats); returns in *filled how many floats that wrote. */
static inline tl_status read_lora_ab(tl_st_file *f, const tl_lora_pool *p, const char *prefix, int n_slots,
                                     float *host, size_t *filled, tl_error *err) {
    char name[128];
    size_t P = p->P;
    *filled = 0;
    for (int s = 0; s < n_slots; s++)
        for (int l = 0; l < p->n_layers; l++)
            for (int t = 0; t < TL_N_TARGETS; t++) {
                if (!(p->targets & (1u << t))) continue;
                size_t k = (size_t)l * TL_N_TARGETS + t;
                int in = p->in_dim[t], out = p->out_dim[t], r = p->rank;
                int64_t sa[2] = {r, in}, sb[2] = {out, r};
                snprintf(name, sizeof name, "%s.%d.%d.%s.A", prefix, s, l, tl_target_names[t]);
                TL_TRY(tl_st_read_f32(f, name, sa, 2, host + (size_t)s * P + p->off_A[k], err));
                snprintf(name, sizeof name, "%s.%d.%d.%s.B", prefix, s, l, tl_target_names[t]);
                TL_TRY(tl_st_read_f32(f, name, sb, 2, host + (size_t)s * P + p->off_B[k], err));
                *filled += (size_t)r * in + (size_t)out * r;
            }
    return TL_OK;
}

/* The host micro-batch's row arrays for n tokens in nseq sequences (tokens and cu_seqlens are set by the caller). */
static inline tl_status mb_alloc(tl_host_mb *mb, int64_t n, int64_t nseq, tl_error *err) {
    mb->n_tok = (int)n, mb->n_seq = (int)nseq;
    mb->pos = malloc((size_t)n * sizeof(int32_t));
    mb->targets = malloc((size_t)n * sizeof(int32_t));
    mb->weight = malloc((size_t)n * sizeof(float));
    mb->adapter = malloc((size_t)n * sizeof(int32_t));
    mb->row_seed = malloc((size_t)n * sizeof(uint64_t));
    mb->segs = malloc((size_t)nseq * sizeof(tl_seg));
    mb->example = malloc((size_t)nseq * sizeof(int64_t));
    if (!mb->pos || !mb->targets || !mb->weight || !mb->adapter || !mb->row_seed || !mb->segs || !mb->example)
        return tl_fail(err, TL_ERR_RUNTIME, "out of memory building the micro-batch");
    return TL_OK;
}
static inline void mb_free(tl_host_mb *mb) {
    free(mb->tokens), free(mb->pos), free(mb->cu_seqlens), free(mb->targets), free(mb->weight);
    free(mb->adapter), free(mb->row_seed), free(mb->segs), free(mb->example);
}

/* Lays the rows out by the batchers' rules: one segment per run of sequences of a slot (slots in [min_slot,
 * n_slots), each slot one contiguous run), positions, adapters, row seeds, and targets (row j-1 of a sequence
 * targets tokens[j] for j >= max(1, prompt_len), else -1). Sequence s is example s / seqs_per_example. Weights
 * are the caller's (the two batchers weigh rows differently). */
static inline tl_status mb_layout(tl_host_mb *mb, const int32_t *seq_slot, const int32_t *prompt_len, int n_slots,
                                  int min_slot, int seqs_per_example, tl_error *err) {
    const int32_t *tokens = mb->tokens, *cu = mb->cu_seqlens;
    int64_t n = mb->n_tok, nseq = mb->n_seq;
    if (cu[0] != 0 || cu[nseq] != n)
        return tl_fail(err, TL_ERR_INPUT, "cu_seqlens must start at 0 and end at %lld", (long long)n);
    mb->max_seqlen = 0;
    mb->n_seg = 0;
    for (int64_t s = 0; s < nseq; s++) {
        int32_t b = cu[s], e = cu[s + 1], slot = seq_slot[s];
        if (e <= b) return tl_fail(err, TL_ERR_INPUT, "cu_seqlens: sequence %lld is empty", (long long)s);
        if (slot < min_slot || slot >= n_slots)
            return tl_fail(err, TL_ERR_INPUT, "seq_slot[%lld] = %d outside [%d, %d)", (long long)s, slot, min_slot,
                           n_slots);
        if (e - b > mb->max_seqlen) mb->max_seqlen = e - b;
        if (mb->n_seg > 0 && mb->segs[mb->n_seg - 1].slot == slot) {
            mb->segs[mb->n_seg - 1].row1 = e;
        } else {
            for (int g = 0; g < mb->n_seg; g++)
                if (mb->segs[g].slot == slot)
                    return tl_fail(err, TL_ERR_INPUT, "sequence %lld: slot %d appears in two runs; group the "
                                   "sequences by slot", (long long)s, slot);
            mb->segs[mb->n_seg++] = (tl_seg){.row0 = b, .row1 = e, .slot = slot};
        }
        mb->example[s] = s / seqs_per_example;
        int first = prompt_len[s] > 1 ? prompt_len[s] : 1;
        for (int32_t j = b; j < e; j++) {
            int32_t k = j - b;
            mb->pos[j] = k;
            mb->adapter[j] = slot;
            mb->row_seed[j] = (uint64_t)j * 0x9e3779b97f4a7c15ULL + 1;
            mb->targets[j] = (k + 1 < e - b && k + 1 >= first) ? tokens[j + 1] : -1;
        }
    }
    return TL_OK;
}

/* Every token of the batch inside the model's vocabulary of V. */
static inline tl_status check_vocab(const char *in_path, const int32_t *tokens, int64_t n, int V, tl_error *err) {
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return tl_fail(err, TL_ERR_INPUT, "%s: tokens[%lld] = %d outside the vocabulary of %d", in_path,
                           (long long)i, tokens[i], V);
    return TL_OK;
}

/* main's two ends: the argument count (usage line and exit code 2 otherwise), and the exit code of the run (its
 * status, the message on stderr prefixed by the tool's name). */
static inline int tool_args_ok(int argc, int want, const char *usage) {
    if (argc == want) return 1;
    fprintf(stderr, "usage: %s\n", usage);
    return 0;
}
static inline int tool_exit(const char *tool, tl_status s, const tl_error *err) {
    if (s == TL_OK) return 0;
    fprintf(stderr, "%s: %s\n", tool, err->msg);
    return (int)s;
}

#endif
