/* tl_gguf: reading llama.cpp's GGUF model files (versions 2 and 3, little-endian) and presenting a Llama GGUF as
 * an HF model: HF tensor names, HF shapes, weights dequantized to fp32 and attn_q / attn_k rows put back in HF's
 * rotate-half order, and a tl_model_config filled from the llama.* metadata.
 *
 * Open validates the whole header before anything is used (magic, version, every key/value, every tensor info:
 * known ggml type, dims, byte size without overflow, data range inside the file, alignment) so a truncated or
 * corrupt file is one TL_ERR_INPUT line naming the file and the key or tensor. The file is read with pread. */
#ifndef TL_GGUF_H
#define TL_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/tl_status.h"
#include "data/tl_hf_config.h"

/* GGUF metadata value types (gguf_type in ggml). */
typedef enum {
    TL_GGUF_U8 = 0, TL_GGUF_I8 = 1, TL_GGUF_U16 = 2, TL_GGUF_I16 = 3, TL_GGUF_U32 = 4, TL_GGUF_I32 = 5,
    TL_GGUF_F32 = 6, TL_GGUF_BOOL = 7, TL_GGUF_STRING = 8, TL_GGUF_ARRAY = 9, TL_GGUF_U64 = 10, TL_GGUF_I64 = 11,
    TL_GGUF_F64 = 12
} tl_gguf_vtype;

/* ggml tensor types tailor dequantizes (ggml_type numbering); others are validated but refused on read. */
enum {
    TL_GGML_F32 = 0, TL_GGML_F16 = 1, TL_GGML_Q4_0 = 2, TL_GGML_Q4_1 = 3, TL_GGML_Q8_0 = 8, TL_GGML_Q4_K = 12,
    TL_GGML_Q6_K = 14, TL_GGML_F64 = 28, TL_GGML_BF16 = 30
};

#define TL_GGUF_MAX_DIMS 4

typedef struct {
    char *name;
    int n_dims;
    int64_t ne[TL_GGUF_MAX_DIMS]; /* ne[0] varies fastest (the row length); unused dims are 1 */
    uint32_t type;                /* ggml_type */
    uint64_t offset;              /* from the start of the data section */
    uint64_t nbytes;
} tl_gguf_tensor;

typedef struct tl_gguf tl_gguf;

tl_status tl_gguf_open(const char *path, tl_gguf **out, tl_error *err);
void tl_gguf_close(tl_gguf *g);
const char *tl_gguf_path(const tl_gguf *g);
uint32_t tl_gguf_version(const tl_gguf *g);
uint64_t tl_gguf_alignment(const tl_gguf *g);
uint64_t tl_gguf_data_offset(const tl_gguf *g); /* file offset of the data section */

/* ggml type name ("Q4_K"), "?" when unknown. */
const char *tl_gguf_type_name(uint32_t type);

/* ---- metadata. Keys are looked up exactly. A missing key or a value of the wrong type is TL_ERR_INPUT naming
 * the file, the key, and what was expected. Returned pointers live as long as g. */
int tl_gguf_n_kv(const tl_gguf *g);
const char *tl_gguf_kv_key(const tl_gguf *g, int i);
int tl_gguf_find_key(const tl_gguf *g, const char *key); /* index, -1 if absent */
tl_gguf_vtype tl_gguf_kv_type(const tl_gguf *g, int i);
tl_gguf_vtype tl_gguf_kv_array_type(const tl_gguf *g, int i); /* element type, for arrays */
uint64_t tl_gguf_kv_array_len(const tl_gguf *g, int i);        /* 0 for scalars */
/* Any integer type or bool (uint64 above INT64_MAX is refused). */
tl_status tl_gguf_get_int(const tl_gguf *g, const char *key, int64_t *out, tl_error *err);
/* float32, float64 or any integer type. */
tl_status tl_gguf_get_float(const tl_gguf *g, const char *key, double *out, tl_error *err);
tl_status tl_gguf_get_bool(const tl_gguf *g, const char *key, int *out, tl_error *err);
/* A string (NUL-terminated copy; *len, if non-NULL, gets the byte length, which counts embedded NULs). */
tl_status tl_gguf_get_str(const tl_gguf *g, const char *key, const char **out, uint64_t *len, tl_error *err);
/* An array of strings: *strs[i] NUL-terminated, *lens[i] (if lens non-NULL) the byte lengths. */
tl_status tl_gguf_get_str_array(const tl_gguf *g, const char *key, const char *const **strs,
                                const uint64_t **lens, uint64_t *n, tl_error *err);
/* A numeric (or bool) array converted into dst, which holds exactly n elements (n must equal the length). */
tl_status tl_gguf_get_f32_array(const tl_gguf *g, const char *key, float *dst, uint64_t n, tl_error *err);
tl_status tl_gguf_get_f64_array(const tl_gguf *g, const char *key, double *dst, uint64_t n, tl_error *err);
tl_status tl_gguf_get_i64_array(const tl_gguf *g, const char *key, int64_t *dst, uint64_t n, tl_error *err);

/* ---- tensors, by GGUF name. */
int tl_gguf_n_tensors(const tl_gguf *g);
const tl_gguf_tensor *tl_gguf_tensor_at(const tl_gguf *g, int i);
const tl_gguf_tensor *tl_gguf_find_tensor(const tl_gguf *g, const char *name); /* NULL if absent */
/* Element count (product of ne). */
int64_t tl_gguf_tensor_numel(const tl_gguf_tensor *t);
/* The tensor dequantized to fp32 in ggml order (ne[0] fastest); n must equal its element count. Types: F32, F16,
 * BF16, F64, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K; others are TL_ERR_INPUT naming the tensor and its type. */
tl_status tl_gguf_read_f32(tl_gguf *g, const char *name, float *dst, int64_t n, tl_error *err);
/* Dequantizes n_elems elements (a multiple of the type's block size) of raw data of one type into dst.
 * Returns 0, writing nothing, if the type is not one of those above. */
int tl_gguf_dequantize(uint32_t type, const void *src, float *dst, int64_t n_elems);

/* ---- the model view: HF names and shapes.
 * token_embd -> model.embed_tokens, blk.N.attn_norm -> model.layers.N.input_layernorm, attn_q/k/v/output ->
 * self_attn.q_proj/k_proj/v_proj/o_proj (.weight, .bias), ffn_norm -> post_attention_layernorm, ffn_gate/up/down
 * -> mlp.gate_proj/up_proj/down_proj, output_norm -> model.norm, output -> lm_head (absent: tied embeddings). */

/* Writes the GGUF tensor name for an HF name into buf; 0 if hf_name has no GGUF counterpart (or buf is small). */
int tl_gguf_hf_to_gguf_name(const char *hf_name, char *buf, size_t size);
/* The config from llama.* metadata: arch LlamaForCausalLM, model_type llama; attention_bias from the presence of
 * blk.0.attn_q.bias; tie_word_embeddings when output.weight is absent; RoPE linear from llama.rope.scaling.*,
 * llama3 from a rope_freqs.weight tensor (its factors are matched to llama3 parameters, and must be reproduced
 * by them). general.architecture other than "llama", a missing required key or an unsupported RoPE is
 * TL_ERR_INPUT. Result passes tl_model_config_check. */
tl_status tl_gguf_model_config(tl_gguf *g, tl_model_config *cfg, tl_error *err);
int tl_gguf_has_hf_tensor(const tl_gguf *g, const char *hf_name);
/* HF shape (GGUF dims reversed); 0 if absent. */
int tl_gguf_hf_shape(const tl_gguf *g, const char *hf_name, int64_t shape[TL_GGUF_MAX_DIMS], int *ndim);
/* Reads an HF tensor as fp32: shape must equal the HF shape (else TL_ERR_INPUT naming the file, tensor and both
 * shapes); attn_q (n_head) and attn_k (n_head_kv) weights and biases are un-permuted to HF's layout. Same
 * contract as tl_tensor_src_read_f32, so a loader can use either. */
tl_status tl_gguf_read_hf_tensor(tl_gguf *g, const char *hf_name, const int64_t *shape, int ndim, float *dst,
                                 tl_error *err);

#endif
