"""Compares the metrics (and eval.json) of two runs of the same config: usage: same_metrics.py RUN_A RUN_B

The same logged steps with the same loss, grad_norm (before clipping: a micro-batch counted twice or lost shows here
even where Adam would hide it in the adapters), lr and token counts; the sampled adapters' own losses; and the same
eval losses, per-user results and cross matrix when both runs have eval.json. Tolerance 1e-5 relative (fp32
reassociation across ranks). Exits non-zero on the first difference."""
import json, os, sys
a, b = sys.argv[1], sys.argv[2]
def recs(d):
    return [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
# the sampled adapters' own losses (records with "adapter"): the same records, the same losses
def per_adapter(rs):
    return {(r["step"], r["adapter"]): r["adapter_loss"] for r in rs if "adapter" in r}
pa, pb = per_adapter(recs(a)), per_adapter(recs(b))
assert pa.keys() == pb.keys() and pa, ("per-adapter records differ", sorted(pa.keys() ^ pb.keys())[:5])
for k in pa:
    assert abs(pa[k] - pb[k]) <= 1e-5 * max(1, abs(pa[k])), (k, pa[k], pb[k])
ra, rb = [r for r in recs(a) if "adapter" not in r], [r for r in recs(b) if "adapter" not in r]
assert [r["step"] for r in ra] == [r["step"] for r in rb], "metrics steps differ"
for x, y in zip(ra, rb):
    for k in ("loss", "grad_norm", "lr"):
        assert abs(x[k] - y[k]) <= 1e-5 * max(1, abs(x[k])), (k, x, y)
    assert x["tokens"] == y["tokens"] and x["adapters"] == y["adapters"], (x, y)
if os.path.exists(f"{a}/eval.json"):
    ea, eb = json.load(open(f"{a}/eval.json")), json.load(open(f"{b}/eval.json"))
    key = "loss" if "loss" in ea["adapters"][0] else "rewards/accuracies"
    la = {r["name"]: r[key] for r in ea["adapters"]}
    lb = {r["name"]: r[key] for r in eb["adapters"]}
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) <= 1e-5 for k in la), (la, lb)
    ua, ub = ea.get("users"), eb.get("users")
    assert (ua is None) == (ub is None), "one run has per-user results, the other not"
    if ua is not None:
        assert [u["name"] for u in ua] == [u["name"] for u in ub], "per-user results list other users"
        for x, y in zip(ua, ub):
            assert x["pairs"] == y["pairs"] and x["pairs"] > 0, (x, y)
            assert abs(x["rewards/accuracies"] - y["rewards/accuracies"]) <= 1e-9, (x, y)
    ca, cb = ea.get("cross"), eb.get("cross")
    assert (ca is None) == (cb is None), "one run has a cross matrix, the other not"
    if ca is not None:
        def flat(x):
            if isinstance(x, dict): return [v for k in sorted(x) for v in flat(x[k])]
            if isinstance(x, list): return [v for e in x for v in flat(e)]
            return [x] if isinstance(x, (int, float)) else []
        xa, xb = flat(ca), flat(cb)
        assert len(xa) == len(xb) and len(xa) > 0, "cross matrices differ in shape"
        assert all(abs(p - q) <= 1e-5 * max(1, abs(p)) for p, q in zip(xa, xb)), "cross matrices differ"
print(f"metrics agree: {a} and {b}")
