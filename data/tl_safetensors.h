/* tl_safetensors: reading and writing the safetensors format, and HF model directories made of it.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:[b,e]},
 * "__metadata__": {str: str}}, then the data. Reading validates the header fully (JSON, dtypes, shapes vs.
 * byte ranges, ranges inside the file, no overlaps) before any tensor is used, so a truncated or corrupt file
 * is a TL_ERR_INPUT naming the file and tensor, never a crash. */
#ifndef TL_SAFETENSORS_H
#define TL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "data/tl_io.h" /* tl_write_file_atomic, defined in safetensors.c beside the writer */
#include "kernels/tl_status.h"

#define TL_ST_MAX_DIMS 8

typedef enum { TL_DT_F32, TL_DT_F16, TL_DT_BF16, TL_DT_F64, TL_DT_I32, TL_DT_I64, TL_DT_OTHER } tl_dtype;

typedef struct {
    char *name;
    tl_dtype dtype;
    char dtype_name[16];
    int ndim;
    int64_t shape[TL_ST_MAX_DIMS];
    uint64_t begin, end; /* byte range inside the data section */
} tl_st_tensor;

typedef struct tl_st_file tl_st_file;

tl_status tl_st_open(const char *path, tl_st_file **out, tl_error *err);
void tl_st_close(tl_st_file *f);
int tl_st_count(const tl_st_file *f);
const tl_st_tensor *tl_st_get(const tl_st_file *f, int i);
const tl_st_tensor *tl_st_find(const tl_st_file *f, const char *name); /* NULL if absent */
const char *tl_st_metadata(const tl_st_file *f, const char *key);     /* NULL if absent */
/* Reads a tensor converted to fp32 into dst; its shape must equal `shape` (ndim dims), else TL_ERR_INPUT
 * naming file, tensor, actual and expected shapes. Accepts F32, F16, BF16 (and F64); other dtypes (integers,
 * TL_DT_OTHER) are TL_ERR_INPUT. A missing tensor is TL_ERR_INPUT. */
tl_status tl_st_read_f32(tl_st_file *f, const char *name, const int64_t *shape, int ndim, float *dst,
                         tl_error *err);
/* Copies a tensor's raw little-endian bytes (any dtype, e.g. I64 checkpoint state) into dst; nbytes must equal
 * the tensor's size, else TL_ERR_INPUT. */
tl_status tl_st_read_bytes(tl_st_file *f, const char *name, void *dst, uint64_t nbytes, tl_error *err);
/* Raw bytes [offset, offset + nbytes) of a tensor (rows of a large tensor, without reading it whole);
 * TL_ERR_INPUT when the range leaves the tensor. */
tl_status tl_st_read_range(tl_st_file *f, const char *name, uint64_t offset, void *dst, uint64_t nbytes,
                           tl_error *err);
const char *tl_st_path(const tl_st_file *f);
/* Bytes per element of a safetensors dtype name ("F32" -> 4); 0 when unknown. */
unsigned tl_st_dtype_size(const char *dtype_name);

/* Exact conversions (f16 subnormals, inf and nan kept); f32 -> bf16 rounds to nearest even, nan stays nan. */
float tl_f16_to_f32(uint16_t h);
float tl_bf16_to_f32(uint16_t b);
uint16_t tl_f32_to_bf16(float f);

/* An HF model directory: model.safetensors, or model.safetensors.index.json with its shards. */
typedef struct tl_tensor_src tl_tensor_src;
tl_status tl_tensor_src_open(const char *model_dir, tl_tensor_src **out, tl_error *err);
void tl_tensor_src_close(tl_tensor_src *s);
int tl_tensor_src_has(const tl_tensor_src *s, const char *name);
tl_status tl_tensor_src_read_f32(tl_tensor_src *s, const char *name, const int64_t *shape, int ndim, float *dst,
                                 tl_error *err);
/* The header entry (dtype, shape) of a tensor of the model, NULL if absent. tl_tensor_src_read_f32's shape
 * mismatch message ends in "(from config.json)": model directories are always read against their config. */
const tl_st_tensor *tl_tensor_src_find(const tl_tensor_src *s, const char *name);

/* Writer: collect tensors (data referenced, not copied, until write), then write the file atomically
 * (temporary name in the same directory, fsync, rename). Tensors are laid out contiguously in insertion order,
 * "__metadata__" first. add_f32 writes F32; add_bytes any sized dtype ("I64", "BF16", ...), nbytes checked
 * against the shape. Misuse (duplicate name, size mismatch) is TL_ERR_RUNTIME. transformers only loads files
 * whose metadata has "format": "pt"; callers writing HF models add it. A repeated meta key replaces the value. */
typedef struct tl_st_writer tl_st_writer;
tl_st_writer *tl_st_writer_new(void);
tl_status tl_st_writer_add_f32(tl_st_writer *w, const char *name, const int64_t *shape, int ndim,
                               const float *data, tl_error *err);
tl_status tl_st_writer_add_bytes(tl_st_writer *w, const char *name, const char *dtype_name, const int64_t *shape,
                                 int ndim, const void *data, uint64_t nbytes, tl_error *err);
tl_status tl_st_writer_meta(tl_st_writer *w, const char *key, const char *value, tl_error *err);
/* A tensor whose bytes are produced while the file is written, in order, chunk bytes at a time (the last
 * chunk may be shorter): produce(ctx, offset, dst, n) fills dst with bytes [offset, offset + n). So a tensor
 * larger than memory, or gathered from other processes, never needs to exist whole. A producer's error stops
 * the write (nothing is left at path). */
typedef tl_status (*tl_st_produce_fn)(void *ctx, uint64_t offset, void *dst, uint64_t n, tl_error *err);
tl_status tl_st_writer_add_stream(tl_st_writer *w, const char *name, const char *dtype_name, const int64_t *shape,
                                  int ndim, uint64_t nbytes, tl_st_produce_fn produce, void *ctx, uint64_t chunk,
                                  tl_error *err);
tl_status tl_st_writer_write(tl_st_writer *w, const char *path, tl_error *err);
void tl_st_writer_free(tl_st_writer *w);

#endif
