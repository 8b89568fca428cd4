# `tailor report` at 10,000 users: a synthetic run directory (no training) whose eval.json holds 10,000 SFT
# adapters (and one of 10,000 preference adapters with 10,000 users), and whose metrics.jsonl holds 1,500 logged
# steps with rss_mib and tokens_per_s plus the per-adapter records of 16 sampled adapters and of 4 more (past the
# curve limit). The page must stay under 1 MB; its histogram bars must hold exactly the adapters whose
# base_loss - loss (or accuracy) lies between the bar's edges; the summary, the best 10 and the worst 10 must be
# those Python computes from eval.json; the full tables stop at 200 rows and say where the rest is; hostile names
# are escaped; long curves are thinned to 1,000 points.
source "$TAILOR_SRC/tests/lib/common.sh"

cat >"$T/make.py" <<'PY'
import json, os, random, sys
root = sys.argv[1]
rng = random.Random(7)
hostile = ['<script>alert(1)</script>', 'a & b "q"', "</td><img src=http://x.invalid/a.png>", '日本語ユーザー']
for kind in ("sft", "pref"):
    run = f"{root}/{kind}"
    os.makedirs(run)
    n = 10000
    names = [f"user{i:05d}" for i in range(n)]
    for k, h in enumerate(hostile):
        names[1000 * k + 3] = h
    names[5] = "z" * 5000  # a sampled adapter with a long name: shown cut to 256 characters
    rows = []
    for i, name in enumerate(names):
        if kind == "sft":
            base = round(rng.uniform(2.0, 4.0), 6)
            loss = round(base - rng.gauss(0.3, 0.4), 6)
            r = {"name": name, "examples": 4, "tokens": 200 + i % 50, "loss": loss, "ppl": 10.0, "base_loss": base}
            if i % 997 == 5:
                r["loss"] = None  # no value: left out of the histogram
            rows.append(r)
        else:
            rows.append({"name": name, "pairs": 4, "loss": 0.6, "rewards/accuracies": rng.choice([0, 0.25, 0.5, 0.75, 1.0]),
                         "rewards/margins": round(rng.uniform(-1, 1), 6)})
    # the hostile names among the best: the tables must show them escaped
    if kind == "sft":
        rows[3]["loss"] = rows[3]["base_loss"] - 5.0
        rows[1003]["loss"] = rows[1003]["base_loss"] - 4.5
    ev = {"step": 1500, "adapters": rows}
    if kind == "sft":
        ev.update({"loss": 2.5, "base_loss": 3.0, "ppl": 12.0, "tokens": 2250000})
    else:
        ev["users"] = [{"name": f"u{i}", "group": f"g{i % 7}", "pairs": 1, "loss": 0.5, "rewards/accuracies": 1.0,
                        "rewards/margins": 0.1} for i in range(n)]
    json.dump(ev, open(f"{run}/eval.json", "w"))
    with open(f"{run}/metrics.jsonl", "w") as f:
        sampled = names[:16] + ["extra1", "extra2", "extra3", "extra4"]
        for s in range(1, 1501):
            f.write(json.dumps({"step": s, "loss": 3 - s / 1000, "lr": 1e-3, "grad_norm": 1.0, "tokens": 1000,
                                "tokens_per_s": 900.0 + s % 7, "elapsed_s": s * 0.5, "adapters": 64,
                                "truncated": 0, "rss_mib": 1000.0 + s / 10}) + "\n")
            for j, a in enumerate(sampled):
                if (s + j) % 5 == 0 or (j < 16 and s == 1):
                    f.write(json.dumps({"step": s, "adapter": a, "adapter_loss": 3 - s / 2000 - j / 100}) + "\n")
PY
"$TL_PYTHON" "$T/make.py" "$T"

for r in sft pref; do
  "$TAILOR_BIN" report "$T/$r" >/dev/null || die "report $r failed"
done

cat >"$T/check.py" <<'PY'
import json, math, sys
from html.parser import HTMLParser

class Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.bars, self.tables, self.curves, self.polylines, self.more, self.summary = [], {}, {}, {}, [], None
        self.table = None; self.cell = None; self.row = None; self.cells = 0
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "link", "object", "embed"):
            raise SystemExit(f"unexpected <{tag}>")
        if tag == "rect" and a.get("class") == "bar":
            self.bars.append((float(a["data-lo"]), float(a["data-hi"]), int(a["data-count"])))
        if tag == "rect" and a.get("class") == "cell":
            self.cells += 1
        if tag == "polyline":
            n = len(a["points"].split())
            if "data-adapter" in a: self.curves[a["data-adapter"]] = n
            else: self.polylines[a["data-key"]] = n
        if tag == "p" and a.get("class") == "more":
            self.more.append((int(a["data-shown"]), int(a["data-total"])))
        if tag == "p" and a.get("class") == "summary":
            self.summary = a
        if tag == "table":
            self.table = a.get("class"); self.tables[self.table] = []
        if tag == "tr" and self.table:
            self.row = []
        if tag == "td" and self.row is not None:
            self.cell = []
    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.row.append("".join(self.cell)); self.cell = None
        if tag == "tr" and self.row is not None:
            if self.row: self.tables[self.table].append(self.row)
            self.row = None
        if tag == "table":
            self.table = None
    def handle_data(self, d):
        if self.cell is not None: self.cell.append(d)

def shown(name):  # what the page shows of a name (REPORT_NAME_CHARS)
    return name if len(name) <= 256 else name[:256] + "\u2026"

run, kind = sys.argv[1], sys.argv[2]
raw = open(f"{run}/report.html", encoding="utf-8").read()
size = len(raw.encode())
assert size < 1_000_000, f"report.html is {size} bytes"
p = Page(); p.feed(raw); p.close()
ev = json.load(open(f"{run}/eval.json"))
rows = ev["adapters"]
if kind == "sft":
    vals = [(r["base_loss"] - r["loss"], i) for i, r in enumerate(rows) if r["loss"] is not None]
    better = sum(v > 0 for v, _ in vals)
else:
    vals = [(r["rewards/accuracies"], i) for i, r in enumerate(rows)]
    better = sum(v > 0.5 for v, _ in vals)
# histogram: 40 bars over [min, max], every value in the bar whose edges hold it (the last bar closed)
assert len(p.bars) == 40, len(p.bars)
assert p.bars[0][0] == min(v for v, _ in vals) and p.bars[-1][1] == max(v for v, _ in vals), (p.bars[0], p.bars[-1])
assert sum(c for _, _, c in p.bars) == len(vals)
for k, (lo, hi, c) in enumerate(p.bars):
    want = sum(lo <= v < hi or (k == 39 and v == hi) for v, _ in vals)
    assert c == want, (k, lo, hi, c, want)
# summary
s = p.summary
srt = sorted(v for v, _ in vals)
m = len(srt)
median = srt[m // 2] if m % 2 else (srt[m // 2 - 1] + srt[m // 2]) / 2
assert int(s["data-n"]) == m and int(s["data-better"]) == better, (s, m, better)
assert abs(float(s["data-mean"]) - sum(srt) / m) <= 1e-9 * max(1, abs(sum(srt) / m)), s
assert float(s["data-median"]) == median, (s["data-median"], median)
# best and worst 10: by value, ties in eval.json order (worst: the reverse)
desc = sorted(vals, key=lambda t: (-t[0], t[1]))
for cls, pick in (("best", desc[:10]), ("worst", desc[::-1][:10])):
    got = p.tables[cls]
    assert [r[1] for r in got] == [shown(rows[i]["name"]) for _, i in pick], (cls, [r[1] for r in got])
    assert [r[2] for r in got] == [f"{v:.4f}" for v, _ in pick], (cls, [r[2] for r in got])
# the full tables stop at 200 rows (+ the total row) and say so
assert len(p.tables["adapters"]) == 200 + 1, len(p.tables["adapters"])
assert [r[0] for r in p.tables["adapters"][:200]] == [shown(r["name"]) for r in rows[:200]]
assert "z" * 257 not in raw, "a long name was not cut"
want_more = [(200, len(rows))] + ([(200, len(ev["users"]))] if "users" in ev else [])
assert p.more == want_more, (p.more, want_more)
assert p.cells == 0 and "the adapter x user heatmap is drawn for up to 32" in raw
# hostile names: escaped in the page, read back exactly where listed
for h in ['<script>alert(1)</script>', 'a & b "q"', "</td><img src=http://x.invalid/a.png>"]:
    assert h not in raw, f"{h!r} unescaped"
if kind == "sft":
    assert [r[1] for r in p.tables["best"][:2]] == ['<script>alert(1)</script>', 'a & b "q"'], p.tables["best"][:2]
# curves: 16 sampled adapters drawn, the 4 past the limit counted; 1,500 steps thinned to 1,000 points
recs = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
per = {}
for r in recs:
    if "adapter" in r: per.setdefault(r["adapter"], []).append(r)
drawn = [a for a in per if not a.startswith("extra")]
assert sorted(p.curves) == sorted(map(shown, drawn)), sorted(p.curves)
for a in drawn:
    assert p.curves[shown(a)] == min(1000, len(per[a])), (a, p.curves[shown(a)], len(per[a]))
dropped = sum(len(v) for a, v in per.items() if a.startswith("extra"))
assert f"{dropped} record(s) of further adapters not drawn" in raw, dropped
for key in ("loss", "rss_mib", "tokens_per_s"):
    assert p.polylines.get(key) == 1000, (key, p.polylines)
assert "1500 points (1000 drawn, evenly spaced)" in raw
print(f"{kind}: {len(rows)} adapters, report {size} bytes, {m} values in the histogram, best {desc[0][0]:.4f}")
PY
"$TL_PYTHON" "$T/check.py" "$T/sft" sft || die "sft page check"
"$TL_PYTHON" "$T/check.py" "$T/pref" pref || die "pref page check"
echo ok
