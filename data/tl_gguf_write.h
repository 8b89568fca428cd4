/* tl_gguf_write: writing GGUF files (version 3, little-endian) as llama.cpp's gguf library reads them.
 *
 * Layout written: "GGUF", version 3 (u32), tensor count (u64), key/value count (u64), the key/values in the order
 * added (key: u64 length + bytes; type u32; value), the tensor infos in the order added (name, n_dims u32, ne[]
 * u64 with ne[0] the row length, ggml type u32, offset u64 from the data section), zero padding to the alignment
 * (general.alignment when added as a u32, else 32), then each tensor's bytes, each padded to the alignment.
 *
 * Tensor data is produced while the file is written (one tensor's bytes in memory at a time), so a model larger
 * than memory can be written. The file is written to a temporary name beside path, fsynced and renamed: a failed
 * write (a producer's error included) leaves nothing at path. Misuse (duplicate key or tensor, bad dims, a type
 * other than F32/F16/BF16) is TL_ERR_RUNTIME. */
#ifndef TL_GGUF_WRITE_H
#define TL_GGUF_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "data/tl_gguf.h"
#include "kernels/tl_status.h"

typedef struct tl_gguf_writer tl_gguf_writer;

tl_gguf_writer *tl_gguf_writer_new(void);
void tl_gguf_writer_free(tl_gguf_writer *w);

tl_status tl_gguf_writer_kv_str(tl_gguf_writer *w, const char *key, const char *value, tl_error *err);
tl_status tl_gguf_writer_kv_u32(tl_gguf_writer *w, const char *key, uint32_t value, tl_error *err);
tl_status tl_gguf_writer_kv_f32(tl_gguf_writer *w, const char *key, float value, tl_error *err);
tl_status tl_gguf_writer_kv_bool(tl_gguf_writer *w, const char *key, int value, tl_error *err);
/* An array of n numbers of elem_type (an integer type, F32 or F64), given as doubles (exact for every value
 * those types hold, except 64-bit integers beyond 2^53: use the i64 form). */
tl_status tl_gguf_writer_kv_num_array(tl_gguf_writer *w, const char *key, tl_gguf_vtype elem_type,
                                      const double *v, uint64_t n, tl_error *err);
tl_status tl_gguf_writer_kv_i64_array(tl_gguf_writer *w, const char *key, tl_gguf_vtype elem_type,
                                      const int64_t *v, uint64_t n, tl_error *err);
/* An array of n strings; lens may be NULL (strlen). */
tl_status tl_gguf_writer_kv_str_array(tl_gguf_writer *w, const char *key, const char *const *s,
                                      const uint64_t *lens, uint64_t n, tl_error *err);
/* Copies key/value i of an opened GGUF file with its type (arrays of arrays are TL_ERR_INPUT naming the key). */
tl_status tl_gguf_writer_copy_kv(tl_gguf_writer *w, const tl_gguf *g, int i, tl_error *err);
int tl_gguf_writer_has_key(const tl_gguf_writer *w, const char *key);

/* Fills dst with the tensor's nbytes bytes (ggml order, little-endian). */
typedef tl_status (*tl_gguf_produce_fn)(void *ctx, void *dst, uint64_t nbytes, tl_error *err);
/* A tensor of n_dims (1..4) dims ne[0..n_dims) (ne[0] the row length) and ggml type TL_GGML_F32, _F16 or _BF16.
 * produce is called once, during tl_gguf_writer_write, with a buffer of the tensor's size. name and ctx are
 * used then too (name is copied; ctx must stay valid). */
tl_status tl_gguf_writer_add_tensor(tl_gguf_writer *w, const char *name, int n_dims, const int64_t *ne,
                                    uint32_t type, tl_gguf_produce_fn produce, void *ctx, tl_error *err);
tl_status tl_gguf_writer_write(tl_gguf_writer *w, const char *path, tl_error *err);

/* IEEE half from float, rounding to nearest even (overflow to inf, nan stays nan, subnormals exact). */
uint16_t tl_f32_to_f16(float f);

#endif
