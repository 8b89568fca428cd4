/* tl_hf_config: the Llama-family model configuration, read from an HF config.json.
 *
 * Accepted architectures: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (qkv bias). Anything else,
 * a missing required field, a null or unknown rope setting, or inconsistent shapes is TL_ERR_INPUT naming the
 * file and field. */
#ifndef TL_HF_CONFIG_H
#define TL_HF_CONFIG_H

#include "../kernels/tl_status.h"

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

/* Reads <dir>/config.json. */
tl_status tl_model_config_load(const char *dir, tl_model_config *cfg, tl_error *err);

/* RoPE inverse frequencies [head_dim / 2] with the configured scaling applied (HF's rope init functions). */
void tl_rope_inv_freq(const tl_model_config *cfg, float *inv_freq);

/* Writes a config.json for cfg (used by the tiny-model writer). Atomic. */
tl_status tl_model_config_write(const char *dir, const tl_model_config *cfg, tl_error *err);

#endif
