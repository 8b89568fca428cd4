"""tailor's GRPO / RLOO math (trainer/step/rl_loss.c, via tests/tools/tl_rl_loss_dump) against TRL's formulas.

TRL does not install on this torch (1.13), so its expressions are written below in torch exactly as the pinned
TRL sources have them, each function naming the code it copies:
  trl v0.19.1 trl/trainer/grpo_trainer.py
    GRPOTrainer._generate_and_score_completions, lines 1254-1263 (group mean, group std, scale_rewards, 1e-4)
    GRPOTrainer._compute_loss, lines 1379-1409 (k3 KL, coef_1 / coef_2, -min, beta * per_token_kl, the
      loss_type reductions grpo / bnpo / dr_grpo), lines 1417-1427 (kl, is_low_clipped, is_high_clipped)
  trl v0.22.0 trl/trainer/rloo_trainer.py
    RLOOTrainer._generate_and_score_completions, lines 1262-1270 (leave-one-out baseline, normalize_advantages)

Padded [B, L] tensors with a completion_mask, as TRL has them; per-token log-probs are leaves, so autograd gives
d loss / d per_token_logps, compared with tailor's dlogp on the unpadded tokens. float64 throughout, fresh random
inputs (seed printed; TL_TEST_SEED replays), for every loss_type, beta = 0 and beta > 0, ratio 1 (one update per
rollout, old = logp.detach() as TRL does with num_iterations 1), and old log-probs apart from the policy's so that
tokens fall in both the unclipped and the clipped regime (each regime asserted to occur).
Pass: relative 1e-9 (max |a - b| / max |b| per compared array).

Env: TL_TEST_BIN (build dir holding tl_rl_loss_dump).
Run: TL_TEST_BIN=build /usr/bin/python3 tests/torch/test_rl_loss_vs_trl.py
"""

import os
import subprocess
import sys
import time

import common  # noqa: E402

try:
    import numpy as np
    import torch
except ImportError as e:  # the cross-check needs torch; without it the test is skipped, never passed
    common.skip(e)

TOL = 1e-9
DT = torch.float64


# ---------------------------------------------------------------- TRL's formulas, in torch

def trl_grpo_advantages(rewards, num_generations, scale_rewards):
    """trl v0.19.1 grpo_trainer.py 1254-1263."""
    mean_grouped_rewards = rewards.view(-1, num_generations).mean(dim=1)
    std_grouped_rewards = rewards.view(-1, num_generations).std(dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    std_grouped = std_grouped_rewards.repeat_interleave(num_generations, dim=0)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards:
        advantages = advantages / (std_grouped + 1e-4)
    return advantages, std_grouped_rewards


def trl_rloo_advantages(rewards, num_generations, normalize_advantages):
    """trl v0.22.0 rloo_trainer.py 1257-1270 (beta's KL-in-reward excluded: tailor puts KL in the loss)."""
    grouped_rewards = rewards.view(-1, num_generations)
    grouped_sum = grouped_rewards.sum(dim=1, keepdim=True)
    baselines = (grouped_sum - grouped_rewards) / (num_generations - 1)
    baselines = baselines.view(-1)
    advantages = rewards - baselines
    if normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-4)
    return advantages


def trl_grpo_loss(per_token_logps, old_per_token_logps, ref_per_token_logps, advantages, completion_mask, beta,
                  epsilon_low, epsilon_high, loss_type, max_completion_length):
    """trl v0.19.1 grpo_trainer.py GRPOTrainer._compute_loss 1378-1427 (delta None)."""
    if beta != 0.0:
        per_token_kl = (
            torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
        )
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    per_token_loss1 = coef_1 * advantages.unsqueeze(1)
    per_token_loss2 = coef_2 * advantages.unsqueeze(1)
    per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type == "grpo":
        loss = ((per_token_loss * completion_mask).sum(-1) / completion_mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * completion_mask).sum() / completion_mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * completion_mask).sum() / (per_token_loss.size(0) * max_completion_length)
    kl_sum = (per_token_kl * completion_mask).sum() if beta != 0.0 else torch.tensor(0.0, dtype=DT)
    is_low_clipped = (coef_1 < 1 - epsilon_low) & (advantages.unsqueeze(1) < 0)
    is_high_clipped = (coef_1 > 1 + epsilon_high) & (advantages.unsqueeze(1) > 0)
    low = int((is_low_clipped * completion_mask).sum().item())
    high = int((is_high_clipped * completion_mask).sum().item())
    return loss, kl_sum, low, high


# ---------------------------------------------------------------- the comparison

class Checker:
    def __init__(self):
        self.failures = []
        self.worst = {}

    def cmp(self, what, a, b):
        e, why = common.rel_err(a, b)
        self.worst[what] = max(self.worst.get(what, 0.0), e)
        if not e <= TOL:
            self.failures.append(f"{what}: rel err {e:.3g} > {TOL:g} {why}")

    def eq(self, what, a, b):
        if a != b:
            self.failures.append(f"{what}: {a} != {b}")


def fmt(xs):
    return " ".join(repr(float(x)) for x in xs)


def run_tool(tool, text):
    r = subprocess.run([tool], input=text, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"tl_rl_loss_dump failed (exit {r.returncode}): {r.stderr.strip()[-1000:]}")
    return [[float(v) for v in line.split()] for line in r.stdout.strip().split("\n")]


def adv_cases(rng, tool, chk):
    cases, cmds = [], []
    for trial in range(120):
        g = int(rng.integers(2, 17))
        ng = int(rng.integers(1, 9))
        scale = trial % 2
        kind = "grpo" if trial % 4 < 2 else "rloo"
        r = rng.normal(0, float(rng.uniform(0.05, 5)), ng * g) + (2.0 if trial % 5 == 0 else 0.0)
        cases.append((kind, g, ng, scale, r))
        cmds.append(f"adv {kind} {ng} {g} {scale} {fmt(r)}")
    outs = run_tool(tool, "\n".join(cmds) + "\n")
    for (kind, g, ng, scale, r), out in zip(cases, outs):
        rt = torch.tensor(r, dtype=DT)
        n = ng * g
        if kind == "grpo":
            want, std = trl_grpo_advantages(rt, g, bool(scale))
            chk.cmp("grpo group std", out[n:], std.numpy())
        else:
            want = trl_rloo_advantages(rt, g, bool(scale))
        chk.cmp(f"{kind} advantages (scale {scale})", out[:n], want.numpy())


def loss_cases(rng, tool, chk):
    cases, cmds = [], []
    regimes = {"ratio 1": 0.0, "near 1": 0.1, "far": 0.9}
    for loss_type in ("grpo", "bnpo", "dr_grpo"):
        for beta in (0.0, 0.04, 0.3):
            for regime, spread in regimes.items():
                for _ in range(8):
                    b = int(rng.integers(1, 10))
                    lens = rng.integers(0, 20, b)
                    lens[0] = max(lens[0], 1)
                    maxc = int(lens.max() + rng.integers(0, 5))
                    L = int(lens.max())
                    mask = np.zeros((b, L))
                    for i, n in enumerate(lens):
                        mask[i, :n] = 1
                    logp = -rng.uniform(0.01, 6, (b, L))
                    old = logp + rng.uniform(-spread, spread, (b, L))
                    ref = logp + rng.uniform(-1.5, 1.5, (b, L))
                    adv = rng.normal(0, 1, b)
                    el, eh = float(rng.uniform(0.1, 0.3)), float(rng.uniform(0.1, 0.4))
                    cases.append((loss_type, beta, regime, el, eh, maxc, lens, mask, logp, old, ref, adv))
                    flat = lambda x: np.concatenate([x[i, :n] for i, n in enumerate(lens)])  # noqa: E731
                    cmds.append(f"loss {loss_type} {beta!r} {el!r} {eh!r} {maxc} {b} {' '.join(map(str, lens))} "
                                f"{fmt(adv)} {fmt(flat(logp))} {fmt(flat(old))} {fmt(flat(ref))}")
    outs = run_tool(tool, "\n".join(cmds) + "\n")
    clipped = {r: 0 for r in regimes}
    for case, out in zip(cases, outs):
        loss_type, beta, regime, el, eh, maxc, lens, mask, logp, old, ref, adv = case
        lp = torch.tensor(logp, dtype=DT, requires_grad=True)
        # ratio 1 is TRL's num_iterations == 1 path: old_per_token_logps = per_token_logps.detach()
        oldt = lp.detach() if regime == "ratio 1" else torch.tensor(old, dtype=DT)
        loss, kl, low, high = trl_grpo_loss(lp, oldt, torch.tensor(ref, dtype=DT), torch.tensor(adv, dtype=DT),
                                            torch.tensor(mask, dtype=DT), beta, el, eh, loss_type, maxc)
        loss.backward()
        grad = np.concatenate([lp.grad.numpy()[i, :n] for i, n in enumerate(lens)])
        tag = f"{loss_type} beta {beta} {regime}"
        chk.cmp(f"{tag}: loss", [out[0]], [loss.item()])
        chk.eq(f"{tag}: tokens", int(out[1]), int(mask.sum()))
        chk.cmp(f"{tag}: kl sum", [out[2]], [kl.item()])
        chk.eq(f"{tag}: low clipped", int(out[3]), low)
        chk.eq(f"{tag}: high clipped", int(out[4]), high)
        chk.cmp(f"{tag}: d loss / d logp", out[5:], grad)
        clipped[regime] += low + high
    if clipped["ratio 1"] != 0:
        chk.failures.append("ratio 1 clipped a token")
    if clipped["far"] == 0:
        chk.failures.append("the clipped regime clipped no token: the test did not exercise it")


def main():
    tool = common.built_tool("tl_rl_loss_dump")
    if tool is None:
        return 1
    seed = int(os.environ.get("TL_TEST_SEED", time.time_ns() % (1 << 32)))
    print(f"test_rl_loss_vs_trl: seed {seed} (replay with TL_TEST_SEED)")
    rng = np.random.default_rng(seed)
    chk = Checker()
    try:
        adv_cases(rng, tool, chk)
        loss_cases(rng, tool, chk)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        chk.failures.append(str(e))
    for what, e in sorted(chk.worst.items()):
        print(f"  {what:<48} worst rel err {e:.3g}")
    return common.verdict(chk.failures, "FAIL: tailor disagrees with TRL's formulas:")


if __name__ == "__main__":
    sys.exit(main())
