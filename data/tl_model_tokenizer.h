/* tl_model_tokenizer: the tokenizer of a model path, wherever the model keeps it: tokenizer.json in an HF
 * directory, or the tokenizer.ggml.* metadata of a GGUF file. */
#ifndef TL_MODEL_TOKENIZER_H
#define TL_MODEL_TOKENIZER_H

#include "data/tl_tokenizer.h"

tl_status tl_tokenizer_for_model(const char *model_path, tl_tokenizer **out, tl_error *err);

#endif
