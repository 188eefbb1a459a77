"""The run page's stylesheet and its script, which refreshes the numbers from the JSON."""

from __future__ import annotations

REFRESH_MS = 5000

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}
header{background:#1d2430;color:#fff;padding:10px 20px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0}header a{color:#9cc7ff}main{padding:10px 20px}
.batch{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:12px 16px;
margin:0 0 16px}.batch h2{margin:0;font-size:17px}.phase{font-size:13px;color:#555;
background:#eef1f5;border-radius:3px;padding:1px 6px}.source{color:#555;margin:4px 0}
progress{width:100%;height:16px}.summary{margin:6px 0}.cost{font-weight:600}
.cols{display:flex;gap:24px;flex-wrap:wrap}table{border-collapse:collapse}
td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #eef0f3;vertical-align:top}
.counts td{text-align:right;font-variant-numeric:tabular-nums}h3{font-size:14px;margin:8px 0 4px}
.chart rect{fill:#3d7fd9}.chart .peak{font-size:10px;fill:#777}.err{color:#a33;max-width:60ch}
.paused{color:#a60;font-weight:600}.halted{color:#a33;font-weight:600}
.controls{margin:.2em 0;padding-left:1.2em}
.state-failed th{color:#a33}.state-completed th{color:#286a2e}
"""

SCRIPT = """
(() => {
const q = location.search;
const W = 600, H = 90;
const dur = (s) => {
  if (s === null || s === undefined) return '\\u2014';
  s = Math.round(s);
  const p = (n) => String(n).padStart(2, '0');
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm ' + p(s % 60) + 's';
  if (s < 86400) return Math.floor(s / 3600) + 'h ' + p(Math.floor(s % 3600 / 60)) + 'm';
  return Math.floor(s / 86400) + 'd ' + Math.floor(s % 86400 / 3600) + 'h';
};
const money = (u) => {
  const d = Math.abs(u - Math.round(u * 100) / 100) < 1e-9 ? 2 : 4;
  return '$' + u.toLocaleString('en-US', {minimumFractionDigits: d, maximumFractionDigits: d});
};
const NS = 'http://www.w3.org/2000/svg';
const chart = (svg, series) => {
  const peak = Math.max(1, ...series.map((x) => x[1]));
  const w = W / Math.max(series.length, 1);
  svg.replaceChildren();
  const t = document.createElementNS(NS, 'text');
  t.setAttribute('x', 2); t.setAttribute('y', 10); t.setAttribute('class', 'peak');
  t.textContent = peak + '/min'; svg.appendChild(t);
  series.forEach(([m, n], i) => {
    const h = Math.round(n / peak * (H - 14) * 10) / 10;
    const r = document.createElementNS(NS, 'rect');
    r.setAttribute('x', (i * w).toFixed(1)); r.setAttribute('y', (H - h).toFixed(1));
    r.setAttribute('width', (w - 1).toFixed(1)); r.setAttribute('height', h);
    const tt = document.createElementNS(NS, 'title');
    tt.textContent = new Date(m * 1000).toTimeString().slice(0, 5) + ': ' + n + ' rows';
    r.appendChild(tt); svg.appendChild(r);
  });
};
const rows = (body, list, last) => {
  body.replaceChildren(...list.map((r) => {
    const tr = document.createElement('tr');
    for (const v of [r.id, r.model, r.state || 'completed', dur(r[last])]) {
      const td = document.createElement('td'); td.textContent = v; tr.appendChild(td);
    }
    return tr;
  }));
};
const seen = {};
const set = (root, k, v) => { const el = root.querySelector('[data-k="' + k + '"]');
  if (el) el.textContent = v; };
async function refresh() {
  let d;
  try {
    const r = await fetch('api/batches' + q, {headers: {accept: 'application/json'}});
    if (!r.ok) return;
    d = await r.json();
  } catch (e) { return; }
  const shown = [...document.querySelectorAll('section.batch')].map((s) => s.dataset.batch);
  if (d.batches.map((b) => b.id).join() !== shown.join()) { location.reload(); return; }
  if ((d.halted ? d.halted.reason : '') !== document.body.dataset.halted) {
    location.reload(); return;
  }
  set(document, 'in_flight', d.in_flight);
  document.getElementById('updated').textContent = new Date(d.generated_at * 1000)
    .toLocaleString();
  for (const b of d.batches) {
    const s = document.getElementById('batch-' + b.id);
    const fails = JSON.stringify(b.failures);
    if (b.id in seen && seen[b.id] !== fails) { location.reload(); return; }
    seen[b.id] = fails;
    const ctl = s.querySelector('ul.controls');
    if (ctl && ctl.dataset.controls !== JSON.stringify(b.controls)) {
      location.reload(); return;
    }
    set(s, 'phase', b.phase); set(s, 'finished', b.finished); set(s, 'total', b.total);
    set(s, 'usd', money(b.usd)); set(s, 'rate', b.rate.recent_per_min);
    set(s, 'eta', dur(b.rate.eta_s));
    for (const [k, v] of Object.entries(b.counts)) set(s, 'counts.' + k, v);
    const bar = s.querySelector('progress');
    bar.max = Math.max(b.total, 1); bar.value = b.finished;
    chart(s.querySelector('svg.chart'), b.rate.per_minute);
    rows(s.querySelector('[data-k="slowest.in_flight"]'), b.slowest.in_flight, 'age_s');
    rows(s.querySelector('[data-k="slowest.finished"]'), b.slowest.finished, 'took_s');
  }
}
setInterval(refresh, %d);
})();
""".replace("%d", str(REFRESH_MS))
