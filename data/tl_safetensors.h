/* tl_safetensors: reading and writing the safetensors format, and HF model directories made of it.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:[b,e]},
 * "__metadata__": {str: str}}, then the data. Reading validates the header fully (JSON, dtypes, shapes vs.
 * byte ranges, ranges inside the file, no overlaps) before any tensor is used, so a truncated or corrupt file
 * is a TL_ERR_INPUT naming the file and tensor, never a crash. */
#ifndef TL_SAFETENSORS_H
#define TL_SAFETENSORS_H

#include <stdint.h>

#include "../kernels/tl_status.h"

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
 * naming file, tensor, actual and expected shapes. Accepts F32, F16, BF16 (and F64). */
tl_status tl_st_read_f32(tl_st_file *f, const char *name, const int64_t *shape, int ndim, float *dst,
                         tl_error *err);

/* An HF model directory: model.safetensors, or model.safetensors.index.json with its shards. */
typedef struct tl_tensor_src tl_tensor_src;
tl_status tl_tensor_src_open(const char *model_dir, tl_tensor_src **out, tl_error *err);
void tl_tensor_src_close(tl_tensor_src *s);
int tl_tensor_src_has(const tl_tensor_src *s, const char *name);
tl_status tl_tensor_src_read_f32(tl_tensor_src *s, const char *name, const int64_t *shape, int ndim, float *dst,
                                 tl_error *err);

/* Writer: collect tensors (fp32 data is copied or referenced until write), then write the file atomically
 * (temporary name in the same directory, fsync, rename). dtype of the written tensors: F32. */
typedef struct tl_st_writer tl_st_writer;
tl_st_writer *tl_st_writer_new(void);
/* data must stay valid until tl_st_writer_write returns (not copied) */
tl_status tl_st_writer_add_f32(tl_st_writer *w, const char *name, const int64_t *shape, int ndim,
                               const float *data, tl_error *err);
tl_status tl_st_writer_add_bytes(tl_st_writer *w, const char *name, const char *dtype_name, const int64_t *shape,
                                 int ndim, const void *data, uint64_t nbytes, tl_error *err);
tl_status tl_st_writer_meta(tl_st_writer *w, const char *key, const char *value, tl_error *err);
tl_status tl_st_writer_write(tl_st_writer *w, const char *path, tl_error *err);
void tl_st_writer_free(tl_st_writer *w);

#endif
