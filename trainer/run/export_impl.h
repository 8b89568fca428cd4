/* export_impl: what the export formats share (export.c drives them; export_gguf.c, export_merged.c and
 * export_manifest.c write them). Not a public header: tl_export.h is. */
#ifndef TL_EXPORT_IMPL_H
#define TL_EXPORT_IMPL_H

#include <cjson/cJSON.h>

#include "data/tl_hf_config.h"
#include "trainer/run/tl_export.h"

/* One export in progress: the tree is built in tmp; final is the absolute path it will have. */
typedef struct {
    const tl_lora_pool *p;
    const tl_state_reader *rd;
    const tl_export_opts *o;
    const char *base_model; /* the base model's path (HF directory or .gguf) */
    double alpha;           /* adapter.alpha as configured */
    char **dirs;            /* [n_slots] unique safe names (tl_safe_dirname + suffixes) */
    const char *tmp;
    char final_abs[TL_PATH_MAX];
    cJSON *index; /* index.json being built: "format", "kind", "adapters", "files" */
    cJSON *files; /* top-level regular files of the tree other than index.json */
} tl_export_job;

/* The slot's parameters into w (P floats) through the reader, checked finite. */
tl_status tl_export_read_slot(const tl_export_job *j, int slot, float *w, tl_error *err);
/* Adds a top-level file name to index.json's "files". */
tl_status tl_export_add_file(tl_export_job *j, const char *name, tl_error *err);
/* Writes text (freed here, cJSON_Print output or NULL) + "\n" to tmp/name and lists it in "files". */
tl_status tl_export_write_text(tl_export_job *j, const char *name, char *text, tl_error *err);

/* llama.cpp's architecture name for the base model and whether its q/k rows are permuted in GGUF
 * (convert_hf_to_gguf.py permutes them for llama and mistral, not for qwen2). */
void tl_export_llama_arch(const tl_model_config *c, const char **arch, int *permute_qk);
/* HF row order -> GGUF row order of a q or k projection's output rows (rows x cols, row-major, n_head heads):
 * GGUF row h*hd + 2j + i = HF row h*hd + i*hd/2 + j. dst and src must not overlap. */
void tl_export_permute_rows(float *dst, const float *src, int64_t rows, int64_t cols, int n_head);
/* f32 -> dtype bytes (n elements). */
void tl_export_convert(void *dst, const float *src, size_t n, tl_export_dtype dt);
unsigned tl_export_dtype_size(tl_export_dtype dt);
/* W [out, in] += scale * B [out, r] A [r, in] */
void tl_export_merge(float *W, const float *A, const float *B, int64_t out, int64_t in, int r, float scale);

/* The formats. Each writes its files into j->tmp and its entries into j->index. */
tl_status tl_export_write_gguf_loras(tl_export_job *j, tl_error *err);
tl_status tl_export_write_merged(tl_export_job *j, int slot, tl_error *err);
tl_status tl_export_write_merged_gguf(tl_export_job *j, int slot, tl_error *err);
/* Manifests for serving the adapters of the tree (peft: vLLM and LoRAX; gguf: llama.cpp server). */
tl_status tl_export_write_manifests(tl_export_job *j, tl_error *err);

#endif
