/* optim: schedules and the per-adapter AdamW step over the adapter pool (see tl_optim.h). */
#include "trainer/step/tl_optim.h"

#include <math.h>

tl_optim_opts tl_optim_opts_of(const tl_config *c) {
    return (tl_optim_opts){.lr = c->lr, .schedule = c->schedule, .warmup_steps = c->warmup_steps,
                           .weight_decay = c->weight_decay, .grad_clip = c->grad_clip, .beta1 = c->beta1,
                           .beta2 = c->beta2, .adam_eps = c->adam_eps};
}

double tl_schedule_lr(const tl_optim_opts *c, int64_t step, int64_t total) {
    int64_t warm = c->warmup_steps;
    if (step < warm) return c->lr * (double)step / (double)(warm > 1 ? warm : 1);
    double span = (double)(total - warm > 1 ? total - warm : 1);
    double progress = (double)(step - warm) / span;
    if (c->schedule == TL_SCHEDULE_LINEAR) return c->lr * fmax(0.0, (double)(total - step) / span);
    if (c->schedule == TL_SCHEDULE_COSINE) return c->lr * fmax(0.0, 0.5 * (1.0 + cos(M_PI * progress)));
    return c->lr; /* constant */
}

tl_status tl_optim_step(tl_lora_pool *p, tl_backend *be, const tl_optim_opts *c, const int32_t *active, int n_active,
                        const int64_t *total_steps, float *grad_norm, float *lr, tl_adam_slot *hs, tl_error *err) {
    if (n_active == 0) return TL_OK;
    be->grad_sqnorm(be, grad_norm, p->grads, p->P, p->P, active, n_active);
    for (int i = 0; i < n_active; i++) {
        int s = active[i];
        float norm = sqrtf(grad_norm[i]);
        grad_norm[i] = norm;
        if (!isfinite(norm)) {
            return tl_fail(err, TL_ERR_RUNTIME, "adapter '%s': gradient norm is not finite (lr too high?)",
                           p->names[s]);
        }
        /* torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6), clamped to 1 */
        float gscale = 1.0f;
        if (c->grad_clip > 0 && norm > 0) {
            double coef = c->grad_clip / ((double)norm + 1e-6);
            if (coef < 1.0) gscale = (float)coef;
        }
        int64_t t = p->steps[s] + 1;
        lr[i] = (float)tl_schedule_lr(c, p->steps[s], total_steps[s]);
        hs[i] = (tl_adam_slot){.slot = s,
                               .lr = lr[i],
                               .bc1 = (float)(1.0 - pow(c->beta1, (double)t)),
                               .bc2 = (float)(1.0 - pow(c->beta2, (double)t)),
                               .gscale = gscale};
    }
    be->adamw(be, p->params, p->m, p->v, p->grads, p->P, p->P, hs, n_active, c->beta1, c->beta2,
              (float)c->adam_eps, (float)c->weight_decay);
    for (int i = 0; i < n_active; i++) p->steps[active[i]]++;
    return be->status(be, err);
}
