/* tl_export: each adapter of a pool as an HF PEFT LoRA directory that peft, vLLM and LoRAX load unchanged.
 *
 * Layout (docs/export.md has it in full):
 *   <out_dir>/index.json                         {"adapters": [{"name", "dir", "steps"}, ...]} in slot order
 *   <out_dir>/<dir>/adapter_config.json          PEFT LoraConfig (only PEFT's own keys: PEFT refuses others)
 *   <out_dir>/<dir>/adapter_model.safetensors    F32, keys base_model.model.model.layers.L.{self_attn,mlp}.
 *                                                <target>.lora_{A,B}.weight, A [r, in], B [out, r]
 * <dir> is the adapter's name made safe for a file system (tl_safe_dirname), made unique. The whole tree is
 * built beside out_dir and swapped in, so a failed export never leaves a partial out_dir. */
#ifndef TL_EXPORT_H
#define TL_EXPORT_H

#include <stddef.h>

#include "kernels/tl_backend.h"
#include "trainer/config/tl_config.h"
#include "trainer/model/tl_model.h"

/* Longest name tl_safe_dirname produces; a buffer of TL_SAFE_DIRNAME_MAX + 1 bytes always suffices. */
#define TL_SAFE_DIRNAME_MAX 100
/* index.json's "format": the mark of a tailor export. Only a directory that is empty, or whose index.json carries
 * this mark and which holds nothing but index.json and the adapter folders it lists, is ever replaced. */
#define TL_EXPORT_FORMAT "tailor-export-1"

/* A directory name from an arbitrary user name (any bytes):
 *   1. every byte outside [A-Za-z0-9._-] becomes '_' (a multi-byte UTF-8 letter becomes several '_');
 *   2. leading dots are removed, so ".", "..", and hidden names cannot result;
 *   3. an empty result becomes "adapter";
 *   4. if the result differs from the name (anything replaced, removed, or it had to be shortened), it is cut to
 *      TL_SAFE_DIRNAME_MAX - 9 bytes and "-" + 8 lowercase hex digits of the 32-bit FNV-1a hash of the true name
 *      are appended, so distinct names rarely meet; an unchanged name longer than TL_SAFE_DIRNAME_MAX is
 *      treated the same way.
 * Deterministic. TL_ERR_RUNTIME if the result does not fit in cap (cap > TL_SAFE_DIRNAME_MAX always fits) or
 * name is NULL. */
tl_status tl_safe_dirname(const char *name, char *out, size_t cap);

/* 32-bit FNV-1a of a NUL-terminated string (offset basis 2166136261, prime 16777619). */
unsigned tl_fnv1a32(const char *s);

/* Exports every slot of p. The directory of slot s is tl_safe_dirname(p->names[s]); when it equals (ignoring
 * ASCII case, so case-insensitive file systems are safe too) a directory already taken by an earlier slot, or
 * "index.json", "-2", "-3", ... is appended, in slot order. Parameters are downloaded from be.
 * cfg may be NULL; when given, its adapter rank/targets/rslora/alpha/dropout must agree with the pool
 * (TL_ERR_INPUT otherwise) and its exact decimal alpha and dropout are the ones written. base_model NULL means
 * cfg->model_path. Adapter names must be valid UTF-8 (JSON requires it); TL_ERR_INPUT otherwise.
 * out_dir is replaced as a whole: built in a new "<out_dir>.tmp-XXXXXX" (mkdtemp), fsynced, then swapped in
 * (tl_replace_dir). An existing out_dir is replaced only when it is empty or is an earlier tailor export (see
 * TL_EXPORT_FORMAT); anything else is TL_ERR_INPUT naming it, so a mistyped path never deletes unrelated data.
 * Every parameter must be finite (TL_ERR_INPUT naming the adapter and the tensor otherwise, nothing written).
 * *n_written (may be NULL) = n_slots. */
tl_status tl_export_pool(const tl_lora_pool *p, tl_backend *be, const tl_config *cfg, const char *base_model,
                         const char *out_dir, int *n_written, tl_error *err);

/* The same with each adapter's parameters read through rd (tl_model.h; k = 0, one adapter at a time, in slot
 * order) instead of p's memory: p gives the layout, names and steps. For many-process runs. */
tl_status tl_export_pool_from(const tl_lora_pool *p, const tl_state_reader *rd, const tl_config *cfg,
                              const char *base_model, const char *out_dir, int *n_written, tl_error *err);

/* The PEFT key of a LoRA matrix: which = 'A' or 'B'. TL_ERR_RUNTIME if it does not fit. */
tl_status tl_peft_key(int layer, int target, char which, char *out, size_t cap, tl_error *err);

/* Reads a PEFT LoRA directory (adapter_config.json + adapter_model.safetensors, F32/F16/BF16) into slot
 * `slot` of p and resets that slot's Adam moments (m, v when non-NULL) and step count to zero: a loaded adapter
 * starts training afresh. Checks, each a TL_ERR_INPUT naming the file and the mismatch: peft_type LORA, r equal
 * to p->rank, the set of target_modules equal to p's targets, scaling (lora_alpha / r, or / sqrt(r) with
 * use_rslora) equal to p->scale, no DoRA / rank_pattern / alpha_pattern, every expected tensor present with its
 * exact shape, and no other tensor in the file. The slot is written only after the whole file has been read. */
tl_status tl_peft_load(const char *dir, tl_lora_pool *p, tl_backend *be, int slot, tl_error *err);

/* ---- every format (docs/export.md): tailor export --format peft|gguf|merged|merged-gguf ---- */
typedef enum { TL_EXPORT_PEFT = 0, TL_EXPORT_GGUF, TL_EXPORT_MERGED, TL_EXPORT_MERGED_GGUF } tl_export_format;
typedef enum { TL_EXPORT_F32 = 0, TL_EXPORT_F16, TL_EXPORT_BF16 } tl_export_dtype;

typedef struct {
    tl_export_format format;
    tl_export_dtype dtype;  /* tensors written (gguf, merged, merged-gguf; peft is always F32) */
    const char *user;       /* merged, merged-gguf: the adapter's true name */
    const char *base_model; /* NULL: cfg->model_path */
    uint64_t shard_bytes;   /* merged: largest safetensors shard (0: TL_EXPORT_SHARD_BYTES) */
} tl_export_opts;

#define TL_EXPORT_SHARD_BYTES ((uint64_t)2 << 30)

/* "peft" -> TL_EXPORT_PEFT etc.; -1 when unknown. */
int tl_export_format_parse(const char *s);
const char *tl_export_format_name(tl_export_format f);
/* "f32" | "f16" | "bf16"; -1 when unknown. */
int tl_export_dtype_parse(const char *s);

/* Writes the export of format o->format into out_dir (replacing it as tl_export_pool does, refusing a folder
 * that holds anything an earlier tailor export of any format did not write). layout gives the adapters' layout,
 * names and steps (its params are not used); each adapter's parameters are read through rd one at a time
 * (k = 0, P floats), so no format holds more than one adapter. cfg as in tl_export_pool (may be NULL).
 * peft: tl_export_pool's tree plus manifests for vLLM and LoRAX; gguf: one llama.cpp LoRA GGUF per adapter plus
 * a llama.cpp server manifest; merged: the base model with adapter o->user merged in, as an HF directory;
 * merged-gguf: the same as one GGUF file. A user not in the pool, a reward model's score head (no place in
 * llama.cpp's LoRA or a causal LM) or a base model llama.cpp cannot take is TL_ERR_INPUT. *n_written: adapters
 * written (1 for the merged formats). */
tl_status tl_export_run(const tl_lora_pool *layout, const tl_state_reader *rd, const tl_config *cfg,
                        const tl_export_opts *o, const char *out_dir, int *n_written, tl_error *err);

#endif
