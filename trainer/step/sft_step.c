/* sft_step: one SFT micro-batch (see tl_sft_step.h). */
#include "trainer/step/tl_sft_step.h"

tl_status tl_sft_microbatch(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, const tl_host_mb *mb, float *logp,
                            double *adapter_loss, tl_error *err) {
    TL_TRY(tl_model_step(m, p, ws, mb, 1, logp, err));
    for (int i = 0; i < mb->n_tok; i++)
        if (mb->targets[i] >= 0) adapter_loss[mb->adapter[i]] -= (double)mb->weight[i] * logp[i];
    return TL_OK;
}
