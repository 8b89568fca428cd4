/* tl_hf_config: the Llama-family model configuration, read from an HF config.json.
 *
 * Accepted architectures: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (qkv bias). Anything else,
 * a missing required field, a null or unknown rope setting, or inconsistent shapes is TL_ERR_INPUT naming the
 * file and field. */
#ifndef TL_HF_CONFIG_H
#define TL_HF_CONFIG_H

#include "kernels/tl_status.h"

typedef enum { TL_ROPE_DEFAULT = 0, TL_ROPE_LLAMA3 = 1, TL_ROPE_LINEAR = 2 } tl_rope_type;

typedef struct {
    char arch[64];       /* architectures[0] */
    char model_type[32]; /* "llama", "mistral", "qwen2" */
    int vocab_size, hidden_size, intermediate_size, num_hidden_layers;
    int num_attention_heads, num_key_value_heads, head_dim; /* head_dim defaults to hidden/heads */
    int max_position_embeddings;
    float rms_norm_eps, rope_theta;
    tl_rope_type rope_type;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor; /* llama3 and linear scaling */
    int rope_original_max_pos;
    int tie_word_embeddings; /* default 0 for llama, as in transformers */
    int attention_bias;      /* q/k/v biases: Qwen2 always; llama when attention_bias is true */
} tl_model_config;

/* Llama with attention_bias = true has a bias on o_proj too (transformers' LlamaAttention); Qwen2's biases are on
 * q/k/v only. */
static inline int tl_model_has_o_bias(const tl_model_config *c) {
    return c->attention_bias && c->model_type[0] && !(c->model_type[0] == 'q' && c->model_type[1] == 'w');
}

/* Reads <dir>/config.json. Defaults as transformers' config classes: num_key_value_heads = heads, head_dim =
 * hidden / heads, rms_norm_eps 1e-6, rope_theta 10000, tie_word_embeddings false, max_position_embeddings
 * 2048 (llama) / 131072 (mistral) / 32768 (qwen2). RoPE from rope_theta + rope_scaling, or transformers-v5
 * rope_parameters; types default, linear, llama3. A sliding window that could take effect (Mistral's default
 * 4096, or Qwen2 with use_sliding_window) is refused unless >= max_position_embeddings. hidden_act must be
 * silu; Llama's mlp_bias must be false. No config.json: "<dir>: no config.json". */
tl_status tl_model_config_load(const char *dir, tl_model_config *cfg, tl_error *err);

/* RoPE inverse frequencies [head_dim / 2] with the configured scaling applied (HF's rope init functions). */
void tl_rope_inv_freq(const tl_model_config *cfg, float *inv_freq);

/* Checks a filled config for consistency (sizes positive, heads divisible, head_dim even, rope settings
 * complete, model_type matching arch and attention_bias). `what` names the source in messages. Load calls it. */
tl_status tl_model_config_check(const tl_model_config *cfg, const char *what, tl_error *err);
/* The largest value tailor accepts for a dimension field of config.json (vocab_size, hidden_size, ...; docs/gguf.md
 * lists them), checked before anything is sized from it; 0 for a name that is not one of them. */
int tl_model_dim_limit(const char *hf_field);

/* Writes a config.json for cfg (used by the tiny-model writer). Atomic. torch_dtype "float32". */
tl_status tl_model_config_write(const char *dir, const tl_model_config *cfg, tl_error *err);
/* The same with the torch_dtype written ("float32", "bfloat16", ...). */
tl_status tl_model_config_write_dtype(const char *dir, const tl_model_config *cfg, const char *torch_dtype,
                                      tl_error *err);

#endif
