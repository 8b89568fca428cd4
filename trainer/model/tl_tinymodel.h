/* tl_tinymodel: small random Llama-family models in HF layout (config.json + safetensors), for tests, demos
 * and benchmarks without downloads.
 *
 * Weights are deterministic in (seed, tensor name), independent of dtype and sharding: a 2-D weight [out, in]
 * (embeddings and lm_head included) is normal with std 1/sqrt(in), so a tiny model keeps O(1) activations
 * and O(1) logits; norm weights are 1 + normal(0, 0.1), so a test notices a norm applied with the wrong
 * weight or none; biases are normal(0, 0.05). */
#ifndef TL_TINYMODEL_H
#define TL_TINYMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "data/tl_hf_config.h"

/* Fills cfg for LlamaForCausalLM from shape numbers. kv_heads <= 0 means heads; head_dim <= 0 means
 * hidden / heads. Defaults: rope_theta 10000 (no scaling), rms_norm_eps 1e-5, max_position_embeddings 2048.
 * Nothing is checked here; tl_write_random_model checks the result (tl_model_config_check). */
void tl_tiny_config(tl_model_config *cfg, int vocab, int hidden, int layers, int heads, int kv_heads, int ffn,
                    int head_dim, int tie, int bias);

/* Creates dir (mkdir -p) and writes config.json and random weights under HF tensor names, as F32 or BF16
 * (torch_dtype says which), in one model.safetensors (n_shards == 1) or in model-0000k-of-0000n.safetensors
 * shards plus model.safetensors.index.json. Each file is written atomically. */
tl_status tl_write_random_model(const char *dir, const tl_model_config *cfg, uint64_t seed, int bf16, int n_shards,
                                tl_error *err);

/* The fp32 values tl_write_random_model gives tensor `name` of this config and seed (before BF16 rounding);
 * n must equal the tensor's element count. TL_ERR_INPUT for a name the model does not have. */
tl_status tl_tiny_tensor_values(const tl_model_config *cfg, const char *name, uint64_t seed, float *dst, size_t n,
                                tl_error *err);

#endif
