"""tailor's preference losses (trainer/pref_loss.c, via tests/tools/tl_pref_loss_dump) against TRL's formulas.

TRL is not installed here, so its expressions are written below in torch exactly as TRL v0.12.2 has them (the
same in 0.10 to 0.12; in 0.9 only rpo_alpha differs, see docs/preference.md), each function naming the TRL code
it copies:
  trl/trainer/dpo_trainer.py  DPOTrainer.dpo_loss (sigmoid, robust, hinge, ipo; rewards),
                              DPOTrainer.concatenated_forward (summed log-probs; divided by the completion length
                              for ipo, for the policy and, through compute_ref_log_probs, the reference; rpo nll),
                              DPOTrainer.get_batch_loss_metrics (rpo_alpha, the logged metrics)
  trl/trainer/cpo_trainer.py  CPOTrainer.cpo_loss (simpo), CPOTrainer.concatenated_forward (average_log_prob for
                              simpo), CPOTrainer.get_batch_loss_metrics (cpo_alpha * nll)
  trl/trainer/reward_trainer.py  RewardTrainer.compute_loss (Bradley-Terry, center_rewards_coefficient)

Three parts, all in float64 on fresh random inputs (seed printed; TL_TEST_SEED replays):
  A. batches of summed log-probs for every kind and a spread of beta / label_smoothing / gamma: per-pair loss,
     d loss / d (policy chosen, rejected) by autograd, rewards, logged logps, and the batch metrics of
     get_batch_loss_metrics against tailor's tl_pref_stats means;
  B. the SFT term (rpo_alpha / cpo_alpha) through TRL's token-level path: random logits per response token, TRL's
     gather(log_softmax) sums and F.cross_entropy nll, autograd down to the logits, compared with tailor's
     dpc / dpr pushed through d logp / d logits = onehot - softmax (batches of one pair, where TRL's batch
     token-mean nll is the pair's mean nll);
  C. the reward-model loss: per pair and batch mean, with gradients.
Pass: every compared number within 1e-9 relative (|a - b| <= 1e-9 max(|b|, 1e-12)); exact zeros stay zero.

Env: TL_TEST_BIN (build dir holding tl_pref_loss_dump).
Run: TL_TEST_BIN=build /usr/bin/python3 tests/torch/test_pref_loss_vs_trl.py
"""

import math
import os
import subprocess
import sys
import time

import common  # noqa: E402

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # the cross-check needs torch; without it the test is skipped, never passed
    common.skip(e)

TOL = 1e-9
DT = torch.float64


# ---------------------------------------------------------------- TRL's formulas (v0.12.2), in torch

def trl_dpo_loss(loss_type, beta, label_smoothing, chosen_logps, rejected_logps, ref_chosen_logps,
                 ref_rejected_logps):
    """DPOTrainer.dpo_loss, reference_free=False, f_divergence_type reverse_kl (the default)."""
    logratios = chosen_logps - rejected_logps
    ref_logratios = ref_chosen_logps - ref_rejected_logps
    logits = logratios - ref_logratios
    if loss_type == "sigmoid":
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  - F.logsigmoid(-beta * logits) * label_smoothing)
    elif loss_type == "robust":
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  + F.logsigmoid(-beta * logits) * label_smoothing) / (1 - 2 * label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(loss_type)
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def trl_cpo_loss(loss_type, beta, label_smoothing, simpo_gamma, policy_chosen_logps, policy_rejected_logps):
    """CPOTrainer.cpo_loss, loss_type simpo."""
    assert loss_type == "simpo"
    logits = policy_chosen_logps - policy_rejected_logps
    gamma_logratios = simpo_gamma / beta
    logits = logits - gamma_logratios
    losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
              - F.logsigmoid(-beta * logits) * label_smoothing)
    chosen_rewards = beta * policy_chosen_logps.detach()
    rejected_rewards = beta * policy_rejected_logps.detach()
    return losses, chosen_rewards, rejected_rewards


def trl_per_pair(kind, beta, ls, gamma, pc_sum, pr_sum, rc_sum, rr_sum, nc, nr):
    """The log-probs as concatenated_forward hands them to the loss (DPO: divided by loss_mask.sum(-1) for ipo;
    CPO: average_log_prob for simpo), then the loss. Returns losses, rewards and the logps TRL logs."""
    if kind in ("ipo", "simpo"):
        pc, pr, rc, rr = pc_sum / nc, pr_sum / nr, rc_sum / nc, rr_sum / nr
    else:
        pc, pr, rc, rr = pc_sum, pr_sum, rc_sum, rr_sum
    if kind == "simpo":
        losses, crew, rrew = trl_cpo_loss(kind, beta, ls, gamma, pc, pr)
    else:
        losses, crew, rrew = trl_dpo_loss(kind, beta, ls, pc, pr, rc, rr)
    return losses, crew, rrew, pc, pr


def trl_metrics(losses, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps):
    """DPOTrainer.get_batch_loss_metrics (CPO's are the same names): losses.mean() and the logged means."""
    # TRL writes .float(); float64 here so that the exact fraction is compared, not its float32 rounding
    reward_accuracies = (chosen_rewards > rejected_rewards).to(DT)
    return [losses.mean().item(), chosen_rewards.mean().item(), rejected_rewards.mean().item(),
            reward_accuracies.mean().item(), (chosen_rewards - rejected_rewards).mean().item(),
            chosen_logps.detach().mean().item(), rejected_logps.detach().mean().item()]


def trl_reward_loss(rewards_chosen, rewards_rejected, center_rewards_coefficient):
    """RewardTrainer.compute_loss without a margin column."""
    loss = -F.logsigmoid(rewards_chosen - rewards_rejected).mean()
    if center_rewards_coefficient is not None:
        loss += center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)
    return loss


# ---------------------------------------------------------------- comparison helpers

class Checker:
    def __init__(self):
        self.failures, self.rows = [], []

    def close(self, what, got, want):
        got = np.atleast_1d(np.asarray(got, dtype=np.float64))
        want = np.atleast_1d(np.asarray(want, dtype=np.float64))
        if got.shape != want.shape:
            self.failures.append(f"{what}: {got.shape[0]} values, expected {want.shape[0]}")
            self.rows.append((what, float("inf")))
            return
        if not np.all(np.isfinite(got)):
            self.failures.append(f"{what}: non-finite values from tailor")
            self.rows.append((what, float("inf")))
            return
        err = np.abs(got - want) / np.maximum(np.abs(want), 1e-12)
        zero_bad = np.any((want == 0) & (got != 0))
        e = float(np.max(err)) if err.size else 0.0
        if e > TOL or zero_bad:
            i = int(np.argmax(err))
            self.failures.append(f"{what}: rel err {e:.3g} at index {i} (tailor {got[i]!r}, TRL {want[i]!r})"
                                 + (" (a TRL zero is not zero in tailor)" if zero_bad else ""))
        self.rows.append((what, e))


def run_tool(tool, lines):
    r = subprocess.run([tool], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"tl_pref_loss_dump failed (exit {r.returncode}): {r.stderr.strip()}")
    out = r.stdout.splitlines()
    if len(out) != sum(1 for ln in lines if ln.strip() and not ln.startswith("#")):
        raise RuntimeError(f"tl_pref_loss_dump printed {len(out)} lines for {len(lines)} commands")
    return out


def floats(line, n, prefix=None):
    f = line.split()
    if prefix is not None:
        assert f[0] == prefix, f"expected a '{prefix}' line, got {line!r}"
        f = f[1:]
    assert len(f) == n, f"expected {n} numbers, got {line!r}"
    return [float(x) for x in f]


# ---------------------------------------------------------------- A: batches of summed log-probs

def part_a(tool, rng, chk):
    configs = []
    for kind in ("sigmoid", "robust", "hinge", "ipo", "simpo"):
        for beta in (0.01, 0.1, 0.5, 2.0):
            for ls in ((0.0, 0.1, 0.3, 0.49) if kind in ("sigmoid", "robust", "simpo") else (0.0,)):
                configs.append((kind, beta, ls, float(rng.uniform(0.0, 2.0)) if kind == "simpo" else 0.5))
    B = 48
    lines, batches = [], []
    for kind, beta, ls, gamma in configs:
        nc = rng.integers(1, 60, size=B)
        nr = rng.integers(1, 60, size=B)
        pc = -rng.uniform(0.2, 5.0, size=B) * nc
        pr = -rng.uniform(0.2, 5.0, size=B) * nr
        rc = pc + rng.normal(0, 3.0, size=B) * np.sqrt(nc)
        rr = pr + rng.normal(0, 3.0, size=B) * np.sqrt(nr)
        # ties (policy = reference: zero rewards, not accurate) and logits of thousands of nats
        rc[:4], rr[:4] = pc[:4], pr[:4]
        pr[4:6] -= 3000.0
        pc[6:8] -= 3000.0
        if kind == "hinge" and beta in (0.5, 2.0):
            # exactly on the kink, beta * logit = 1: torch's relu has derivative 0 there
            pc[8], pr[8], rc[8], rr[8] = -10.0 + 1.0 / beta, -7.0, -10.0, -7.0
        for i in range(B):
            lines.append(f"pref {kind} {beta!r} {ls!r} {gamma!r} 0 {pc[i]!r} {pr[i]!r} {rc[i]!r} {rr[i]!r} "
                         f"{nc[i]} {nr[i]}")
        lines.append("stats")
        batches.append((kind, beta, ls, gamma, pc, pr, rc, rr, nc, nr))
    out = run_tool(tool, lines)
    k = 0
    agg = {}
    for kind, beta, ls, gamma, pc, pr, rc, rr, nc, nr in batches:
        got = np.array([floats(out[k + i], 7) for i in range(B)])
        stats = floats(out[k + B], 7, prefix="stats")
        k += B + 1
        pc_t = torch.tensor(pc, dtype=DT, requires_grad=True)
        pr_t = torch.tensor(pr, dtype=DT, requires_grad=True)
        rc_t, rr_t = torch.tensor(rc, dtype=DT), torch.tensor(rr, dtype=DT)
        nc_t, nr_t = torch.tensor(nc, dtype=DT), torch.tensor(nr, dtype=DT)
        losses, crew, rrew, lc, lr = trl_per_pair(kind, beta, ls, gamma, pc_t, pr_t, rc_t, rr_t, nc_t, nr_t)
        # pairs are independent, so d(sum of losses)/d pc_i is pair i's own derivative
        gc, gr = torch.autograd.grad(losses.sum(), [pc_t, pr_t])
        ref = {"loss": losses.detach(), "d/d policy chosen": gc, "d/d policy rejected": gr,
               "rewards chosen": crew, "rewards rejected": rrew, "logps chosen": lc.detach(),
               "logps rejected": lr.detach()}
        for j, (name, want) in enumerate(ref.items()):
            agg.setdefault((kind, name), ([], []))
            agg[(kind, name)][0].append(got[:, j])
            agg[(kind, name)][1].append(want.numpy())
        metrics = trl_metrics(losses, crew, rrew, lc, lr)
        agg.setdefault((kind, "batch metrics (loss, rewards/*, logps/*)"), ([], []))
        agg[(kind, "batch metrics (loss, rewards/*, logps/*)")][0].append(np.array(stats))
        agg[(kind, "batch metrics (loss, rewards/*, logps/*)")][1].append(np.array(metrics))
    for (kind, name), (g, w) in agg.items():
        chk.close(f"A {kind:<8} {name}", np.concatenate(g), np.concatenate(w))
    return len(configs) * B


# ---------------------------------------------------------------- B: SFT term through TRL's token-level path

def part_b(tool, rng, chk):
    V = 37
    cases = []
    for kind in ("sigmoid", "robust", "hinge", "ipo", "simpo"):
        for _ in range(12):
            beta = float(rng.choice([0.05, 0.1, 0.5, 1.0]))
            ls = float(rng.uniform(0, 0.45)) if kind in ("sigmoid", "robust", "simpo") else 0.0
            gamma = float(rng.uniform(0, 2.0))
            alpha = float(rng.uniform(0.1, 2.0))
            nc, nr = int(rng.integers(1, 20)), int(rng.integers(1, 20))
            # labels avoid token 0: TRL 0.12's nll uses cross_entropy(ignore_index=0) after setting masked labels
            # to 0, so a real token 0 would drop out of its nll (a TRL quirk tailor does not copy)
            logits_c = torch.tensor(rng.normal(0, 2.0, size=(nc, V)), dtype=DT, requires_grad=True)
            logits_r = torch.tensor(rng.normal(0, 2.0, size=(nr, V)), dtype=DT, requires_grad=True)
            lab_c = torch.tensor(rng.integers(1, V, size=nc))
            lab_r = torch.tensor(rng.integers(1, V, size=nr))
            ref_c = torch.tensor(rng.normal(0, 2.0, size=(nc, V)), dtype=DT)
            ref_r = torch.tensor(rng.normal(0, 2.0, size=(nr, V)), dtype=DT)
            cases.append((kind, beta, ls, gamma, alpha, logits_c, logits_r, lab_c, lab_r, ref_c, ref_r))

    def seq_logps(logits, labels):  # concatenated_forward: gather(log_softmax), summed over the completion
        return torch.gather(logits.log_softmax(-1), dim=1, index=labels[:, None])[:, 0].sum()

    lines, refs = [], []
    for kind, beta, ls, gamma, alpha, lgc, lgr, lab_c, lab_r, ref_c, ref_r in cases:
        nc, nr = lab_c.numel(), lab_r.numel()
        pc, pr = seq_logps(lgc, lab_c), seq_logps(lgr, lab_r)
        with torch.no_grad():
            rc, rr = seq_logps(ref_c, lab_c), seq_logps(ref_r, lab_r)
        losses, _, _, _, _ = trl_per_pair(kind, beta, ls, gamma, pc[None], pr[None], rc[None], rr[None],
                                          torch.tensor([nc], dtype=DT), torch.tensor([nr], dtype=DT))
        nll_loss = F.cross_entropy(lgc, lab_c, ignore_index=0)  # rpo / cpo nll on the chosen completion
        if kind == "simpo":
            loss = losses.mean() + alpha * nll_loss  # CPOTrainer.get_batch_loss_metrics
        else:
            loss = (losses + alpha * nll_loss).mean()  # DPOTrainer.get_batch_loss_metrics (rpo_alpha)
        gc, gr = torch.autograd.grad(loss, [lgc, lgr])
        lines.append(f"pref {kind} {beta!r} {ls!r} {gamma!r} {alpha!r} {pc.item()!r} {pr.item()!r} "
                     f"{rc.item()!r} {rr.item()!r} {nc} {nr}")
        refs.append((loss.item(), gc, gr, lgc.detach(), lgr.detach(), lab_c, lab_r))
    out = run_tool(tool, lines)
    got_loss, want_loss, got_g, want_g = [], [], [], []
    for line, (loss, gc, gr, lgc, lgr, lab_c, lab_r) in zip(out, refs):
        v = floats(line, 7)
        got_loss.append(v[0])
        want_loss.append(loss)
        for d, lg, lab, want in ((v[1], lgc, lab_c, gc), (v[2], lgr, lab_r, gr)):
            # d logp(label) / d logits = onehot(label) - softmax(logits), row by row
            jac = F.one_hot(lab, lg.shape[1]).to(DT) - lg.softmax(-1)
            got_g.append((d * jac).numpy().ravel())
            want_g.append(want.numpy().ravel())
    chk.close("B all kinds + sft_weight: loss (token-level TRL path)", got_loss, want_loss)
    chk.close("B all kinds + sft_weight: d loss / d logits of both responses", np.concatenate(got_g),
              np.concatenate(want_g))
    return len(cases)


# ---------------------------------------------------------------- C: reward model (Bradley-Terry)

def part_c(tool, rng, chk):
    lines, refs = [], []
    for c in (0.0, 0.01, 0.3):
        B = 64
        r_c = rng.normal(0, 3.0, size=B)
        r_r = rng.normal(0, 3.0, size=B)
        r_r[:3] = r_c[:3]  # ties: not accurate
        r_c[3], r_r[3] = 400.0, -400.0
        for i in range(B):
            lines.append(f"bt {r_c[i]!r} {r_r[i]!r} {c!r}")
        lines.append("stats")
        refs.append((c, r_c, r_r))
    out = run_tool(tool, lines)
    k = 0
    g_l, w_l, g_d, w_d, g_m, w_m = [], [], [], [], [], []
    for c, r_c, r_r in refs:
        B = len(r_c)
        got = np.array([floats(out[k + i], 3) for i in range(B)])
        stats = floats(out[k + B], 7, prefix="stats")
        k += B + 1
        tc = torch.tensor(r_c, dtype=DT, requires_grad=True)
        tr = torch.tensor(r_r, dtype=DT, requires_grad=True)
        per_pair = torch.stack([trl_reward_loss(tc[i:i + 1], tr[i:i + 1], c) for i in range(B)])
        batch = trl_reward_loss(tc, tr, c)
        # the batch loss is the mean of the pair losses; B * its gradient is each pair's own
        gc, gr = torch.autograd.grad(batch * B, [tc, tr])
        g_l.append(got[:, 0])
        w_l.append(per_pair.detach().numpy())
        g_d += [got[:, 1], got[:, 2]]
        w_d += [gc.numpy(), gr.numpy()]
        acc = (tc > tr).double().mean().item()
        g_m.append(np.array(stats[:5]))
        w_m.append(np.array([batch.item(), tc.mean().item(), tr.mean().item(), acc, (tc - tr).mean().item()]))
        if not (math.isnan(stats[5]) and math.isnan(stats[6])):
            chk.failures.append("C: logps means of reward-model pairs should be NaN (no log-probs)")
    chk.close("C reward: per-pair loss vs RewardTrainer.compute_loss", np.concatenate(g_l), np.concatenate(w_l))
    chk.close("C reward: d loss / d r_chosen, d r_rejected", np.concatenate(g_d), np.concatenate(w_d))
    chk.close("C reward: batch loss (mean) and reward metrics", np.concatenate(g_m), np.concatenate(w_m))
    return sum(len(r[1]) for r in refs)


def main():
    tool = common.built_tool("tl_pref_loss_dump")
    if not tool:
        return 1
    torch.set_num_threads(1)
    seed = int(os.environ.get("TL_TEST_SEED", "0")) or (int(time.time() * 1000) ^ os.getpid()) & 0xFFFFFFFF
    print(f"seed {seed} (replay with TL_TEST_SEED={seed})")
    rng = np.random.default_rng(seed)
    t0 = time.time()
    chk = Checker()
    try:
        na = part_a(tool, rng, chk)
        nb = part_b(tool, rng, chk)
        nc = part_c(tool, rng, chk)
    except (RuntimeError, AssertionError, subprocess.TimeoutExpired) as e:
        print(f"FAIL: {e}")
        return 1
    print(f"{'quantity':<72} {'rel err':>10}")
    for what, e in chk.rows:
        print(f"{what:<72} {e:10.2e}")
    print(f"({na} DPO/SimPO pairs, {nb} token-level pairs, {nc} reward pairs; {time.time() - t0:.1f} s; "
          f"tolerance {TOL:g})")
    return common.verdict(chk.failures, "FAIL: tailor disagrees with TRL's formulas:")


if __name__ == "__main__":
    sys.exit(main())
