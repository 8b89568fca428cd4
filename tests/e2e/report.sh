# `tailor report`: a short SFT run whose user names are hostile HTML and a short DPO run are rendered; the page
# must parse, load nothing from outside, show one heatmap cell per adapter x user with the eval.json values, show
# every name escaped (the parser must read back exactly the original names) and draw one point per logged step.
# A missing eval.json still gives the curves; a missing or malformed metrics.jsonl is an input error naming the
# file and line.
source "$TAILOR_SRC/tests/lib/common.sh"
make_model "$T/model" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64 --seed 3

# SFT: names that break naive HTML, plus odd ones from make_sft_data.py's --hostile-names list
printf '%s\n' '<script>alert(1)</script>' 'a & b "q" '"'s'" '</title><img src=http://x.invalid/a.png>' \
  'quote"d' '日本語ユーザー' "$(printf 'x%.0s' $(seq 200))" >"$T/names.txt"
make_data "$T/train.h5" "$T/eval.h5" --users 6 --examples-per-user 16 --eval-examples-per-user 4 --vocab 64 \
  --seed 11 --names-file "$T/names.txt"
write_config "$T/c.yaml" "$T/model" "$T/train.h5" "$T/eval.h5" "$T/sft" "steps: 7" "examples_per_adapter: 2" \
  "warmup_steps: 1" "log_every: 1"
"$TAILOR_BIN" train "$T/c.yaml" >"$T/sft.out" 2>&1 || { cat "$T/sft.out"; die "SFT train failed"; }
# --hostile-names itself (the export-safety list) must render too
make_data "$T/h.h5" "$T/he.h5" --users 20 --examples-per-user 2 --eval-examples-per-user 1 --vocab 64 --seed 2 \
  --hostile-names
write_config "$T/h.yaml" "$T/model" "$T/h.h5" "$T/he.h5" "$T/hostile" "steps: 2" "examples_per_adapter: 1" \
  "warmup_steps: 1" "log_every: 1"
"$TAILOR_BIN" train "$T/h.yaml" >"$T/h.out" 2>&1 || { cat "$T/h.out"; die "hostile-names train failed"; }

# DPO on preference data
"$TL_PYTHON" "$TAILOR_SRC/scripts/make_pref_data.py" --out "$T/ptrain.h5" --eval-out "$T/peval.h5" --users 4 \
  --pairs-per-user 8 --eval-pairs-per-user 4 --vocab 64 --seed 5 >/dev/null
write_config "$T/p.yaml" "$T/model" "$T/ptrain.h5" "$T/peval.h5" "$T/dpo" "steps: 5" "examples_per_adapter: 2" \
  "warmup_steps: 1" "log_every: 1"
sed -i 's/^data: {\(.*\), max_seq_len: 48}/data: {\1, max_seq_len: 64}/' "$T/p.yaml"
echo "task: {type: dpo, beta: 0.1, loss: sigmoid}" >>"$T/p.yaml"
"$TAILOR_BIN" train "$T/p.yaml" >"$T/dpo.out" 2>&1 || { cat "$T/dpo.out"; die "DPO train failed"; }

for r in sft hostile dpo; do
  out=$("$TAILOR_BIN" report "$T/$r") || die "report $r failed"
  [ "$out" = "$T/$r/report.html" ] || die "report $r printed '$out', expected the path written"
  [ -s "$T/$r/report.html" ] || die "report $r: no report.html"
done
"$TAILOR_BIN" report "$T/dpo" --out "$T/other.html" >/dev/null || die "report --out failed"
cmp -s "$T/other.html" "$T/dpo/report.html" || die "--out wrote a different page"

cat >"$T/check.py" <<'PY'
import json, sys
from html.parser import HTMLParser

class Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.cells, self.polylines, self.names, self.titles = [], [], {}, [], []
        self.curves = {}
        self.in_name = self.in_title = 0
        self.text = []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        for k, v in attrs:
            v = (v or "").strip().lower()
            if k in ("src", "href", "xlink:href", "action", "srcset", "data") and ("://" in v or v.startswith("//")):
                raise SystemExit(f"external reference: <{tag} {k}={v}>")
        if tag in ("script", "link", "img", "iframe", "object", "embed", "base"):
            raise SystemExit(f"unexpected <{tag}> element")
        if tag == "rect" and a.get("class") == "cell":
            self.cells.append((a["data-adapter"], a["data-user"]))
        if tag == "polyline":
            pts = a["points"].split()
            for p in pts:
                x, y = map(float, p.split(","))
            if "data-adapter" in a:
                self.curves[a["data-adapter"]] = len(pts)
            else:
                self.polylines[a["data-key"]] = len(pts)
        if tag == "td" and a.get("class") == "name":
            self.in_name, self.buf = 1, []
        if tag == "title":
            self.in_title, self.buf = 1, []
    def handle_endtag(self, tag):
        if tag == "td" and self.in_name:
            self.names.append("".join(self.buf)); self.in_name = 0
        if tag == "title" and self.in_title:
            self.titles.append("".join(self.buf)); self.in_title = 0
    def handle_data(self, d):
        self.text.append(d)
        if self.in_name or self.in_title:
            self.buf.append(d)

run, kind = sys.argv[1], sys.argv[2]
raw = open(f"{run}/report.html", encoding="utf-8").read()
p = Page(); p.feed(raw); p.close()
assert p.tags[:2] == ["html", "meta"] or "html" in p.tags, p.tags[:5]
assert "<script" not in raw.lower(), "a <script> reached the page unescaped"
ev = json.load(open(f"{run}/eval.json"))
names = [a["name"] for a in ev["adapters"]]
n = len(names)
assert len(p.cells) == n * n and set(p.cells) == {(a, u) for a in names for u in names}, (len(p.cells), n)
for name in names:
    # the parser must read back the exact name, and nothing HTML-special may appear raw
    assert name in p.names, f"name {name!r} missing from the tables"
    for ch in "<>\"&":
        if ch in name:
            assert name not in raw, f"name {name!r} is in the page unescaped"
recs = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
steps = [r for r in recs if "adapter" not in r]
losses = [r for r in steps if isinstance(r.get("loss"), (int, float))]
assert p.polylines.get("loss") == len(losses), (p.polylines, len(losses))
# memory and throughput over the run: every step record has both, one point each
train_recs = [r for r in steps if "grad_norm" in r]
assert all(isinstance(r["rss_mib"], float) and 1 < r["rss_mib"] < 1e6 for r in train_recs), train_recs[:2]
assert p.polylines.get("rss_mib") == len(train_recs) and p.polylines.get("tokens_per_s") == len(train_recs), p.polylines
# per-adapter records: fewer than 16 adapters, so all are sampled; each trained adapter has a record in each logged
# step, after that step's record; one curve per adapter with one point per record
logged = {r["step"] for r in train_recs}
per = {}
last_step = None
for r in recs:
    if "adapter" in r:
        assert r["step"] == last_step and set(r) == {"step", "adapter", "adapter_loss"}, r
        per.setdefault(r["adapter"], []).append(r["adapter_loss"])
    else:
        last_step = r["step"]
def name_hash(s):  # tl_metrics_name_hash: FNV-1a 64, murmur3's finalizer
    M = (1 << 64) - 1
    x = 0xcbf29ce484222325
    for c in s.encode():
        x = ((x ^ c) * 0x100000001b3) & M
    for k in (0xff51afd7ed558ccd, 0xc4ceb9fe1a85ec53):
        x ^= x >> 33; x = (x * k) & M
    return x ^ (x >> 33)
sample = set(sorted(set(names), key=lambda s: (name_hash(s), s.encode()))[:16])
assert set(per) <= sample, (sorted(set(per) - sample), sorted(sample))
if len(names) <= 16:
    assert set(per) == set(names), (sorted(per), names)
assert sum(len(v) for v in per.values()) >= len(logged), "too few adapter records"
for name, ls in per.items():
    assert p.curves.get(name) == len([x for x in ls if x is not None]), (name, p.curves.get(name), len(ls))
# the step's mean loss is the mean of its adapters' losses (sft: one record per trained adapter)
if kind != "dpo" and len(names) <= 16:
    for r in train_recs:
        mine = [x["adapter_loss"] for x in recs if "adapter" in x and x["step"] == r["step"]]
        assert len(mine) == r["adapters"] and abs(sum(mine) / len(mine) - r["loss"]) < 1e-5, (r, mine)
if any("eval_loss" in r for r in steps):
    assert p.polylines.get("eval_loss") == sum("eval_loss" in r for r in steps), p.polylines
metric = "accuracy" if kind == "dpo" else "loss"
cross = ev["cross"][metric]
for i, a in enumerate(names):
    for j, u in enumerate(names):
        want = f"adapter {a}, user {u}: {metric} {cross[i][j]:.4f}"
        assert want in p.titles, f"heatmap title missing: {want!r}"
if kind == "dpo":
    acc = [r for r in steps if "rewards/accuracies" in r]
    assert acc and p.polylines.get("rewards/accuracies") == len(acc), (p.polylines, len(acc))
    assert 'data-metric="accuracy"' in raw and "higher is better" in "".join(p.text)
    assert "users" not in ev or all(u["name"] in p.names for u in ev["users"])
else:
    assert 'data-metric="loss"' in raw and "lower is better" in "".join(p.text)
print(f"{kind}: {n}x{n} heatmap, {len(losses)} loss points ok")
PY
"$TL_PYTHON" "$T/check.py" "$T/sft" sft || die "sft page check"
"$TL_PYTHON" "$T/check.py" "$T/hostile" sft || die "hostile-names page check"
"$TL_PYTHON" "$T/check.py" "$T/dpo" dpo || die "dpo page check"
ls -a "$T/sft" | grep -v -x -E '\.|\.\.|adapters|checkpoints|config\.yaml|eval\.json|metrics\.jsonl|report\.html' &&
  die "report left a stray file in the run directory"

# no eval.json: the curves, and a note
rm "$T/dpo/eval.json"
"$TAILOR_BIN" report "$T/dpo" >/dev/null || die "report without eval.json failed"
grep -q 'No eval.json' "$T/dpo/report.html" || die "missing eval.json not stated"
grep -q '<polyline class="line" data-key="loss"' "$T/dpo/report.html" || die "no curve without eval.json"
grep -q 'class="cell"' "$T/dpo/report.html" && die "heatmap without eval.json"

# malformed / missing metrics.jsonl: exit 2, one line naming the file and line; the old page is left alone
cp "$T/sft/report.html" "$T/before.html"
printf '{"step": 8, "loss": 1.0}\n{"step": 9, "loss": \n' >>"$T/sft/metrics.jsonl"
lines=$(wc -l <"$T/sft/metrics.jsonl")
set +e
"$TAILOR_BIN" report "$T/sft" >"$T/o.txt" 2>"$T/e.txt"; rc=$?
set -e
[ $rc -eq 2 ] || die "malformed metrics.jsonl: exit $rc, expected 2"
[ "$(wc -l <"$T/e.txt")" -eq 1 ] && grep -q "metrics.jsonl line $lines" "$T/e.txt" ||
  die "malformed metrics.jsonl: message should name the file and line $lines: $(cat "$T/e.txt")"
cmp -s "$T/before.html" "$T/sft/report.html" || die "a failed report replaced the old page"
rm "$T/sft/metrics.jsonl"
set +e
"$TAILOR_BIN" report "$T/sft" >/dev/null 2>"$T/e.txt"; rc=$?
"$TAILOR_BIN" report "$T/nope" >/dev/null 2>/dev/null; rc2=$?
"$TAILOR_BIN" report >/dev/null 2>/dev/null; rc3=$?
set -e
[ $rc -eq 2 ] && grep -q "metrics.jsonl" "$T/e.txt" || die "missing metrics.jsonl: exit $rc: $(cat "$T/e.txt")"
[ $rc2 -eq 2 ] && [ $rc3 -eq 2 ] || die "bad run dir / no argument: exits $rc2 $rc3, expected 2"

# a real browser loads the page without console messages (scripts/test.sh installs Debian's chromium; elsewhere
# the check is skipped with a note)
if command -v chromium >/dev/null 2>&1; then
  timeout 60 chromium --headless --disable-gpu --no-sandbox --enable-logging=stderr --v=0 \
    --dump-dom "file://$T/hostile/report.html" >"$T/dom.html" 2>"$T/chromium.log" || die "chromium could not load the page"
  grep -q '<svg class="heatmap"' "$T/dom.html" || die "chromium DOM has no heatmap svg"
  ! grep -E "CONSOLE|Uncaught|Failed to load resource" "$T/chromium.log" || die "console messages while loading the page"
  cells=$(grep -o '<rect class="cell"' "$T/dom.html" | wc -l)
  n=$("$TL_PYTHON" -c "import json,sys; print(len(json.load(open(sys.argv[1]))['adapters']))" "$T/hostile/eval.json")
  [ "$cells" -eq $((n * n)) ] || die "chromium DOM: $cells heatmap cells, expected $((n * n))"
  echo "chromium: page loads without console messages; $cells heatmap cells = $n adapters x $n users"
else
  echo "note: chromium not installed, headless browser check skipped"
fi
echo ok
