// deploykit dashboard: one framework-free script for every /ui page. The server renders a
// shell (<body data-page data-role>, #flash, #main); this script fills #main from the JSON
// API under /api and sends every change to the same routes the CLI uses, with the CSRF
// token of <meta name="csrf-token">. The CSP forbids inline styles and scripts: elements
// are built with createElement, text goes in through textContent, sizes through CSSOM.
(() => {
  'use strict';
  const body = document.body;
  const PAGE = body.dataset.page || '';
  const ROLE = body.dataset.role || 'viewer';
  // Viewers get no mutating control at all; the server refuses them anyway.
  const CAN = ROLE === 'operator' || ROLE === 'admin';
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const CSRF = csrfMeta ? csrfMeta.content : '';
  const main = document.getElementById('main');
  const flashBox = document.getElementById('flash');
  const SVGNS = 'http://www.w3.org/2000/svg';
  const POLL_MS = 5000;
  let skewMs = 0; // server clock minus ours, from the Date header

  // ---- DOM helpers (text only through textContent) ----
  function add(el, kids) {
    for (const kid of kids) {
      if (kid == null || kid === false) continue;
      if (Array.isArray(kid)) add(el, kid);
      else el.appendChild(typeof kid === 'object' ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, v);
    }
    return add(el, kids);
  }
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, v);
    return add(el, kids);
  }
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }
  function fill(el, ...kids) {
    return add(clear(el), kids);
  }
  function setText(el, text) {
    const t = String(text);
    if (el.textContent !== t) el.textContent = t;
  }
  const td = (cls, ...kids) => h('td', { class: cls }, kids);
  // A card section headed by an h2 it is labelled by.
  function card(key, title, attrs, ...kids) {
    return h('section', Object.assign({ class: 'card', 'aria-labelledby': key + '-h' }, attrs), h('h2', { id: key + '-h', text: title }), kids);
  }
  // Tables scroll sideways in their wrapper; one that does is focusable, to scroll by keyboard.
  function wrapTable(table) {
    const wrap = h('div', { class: 'table-wrap', role: 'region', 'aria-label': table.getAttribute('aria-label') || 'Table' }, table);
    const check = () => (wrap.scrollWidth > wrap.clientWidth + 1 ? wrap.setAttribute('tabindex', '0') : wrap.removeAttribute('tabindex'));
    if (typeof ResizeObserver === 'function') new ResizeObserver(check).observe(table);
    return wrap;
  }
  // A table; `stack` ones turn into one block per row on narrow screens (the others scroll).
  function table(id, label, heads, stack) {
    const t = h('table', { id, 'aria-label': label, class: stack ? 'stack' : null },
      h('thead', null, h('tr', null, heads.map((x) => h('th', { scope: 'col', text: x })))),
      h('tbody'));
    return t;
  }
  // Keeps one row per key, updating rows in place so focus and open <details> survive.
  function syncRows(tbody, items, keyOf, attr, make, update) {
    const have = new Map($$(':scope > tr[' + attr + ']', tbody).map((tr) => [tr.getAttribute(attr), tr]));
    const keep = new Set();
    items.forEach((item, i) => {
      const key = String(keyOf(item));
      keep.add(key);
      let tr = have.get(key);
      if (!tr) {
        tr = make(item);
        tr.setAttribute(attr, key);
        // Column names for stacked rows.
        const heads = tbody.parentNode.tHead ? tbody.parentNode.tHead.rows[0].cells : [];
        Array.from(tr.cells).forEach((td, c) => { if (heads[c]) td.dataset.label = heads[c].textContent; });
      }
      update(tr, item);
      const at = tbody.children[i];
      if (at !== tr) tbody.insertBefore(tr, at || null);
    });
    for (const [key, tr] of have) if (!keep.has(key)) tr.remove();
  }

  // ---- formatting ----
  const pad = (n) => String(n).padStart(2, '0');
  function fmtTime(v) {
    if (v == null) return '—';
    const d = new Date(v);
    if (isNaN(d)) return String(v);
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
      pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }
  function fmtClock(ms) {
    const d = new Date(ms);
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }
  function timeEl(v) {
    const d = new Date(v);
    return h('time', { datetime: isNaN(d) ? null : d.toISOString(), text: fmtTime(v) });
  }
  function fmtDur(ms) {
    if (ms == null || !isFinite(ms)) return '—';
    let t = Math.max(0, Math.round(ms / 1000));
    const d = Math.floor(t / 86400), hh = Math.floor((t % 86400) / 3600), m = Math.floor((t % 3600) / 60);
    t %= 60;
    if (d) return d + 'd ' + hh + 'h';
    if (hh) return hh + 'h ' + pad(m) + 'm';
    if (m) return m + 'm ' + pad(t) + 's';
    return t + 's';
  }
  function fmtNum(v, digits) {
    if (v == null || !isFinite(v)) return '—';
    if (v === 0) return '0';
    const a = Math.abs(v);
    if (a >= 1e5 || a < 1e-3) return v.toExponential(2);
    return String(Number(v.toPrecision(digits || 4)));
  }
  const signed = (v) => (v > 0 ? '+' : '') + fmtNum(v);
  const words = (x) => String(x).replace(/_/g, ' ');
  function badge(kind, value, text) {
    return h('span', { class: 'badge ' + kind + '-' + value, text: text == null ? words(value) : text });
  }

  // ---- flash and the API ----
  let flashTimer = 0;
  function flash(message, isError) {
    if (!flashBox) return;
    clearTimeout(flashTimer);
    flashBox.className = isError ? 'error' : 'ok';
    flashBox.textContent = message;
    if (!isError) flashTimer = setTimeout(() => { flashBox.textContent = ''; flashBox.className = ''; }, 8000);
  }
  class ApiFailure extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }
  async function request(method, path, bodyJson, headers) {
    const init = { method, credentials: 'same-origin', headers: Object.assign({ Accept: 'application/json' }, headers || {}) };
    if (method !== 'GET') {
      init.headers['X-CSRF-Token'] = CSRF;
      if (bodyJson !== undefined) {
        init.headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(bodyJson);
      }
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiFailure(0, 'The server does not answer (' + e.message + ')');
    }
    const date = Date.parse(res.headers.get('Date') || '');
    if (!isNaN(date)) skewMs = date - Date.now();
    if (res.status === 401 && method === 'GET') {
      location.assign('/ui/login?next=' + encodeURIComponent(location.pathname));
      throw new ApiFailure(401, 'Signed out');
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    if (!res.ok) {
      const msg = data && data.message ? data.message + (data.field ? ' (field ' + data.field + ')' : '') : res.status + ' ' + res.statusText;
      throw new ApiFailure(res.status, msg);
    }
    return { data, etag: res.headers.get('ETag') };
  }
  const get = (path) => request('GET', path).then((r) => r.data);
  // GET that yields null where the endpoint or record is missing (optional data); with
  // `remember`, a route this server does not have is not asked for again.
  const absent = new Set();
  const maybe = (path, remember) => (absent.has(path) ? Promise.resolve(null) : get(path).catch((e) => {
    if (e.status !== 404 && e.status !== 405) throw e;
    if (remember) absent.add(path);
    return null;
  }));
  // A mutation: the outcome goes to #flash; resolves to the response or null on failure.
  async function mutate(method, path, bodyJson, done, headers) {
    try {
      const r = await request(method, path, bodyJson, headers);
      if (done) flash(typeof done === 'function' ? done(r.data) : done);
      return r;
    } catch (e) {
      flash(e.message, true);
      return null;
    }
  }
  const enc = encodeURIComponent;

  // Runs `load` now and every 5 s; a failure shows once in #flash until a load succeeds.
  function poll(load, every) {
    let failing = false;
    let busy = false;
    let again = false;
    // Asked while a load runs (right after a change): one more load once it ends.
    const run = async () => {
      if (busy) { again = true; return; }
      busy = true;
      try {
        await load();
        if (failing && flashBox && flashBox.classList.contains('error')) flash('Reconnected');
        failing = false;
      } catch (e) {
        if (!failing && e.status !== 401) flash('Could not refresh: ' + e.message, true);
        failing = true;
      } finally {
        busy = false;
        if (again) { again = false; run(); }
      }
    };
    run();
    setInterval(run, every || POLL_MS);
    return run;
  }

  // ---- dialogs ----
  function dialog(id, title, content, actions) {
    const d = h('dialog', { id, 'aria-labelledby': id + '-title' },
      h('h2', { id: id + '-title', text: title }), content, h('div', { class: 'actions' }, actions));
    main.appendChild(d);
    return d;
  }
  function openDialog(d) {
    d.showModal();
    const first = $('textarea, input, button', d);
    if (first) first.focus();
  }
  const closeDialog = (d) => d.close();
  // A yes/no dialog built once; `ask` resolves to true when confirmed.
  let confirmDialog = null;
  function ask(text, yesLabel) {
    if (!confirmDialog) {
      confirmDialog = dialog('confirm', 'Are you sure?', h('p', { id: 'confirm-text' }), [
        h('button', { type: 'button', id: 'confirm-no', text: 'Cancel' }),
        h('button', { type: 'button', id: 'confirm-yes', class: 'danger' }),
      ]);
    }
    const d = confirmDialog;
    setText($('#confirm-text', d), text);
    setText($('#confirm-yes', d), yesLabel);
    const back = document.activeElement;
    return new Promise((resolve) => {
      const finish = (yes) => {
        $('#confirm-yes', d).onclick = null;
        $('#confirm-no', d).onclick = null;
        d.onclose = null;
        if (d.open) closeDialog(d);
        if (back && back.focus) back.focus();
        resolve(yes);
      };
      $('#confirm-yes', d).onclick = () => finish(true);
      $('#confirm-no', d).onclick = () => finish(false);
      d.onclose = () => finish(false); // Escape
      openDialog(d);
    });
  }

  // ---- rollouts: shared pieces ----
  const phaseOf = (st) => (st && st.phase ? (typeof st.phase === 'string' ? st.phase : st.phase.phase) : 'none');
  const reasonOf = (st) => (st && st.phase && typeof st.phase === 'object' ? st.phase.reason || '' : '');
  const ACTIVE = new Set(['progressing', 'rolling_back']);
  // Share of traffic on the new version, in percent (null when it cannot be told).
  function newShare(st) {
    if (!st) return null;
    const phase = phaseOf(st);
    if (phase === 'completed') return 100;
    if (phase === 'rolled_back') return 0;
    const steps = st.steps || [];
    if (st.strategy === 'rolling') {
      // One pool updated in batches: the share of instances updated.
      let total = 0;
      let done = 0;
      steps.forEach((name, i) => {
        const m = /^update instances \d+\.\.=(\d+)$/.exec(name);
        if (!m) return;
        const to = Number(m[1]);
        total = Math.max(total, to);
        if (i < st.step) done = Math.max(done, to);
      });
      if (total) return phase === 'rolling_back' ? null : (done / total) * 100;
    }
    const routing = st.routing;
    if (!routing) return 0;
    const back = phase === 'rolling_back';
    const fresh = new Set(['rev-' + st.revision]);
    const old = new Set();
    for (const name of steps) {
      let m = /^ensure \d+ x (.+) in pool (\S+)$/.exec(name);
      if (m) {
        if (m[1] === st.version && m[1] !== st.previous) fresh.add(m[2]);
        else if (st.previous && m[1] === st.previous) old.add(m[2]);
        continue;
      }
      m = /^retire pool (\S+)$/.exec(name);
      if (m) (back ? fresh : old).add(m[1]);
    }
    const pools = Object.keys(routing);
    const total = pools.reduce((a, p) => a + Number(routing[p] || 0), 0) || 10000;
    let bp = 0;
    let known = false;
    for (const p of pools) if (fresh.has(p)) { bp += Number(routing[p]); known = true; }
    // Pools no step names: new only while going forward (a rollback routes to the old).
    if (!known && !back) {
      for (const p of pools) {
        if (!old.has(p) && p !== 'stable' && !p.endsWith('-baseline')) bp += Number(routing[p]);
      }
    }
    return (bp / total) * 100;
  }
  function weightText(st, pct) {
    if (!st) return 'no rollout yet';
    if (pct == null) return 'weights unknown';
    const n = Math.round(pct * 10) / 10;
    const oldV = st && st.previous ? ' (' + st.previous + ')' : '';
    return 'new' + (st ? ' (' + st.version + ')' : '') + ' ' + n + '% · old' + oldV + ' ' + Math.round((100 - n) * 10) / 10 + '%';
  }
  function setBar(box, st) {
    const pct = newShare(st);
    const p = pct == null ? 0 : Math.max(0, Math.min(100, pct));
    box.dataset.canary = String(Math.round(p));
    const n = $('.bar-new', box);
    const o = $('.bar-old', box);
    n.style.width = p + '%';
    o.style.width = st ? 100 - p + '%' : '0';
    setText($('.bar-label', box), weightText(st, pct));
    const track = $('.bar', box);
    track.setAttribute('aria-valuenow', String(Math.round(p)));
    track.setAttribute('aria-valuetext', weightText(st, pct));
  }
  function weightBar(id) {
    return h('div', id ? { id, class: 'weights' } : { class: 'weights' },
      h('div', { class: 'bar', role: 'meter', 'aria-label': 'Traffic on the new version', 'aria-valuemin': '0', 'aria-valuemax': '100' },
        h('span', { class: 'bar-new' }), h('span', { class: 'bar-old' })),
      h('span', { class: 'bar-label' }));
  }

  // ---- page: rollouts ----
  function pageRollouts() {
    main.append(h('h1', { text: 'Rollouts' }));
    const t = table('rollouts', 'Rollouts by app', ['App', 'Phase', 'Version', 'Strategy', 'Weights', 'Updated'], true);
    const empty = h('p', { class: 'empty', text: 'No app has a rollout yet.', hidden: true });
    const wrap = wrapTable(t);
    main.append(empty, wrap);
    poll(async () => {
      const views = (await get('/api/rollouts')) || [];
      empty.hidden = views.length > 0;
      wrap.hidden = views.length === 0;
      syncRows($('tbody', t), views, (v) => v.app, 'data-app', (v) => h('tr', null,
        td('app', h('a', { href: '/ui/rollouts/' + enc(v.app), text: v.app })),
        td('phase'), td('version'), td('strategy'),
        td('weights', weightBar()), td('updated')), (tr, v) => {
        const st = v.status;
        const phase = phaseOf(st);
        const cell = $('.phase', tr);
        cell.dataset.phase = phase;
        fill(cell, badge('phase', phase, phase === 'none' ? 'not started' : words(phase)),
          st && st.paused ? h('span', { class: 'note', text: ' paused' }) : null,
          v.pending && v.pending.length ? h('span', { class: 'note', text: ' ' + v.pending.length + ' pending' }) : null);
        setText($('.version', tr), st ? st.version + (st.previous ? ' ← ' + st.previous : '') : '—');
        setText($('.strategy', tr), st ? words(st.strategy) : '—');
        setBar($('.weights .weights', tr), st);
        setText($('.updated', tr), st ? fmtTime(st.updated_at_ms) : '—');
      });
    });
  }

  // ---- charts ----
  function extent(values) {
    let lo = Math.min(...values);
    let hi = Math.max(...values);
    if (!isFinite(lo) || !isFinite(hi)) return [0, 1];
    if (lo === hi) {
      const d = Math.abs(lo) * 0.1 || 1;
      lo -= d;
      hi += d;
    }
    const padV = (hi - lo) * 0.08;
    return [lo - padV, hi + padV];
  }
  const mean = (pts) => pts.reduce((a, p) => a + p.value, 0) / pts.length;
  // Canary vs baseline over the window, with the threshold bounds or the judge's shift.
  function analysisChart(series, title, width) {
    const canary = (series.canary || []).filter((p) => isFinite(p.value));
    const baseline = (series.baseline || []).filter((p) => isFinite(p.value));
    const all = canary.concat(baseline);
    if (!all.length) return null;
    const cmp = series.comparison;
    const base = baseline.length ? mean(baseline) : null;
    // Drawn at the width it is shown at, so its text stays readable on a phone.
    const W = Math.round(Math.max(300, Math.min(760, width || 640))), L = 62, R = 12, B = 28;
    const legend = [];
    if (canary.length) legend.push(['canary', 'canary (new)']);
    if (baseline.length) legend.push(['baseline', 'baseline (old)']);
    if (cmp && base != null) legend.push(['band', 'interval of the shift']);
    if (series.max != null || series.min != null) legend.push(['bound', 'bound']);
    let lx = 8, ly = 15;
    const placed = legend.map(([cls, label]) => {
      const w = 32 + label.length * 6.6;
      if (lx > 8 && lx + w > W) { lx = 8; ly += 18; }
      const at = [cls, label, lx, ly];
      lx += w;
      return at;
    });
    const T = ly + 16, H = T + 190 + B;
    const ys = all.map((p) => p.value);
    if (series.min != null) ys.push(series.min);
    if (series.max != null) ys.push(series.max);
    if (cmp && base != null) ys.push(base + cmp.low, base + cmp.high, base + cmp.tolerance);
    const [y0, y1] = extent(ys);
    let x0 = Math.min(...all.map((p) => p.at_ms));
    let x1 = Math.max(...all.map((p) => p.at_ms));
    if (x0 === x1) { x0 -= 1000; x1 += 1000; }
    const X = (t) => L + ((t - x0) / (x1 - x0)) * (W - L - R);
    const Y = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
    const svg = s('svg', { class: 'chart', viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': title });
    svg.append(s('rect', { class: 'plot', x: L, y: T, width: W - L - R, height: H - T - B }));
    // Axis labels: value range and time range.
    svg.append(
      s('text', { class: 'axis', x: L - 6, y: T + 4, 'text-anchor': 'end' }, fmtNum(y1, 3)),
      s('text', { class: 'axis', x: L - 6, y: H - B, 'text-anchor': 'end' }, fmtNum(y0, 3)),
      s('text', { class: 'axis', x: L, y: H - 8 }, fmtClock(x0)),
      s('text', { class: 'axis', x: W - R, y: H - 8, 'text-anchor': 'end' }, fmtClock(x1)));
    const hline = (v, cls, label, left) => {
      const y = Y(v);
      svg.append(s('line', { class: cls, x1: L, x2: W - R, y1: y, y2: y }),
        s('text', { class: 'mark ' + cls, x: left ? L + 4 : W - R - 4, y: y - 4, 'text-anchor': left ? 'start' : 'end' }, label));
    };
    if (cmp && base != null) {
      // The interval of the shift, drawn around the baseline's mean.
      const a = Y(base + cmp.high), b = Y(base + cmp.low);
      svg.append(s('rect', { class: 'band', x: L, y: Math.min(a, b), width: W - L - R, height: Math.max(1, Math.abs(b - a)) }));
      hline(base + cmp.shift, 'shift', 'shift ' + signed(cmp.shift));
      hline(base + cmp.tolerance, 'tolerance', 'tolerance +' + fmtNum(cmp.tolerance), true);
      if (cmp.tolerance > 0 && base - cmp.tolerance >= y0) hline(base - cmp.tolerance, 'tolerance', 'tolerance −' + fmtNum(cmp.tolerance), true);
    }
    if (series.max != null) hline(series.max, 'bound', 'max ' + fmtNum(series.max));
    if (series.min != null) hline(series.min, 'bound', 'min ' + fmtNum(series.min));
    const line = (pts, cls) => {
      if (!pts.length) return;
      const sorted = pts.slice().sort((p, q) => p.at_ms - q.at_ms);
      if (sorted.length === 1) svg.append(s('circle', { class: cls, cx: X(sorted[0].at_ms), cy: Y(sorted[0].value), r: 4 }));
      else svg.append(s('polyline', { class: cls, points: sorted.map((p) => X(p.at_ms).toFixed(1) + ',' + Y(p.value).toFixed(1)).join(' ') }));
    };
    line(baseline, 'baseline');
    line(canary, 'canary');
    for (const [cls, label, x, y] of placed) {
      svg.append(s('g', { class: 'legend' },
        cls === 'band' ? s('rect', { class: 'band', x, y: y - 5, width: 18, height: 10 }) : s('line', { class: cls, x1: x, x2: x + 18, y1: y, y2: y }),
        s('text', { x: x + 23, y: y + 4 }, label)));
    }
    return svg;
  }
  function sparkline(points, intervalMs) {
    if (!points || !points.length) return null;
    const W = 320, H = 56, P = 3;
    const max = Math.max(1, ...points.map((p) => p.evaluations || 0));
    const n = points.length;
    const X = (i) => P + (n === 1 ? (W - 2 * P) / 2 : (i / (n - 1)) * (W - 2 * P));
    const Y = (v) => H - P - (v / max) * (H - 2 * P);
    const line = points.map((p, i) => X(i).toFixed(1) + ',' + Y(p.evaluations || 0).toFixed(1)).join(' ');
    const total = points.reduce((a, p) => a + (p.evaluations || 0), 0);
    const svg = s('svg', { class: 'sparkline', viewBox: '0 0 ' + W + ' ' + H, preserveAspectRatio: 'none', role: 'img',
      'aria-label': total + ' evaluations over ' + fmtDur(n * (intervalMs || 0)) + ', at most ' + max + ' per ' + fmtDur(intervalMs) });
    svg.append(s('polygon', { class: 'area', points: X(0).toFixed(1) + ',' + (H - P) + ' ' + line + ' ' + X(n - 1).toFixed(1) + ',' + (H - P) }));
    svg.append(s('polyline', { class: 'evals', points: line }));
    if (points.some((p) => p.enabled != null)) {
      svg.append(s('polyline', { class: 'enabled', points: points.map((p, i) => X(i).toFixed(1) + ',' + Y(p.enabled || 0).toFixed(1)).join(' ') }));
    }
    return svg;
  }

  // ---- page: one rollout ----
  const ACTIONS = [
    ['pause', 'Pause'], ['resume', 'Resume'], ['promote', 'Promote'],
    ['promote-full', 'Promote fully'], ['abort', 'Abort'], ['undo', 'Undo'],
  ];
  function applicable(action, st) {
    const phase = phaseOf(st);
    const running = phase === 'progressing';
    const paused = st && st.paused;
    switch (action) {
      case 'pause': return running && !(paused && paused.kind === 'operator');
      case 'resume': return running && !!paused && (paused.kind === 'operator' || paused.kind === 'inconclusive_analysis');
      case 'promote':
      case 'promote-full':
      case 'abort': return running;
      case 'undo': return running || (!!st && !ACTIVE.has(phase) && !!st.previous);
      default: return false;
    }
  }
  function pageRollout() {
    const app = body.dataset.app || decodeURIComponent(location.pathname.split('/').pop());
    const base = '/api/rollouts/' + enc(app);
    let current = null;
    let history = [];
    let lastPhase = '';
    let pauseUntil = null;

    const liveEl = h('span', { class: 'live' });
    // Screen readers hear the phase change as the rollout moves.
    const phaseEl = h('span', { id: 'phase', 'data-phase': 'none', class: 'badge', text: 'none', 'aria-live': 'polite' });
    const reasonEl = h('span', { id: 'phase-reason', class: 'note' });
    const versionEl = h('span', { id: 'version', text: '—' });
    const previousEl = h('span', { id: 'previous', class: 'note' });
    const strategyEl = h('span', { id: 'strategy', text: '—' });
    const weights = weightBar('weights');
    const pendingEl = h('ul', { id: 'pending', class: 'pending', hidden: true });
    const pauseEl = h('div', { id: 'pause', class: 'pause', hidden: true, role: 'status' },
      h('strong', { text: 'Paused: ' }), h('span', { id: 'pause-reason' }), ' · ', h('span', { id: 'time-left' }));
    const steps = h('ol', { id: 'steps', class: 'steps' });
    const noSteps = h('p', { class: 'note', text: 'No steps published yet.' });
    const outcome = h('p', { id: 'analysis-outcome', 'data-outcome': 'none' });
    const metrics = h('div', { class: 'metrics' });
    const analysis = h('section', { id: 'analysis', 'aria-labelledby': 'analysis-h' },
      h('h2', { id: 'analysis-h', text: 'Analysis' }), outcome, metrics);
    const hist = table('history', 'Revision history', ['Revision', 'Version', 'Previous', 'Strategy', 'Outcome', 'Started', 'Took']);
    const histEmpty = h('p', { class: 'empty-history note', text: 'No finished rollout yet.' });
    const histWrap = wrapTable(hist);
    let summary;

    main.append(
      h('p', { class: 'crumbs' }, h('a', { href: '/ui/rollouts', text: 'Rollouts' }), ' / ' + app, ' ', liveEl),
      h('h1', null, 'Rollout of ', h('span', { class: 'app-name', text: app })),
      summary = h('section', { class: 'card summary', 'aria-label': 'Status' },
        h('dl', { class: 'facts' },
          h('div', null, h('dt', { text: 'Phase' }), h('dd', null, phaseEl, ' ', reasonEl)),
          h('div', null, h('dt', { text: 'Version' }), h('dd', null, versionEl, ' ', previousEl)),
          h('div', null, h('dt', { text: 'Strategy' }), h('dd', null, strategyEl)),
          h('div', null, h('dt', { text: 'Updated' }), h('dd', { id: 'updated', text: '—' }))),
        weights, pauseEl, pendingEl));

    let controls = null;
    let startForm = null;
    if (CAN) {
      controls = h('div', { id: 'controls', class: 'controls', role: 'group', 'aria-label': 'Rollout controls' },
        ACTIONS.map(([action, label]) => h('button', {
          type: 'button', 'data-action': action, disabled: true, text: label,
          class: action === 'abort' || action === 'undo' ? 'danger' : null,
          onclick: () => act(action, label),
        })));
      const input = h('input', { id: 'start-version', name: 'version', required: true, autocomplete: 'off', spellcheck: 'false' });
      startForm = h('form', { id: 'start', class: 'inline-form', onsubmit: async (e) => {
        e.preventDefault();
        const version = input.value.trim();
        if (!version) return;
        const btn = $('button', startForm);
        btn.disabled = true;
        const r = await mutate('POST', base + '/start', { version }, 'Asked to roll out ' + version + '; the deployer takes it from here');
        btn.disabled = false;
        if (r) { input.value = ''; refresh(); }
      } }, h('label', { for: 'start-version', text: 'Roll out version' }), input, h('button', { type: 'submit', text: 'Start' }));
      summary.append(h('div', { class: 'act-row' }, controls, startForm));
    }
    main.append(
      h('div', { class: 'split' },
        card('steps', 'Steps', null, steps, noSteps),
        h('div', { class: 'card' }, analysis)),
      card('history', 'History', null, histEmpty, histWrap));

    async function act(action, label) {
      if (action === 'abort' || action === 'undo') {
        const what = action === 'abort'
          ? 'Abort the rollout of ' + app + ' and roll back to ' + ((current && current.previous) || 'the previous version') + '?'
          : 'Undo: go back to ' + app + "'s previous version" + (current && current.previous ? ' (' + current.previous + ')' : '') + '?';
        if (!(await ask(what, label))) return;
      }
      const btn = $('[data-action="' + action + '"]', controls);
      btn.disabled = true;
      await mutate('POST', base + '/' + action, undefined, (rec) => label + ' asked' + (rec && rec.id ? ' (intent #' + rec.id + ')' : '') + '; waiting for the deployer');
      refresh();
    }

    function renderSteps(st) {
      const names = (st && st.steps) || [];
      const phase = phaseOf(st);
      const at = st ? st.step : -1;
      const ended = !ACTIVE.has(phase);
      const lis = $$(':scope > li', steps);
      names.forEach((name, i) => {
        let li = lis[i];
        if (!li) {
          li = h('li', null, h('span', { class: 'step-state' }), h('span', { class: 'step-name' }));
          steps.append(li);
        }
        const done = i < at || (ended && phase === 'completed');
        const cur = !ended && i === at;
        li.className = done ? 'done' : cur ? 'current' : 'todo';
        if (cur) li.setAttribute('aria-current', 'step'); else li.removeAttribute('aria-current');
        setText($('.step-state', li), done ? 'done' : cur ? (st.paused ? 'paused' : 'now') : 'next');
        setText($('.step-name', li), name);
      });
      lis.slice(names.length).forEach((li) => li.remove());
      noSteps.hidden = names.length > 0;
    }

    function renderAnalysis(st) {
      const rec = st && st.last_analysis;
      const result = rec && rec.result;
      const out = result ? result.outcome : 'none';
      outcome.dataset.outcome = out;
      fill(outcome, result
        ? [badge('outcome', out), ' · ', h('span', { class: 'step-ref', text: rec.step })]
        : 'No analysis has run in this rollout yet.');
      // Charts are rebuilt only when the data changed (keeps scroll and avoids flicker).
      const key = JSON.stringify(result || null);
      if (metrics.dataset.key === key) return;
      metrics.dataset.key = key;
      clear(metrics);
      for (const m of (result && result.metrics) || []) {
        const ms = m.measurements || [];
        const last = ms[ms.length - 1];
        let series = null;
        for (let i = ms.length - 1; i >= 0 && !series; i--) if (ms[i].series) series = ms[i].series;
        const chart = series ? analysisChart(series, m.name + ': canary vs baseline', metrics.clientWidth) : null;
        const cap = h('figcaption', null, h('strong', { text: m.name }), ' ', badge('outcome', m.outcome),
          m.dry_run ? h('span', { class: 'note', text: ' (dry run: reported, does not decide)' }) : null,
          ' · ' + ms.length + ' measurement' + (ms.length === 1 ? '' : 's'));
        if (series && series.comparison) {
          const c = series.comparison;
          cap.append(h('span', { class: 'judge' }, '. Shift of the canary against the baseline: ' + signed(c.shift) +
            ', interval ' + fmtNum(c.low) + ' to ' + fmtNum(c.high) + ', tolerance ' + fmtNum(c.tolerance) + '.'));
        } else if (series && (series.max != null || series.min != null)) {
          cap.append(h('span', { class: 'judge' }, '. Bound: ' + [series.min != null ? 'min ' + fmtNum(series.min) : '',
            series.max != null ? 'max ' + fmtNum(series.max) : ''].filter(Boolean).join(', ') + '.'));
        }
        if (last) cap.append(h('span', { class: 'detail' }, ' Last: ' + last.detail));
        if (!chart) cap.append(h('span', { class: 'note' }, ' (no series to chart)'));
        metrics.append(h('figure', { class: 'metric', 'data-metric': m.name, 'data-outcome': m.outcome }, chart, cap));
      }
    }

    function tick() {
      const left = $('#time-left', pauseEl);
      if (pauseUntil == null) { setText(left, 'no time limit: waits for an operator'); return; }
      const ms = pauseUntil - (Date.now() + skewMs);
      setText(left, ms > 0 ? fmtDur(ms) + ' left' : 'ending now');
    }

    function render(view) {
      const st = view.status;
      current = st;
      const phase = phaseOf(st);
      phaseEl.dataset.phase = phase;
      phaseEl.className = 'badge phase-' + phase;
      setText(phaseEl, phase);
      setText(reasonEl, reasonOf(st));
      setText(versionEl, st ? st.version : (view.pending.find((p) => p.intent && p.intent.version) || { intent: { version: '—' } }).intent.version);
      setText(previousEl, st && st.previous ? 'replacing ' + st.previous : '');
      setText(strategyEl, st ? st.strategy : '—');
      setText($('#updated'), st ? fmtTime(st.updated_at_ms) + (st.holder ? ' by ' + st.holder : '') : '—');
      setBar(weights, st);
      const pause = st && st.paused;
      pauseEl.hidden = !pause;
      if (pause) {
        setText($('#pause-reason', pauseEl), pause.reason);
        pauseEl.dataset.kind = pause.kind;
      }
      pauseUntil = pause && pause.until_ms != null ? pause.until_ms : null;
      tick();
      const pending = view.pending || [];
      pendingEl.hidden = !pending.length;
      fill(pendingEl, pending.map((p) => h('li', null, 'Pending: ' + words(p.intent.intent) + (p.intent.version ? ' ' + p.intent.version : '') +
        ' by ' + p.actor + ' at ' + fmtTime(p.requested_at_ms) + ', waiting for the deployer')));
      renderSteps(st);
      renderAnalysis(st);
      if (controls) {
        for (const b of $$('button[data-action]', controls)) b.disabled = !applicable(b.dataset.action, st);
        $('button', startForm).disabled = ACTIVE.has(phase);
      }
    }

    function renderHistory() {
      histEmpty.hidden = history.length > 0;
      histWrap.hidden = !history.length;
      syncRows($('tbody', hist), history, (e) => e.revision, 'data-revision', () => h('tr', null,
        td('revision'), td('version'), td('previous'), td('strategy'),
        td('outcome'), td('started'), td('took')), (tr, e) => {
        const o = e.report && e.report.outcome ? e.report.outcome : {};
        setText($('.revision', tr), '#' + e.revision);
        setText($('.version', tr), e.version);
        setText($('.previous', tr), e.previous || '—');
        setText($('.strategy', tr), e.strategy);
        fill($('.outcome', tr), badge('phase', o.outcome || 'unknown'), o.reason ? h('span', { class: 'note', text: ' ' + o.reason }) : null);
        fill($('.started', tr), timeEl(e.started_at_ms));
        setText($('.took', tr), fmtDur(e.ended_at_ms - e.started_at_ms));
      });
    }

    // The history changes when a rollout ends: read it on each poll and when the phase moves.
    let asked = 0;
    let shown = 0;
    async function loadStatus(withHistory) {
      // An SSE refetch and a poll may cross: never render an older answer over a newer one.
      const mine = ++asked;
      const view = await get(base);
      if (mine < shown) return;
      shown = mine;
      render(view);
      const phase = phaseOf(view.status) + ':' + (view.status ? view.status.revision : '');
      if (phase !== lastPhase || withHistory) {
        lastPhase = phase;
        await loadHistory();
      }
    }
    async function loadHistory() {
      history = (await get(base + '/history')) || [];
      renderHistory();
    }
    const refresh = poll(() => loadStatus(true));
    setInterval(tick, 1000);
    // Live: each stored event means a new status; a burst is one refetch.
    let debounce = 0;
    const soon = () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => loadStatus().catch(() => {}), 150);
    };
    if (typeof EventSource === 'function') {
      const es = new EventSource(base + '/events');
      es.addEventListener('deployment', soon);
      es.onmessage = soon;
      const live = (on) => {
        body.dataset.live = String(on);
        setText(liveEl, on ? 'live' : 'reconnecting (refreshing every 5 s)');
        liveEl.className = 'live badge ' + (on ? 'state-on' : 'state-off');
      };
      es.onopen = () => live(true);
      es.onerror = () => live(false);
    }
  }

  // ---- flags: shared pieces ----
  function rollouts(def) {
    return (def.rules || []).filter((r) => r.rollout && !r.disabled).map((r) => r.rollout.percentage);
  }
  function rolloutText(def) {
    const p = rollouts(def);
    return p.length ? p.map((x) => x + '%').join(', ') : '—';
  }
  function variantsText(def) {
    const v = def.variants || [];
    return v.length ? v.map((x) => x.name + (x.weight != null ? ' ' + x.weight : '')).join(', ') : '—';
  }
  // Environments named by the rules' `environment IN (...)` constraints, with whether the
  // flag is on there (enabled, and some live rule lets callers of that environment in).
  function environments(def) {
    const envs = new Map();
    for (const rule of def.rules || []) {
      for (const c of rule.constraints || []) {
        if (c.contextName !== 'environment' || c.inverted) continue;
        if (c.operator !== 'IN') continue;
        for (const e of c.values || []) {
          const on = def.enabled && !rule.disabled && (!rule.rollout || rule.rollout.percentage > 0);
          envs.set(e, (envs.get(e) || false) || on);
        }
      }
    }
    return envs;
  }
  const envBadges = (def) => Array.from(environments(def), ([env, on]) =>
    [' ', h('span', { class: 'env env-' + (on ? 'on' : 'off'), 'data-env': env, text: env + ': ' + (on ? 'on' : 'off') })]);
  const stateCell = (cell, def) => fill(cell, badge('state', def.enabled ? 'on' : 'off'), envBadges(def));
  // The on/off switch of a flag; `after` gets the new definition and ETag.
  function toggle(name, after) {
    const input = h('input', { type: 'checkbox', class: 'toggle', role: 'switch', 'aria-label': 'Enable ' + name });
    input.addEventListener('change', async () => {
      const on = input.checked;
      // Disabling the switch during the request drops its focus: give it back after.
      const focused = document.activeElement === input;
      input.disabled = true;
      const r = await mutate('POST', '/api/flags/' + enc(name) + '/' + (on ? 'enable' : 'disable'), undefined, name + (on ? ' enabled' : ' disabled'));
      input.disabled = false;
      if (!r) input.checked = !on;
      else if (after) after(r);
      if (focused && input.isConnected) input.focus();
    });
    return input;
  }
  // Follows the flag unless a change from this page is under way.
  function setToggle(input, on) {
    if (input && !input.disabled) input.checked = on;
  }

  // ---- page: flags ----
  function pageFlags() {
    main.append(h('h1', { text: 'Feature flags' }));
    const search = h('input', { type: 'search', id: 'flag-search', autocomplete: 'off', placeholder: 'name or description' });
    const heads = ['Name', 'State', 'Rollout', 'Variants'];
    if (CAN) heads.push('Enabled');
    const t = table('flags', 'Feature flags', heads, true);
    const none = h('p', { class: 'empty', hidden: true, text: 'No flags.' });
    const nomatch = h('p', { class: 'note', hidden: true, text: 'No flag matches the search.' });
    const staleList = h('ul', { class: 'stale-list' });
    main.append(
      h('div', { class: 'search' }, h('label', { for: 'flag-search', text: 'Search flags' }), search),
      none, nomatch, wrapTable(t),
      card('stale', 'Stale flags', { id: 'stale' },
        h('p', { class: 'note', text: 'Probably safe to remove from code: never evaluated in 30 days, or on for everyone and unchanged since.' }),
        staleList));
    const filter = () => {
      const q = search.value.trim().toLowerCase();
      let shown = 0;
      for (const tr of $$('tbody tr', t)) {
        const hit = !q || (tr.dataset.search || '').includes(q);
        tr.hidden = !hit;
        if (hit) shown++;
      }
      nomatch.hidden = !(q && shown === 0 && t.tBodies[0].rows.length);
    };
    search.addEventListener('input', filter);
    const load = async () => {
      const [defs, stale] = await Promise.all([get('/api/flags'), maybe('/api/flags-stale')]);
      none.hidden = (defs || []).length > 0;
      syncRows($('tbody', t), defs || [], (d) => d.name, 'data-flag', (d) => h('tr', null,
        td('name', h('a', { href: '/ui/flags/' + enc(d.name), text: d.name }), h('div', { class: 'desc note' })),
        td('state'), td('rollout'), td('variants'),
        CAN ? td('switch', toggle(d.name, () => load().catch(() => {}))) : null), (tr, d) => {
        tr.dataset.search = (d.name + ' ' + (d.description || '')).toLowerCase();
        setText($('.desc', tr), d.description || '');
        stateCell($('.state', tr), d);
        setText($('.rollout', tr), rolloutText(d));
        setText($('.variants', tr), variantsText(d));
        setToggle($('input.toggle', tr), !!d.enabled);
      });
      filter();
      if (stale) {
        fill(staleList, stale.length ? stale.map((f) => {
          const r = f.reason;
          const why = typeof r === 'string' ? words(r)
            : r && r.fully_rolled_out ? 'fully rolled out since ' + fmtTime(r.fully_rolled_out.since) : words(Object.keys(r || {})[0] || '');
          return h('li', { 'data-flag': f.flag }, h('a', { href: '/ui/flags/' + enc(f.flag), text: f.flag }), ': ' + why);
        }) : h('li', { class: 'note', text: 'No stale flags.' }));
      }
    };
    poll(load);
  }

  // ---- page: one flag ----
  function auditSummary(e) {
    const a = e.before || {};
    const b = e.after || {};
    const out = [];
    if (!e.before) return 'created' + (b.enabled ? ', on' : ', off');
    if (!e.after) return 'deleted';
    if (a.enabled !== b.enabled) out.push(b.enabled ? 'turned on' : 'turned off');
    const ra = rolloutText(a), rb = rolloutText(b);
    if (ra !== rb) out.push('rollout ' + ra + ' → ' + rb);
    if (JSON.stringify(a.rules || []) !== JSON.stringify(b.rules || []) && ra === rb) out.push('rules changed');
    if (JSON.stringify(a.variants || []) !== JSON.stringify(b.variants || [])) out.push('variants ' + variantsText(a) + ' → ' + variantsText(b));
    if ((a.description || '') !== (b.description || '')) out.push('description changed');
    return out.join('; ') || 'no visible change';
  }
  function ruleText(r) {
    const parts = (r.constraints || []).map((c) => c.contextName + ' ' + (c.inverted ? 'NOT ' : '') + c.operator + ' ' +
      (c.values && c.values.length ? c.values.join(', ') : c.value || ''));
    if (r.segments && r.segments.length) parts.push('segments ' + r.segments.join(', '));
    if (r.rollout) parts.push(r.rollout.percentage + '% of callers');
    return (r.name ? r.name + ': ' : '') + (parts.join(' and ') || 'everyone') + (r.disabled ? ' (rule disabled)' : '');
  }
  function pageFlag() {
    const name = body.dataset.flag || decodeURIComponent(location.pathname.split('/').pop());
    const base = '/api/flags/' + enc(name);
    let etag = null;
    let refresh = () => {};
    const stateEl = h('span', { id: 'flag-state', 'data-enabled': 'false', class: 'badge', text: 'off' });
    const desc = h('p', { class: 'desc' });
    const envs = h('span', { class: 'envs' });
    const rules = h('ul', { id: 'rules' });
    const variants = h('div', { id: 'variants' });
    const evals = h('span', { id: 'evaluations', text: '—' });
    const spark = h('div', { class: 'spark' });
    const usage = card('usage', 'Evaluations', { id: 'usage', hidden: true }, spark, h('p', null, evals),
      h('p', { class: 'note', text: 'Solid line: evaluations per interval; dashed: those that found the flag on.' }));
    const audit = table('audit', 'Audit trail', ['Revision', 'When', 'Who', 'Action', 'Change']);
    main.append(
      h('p', { class: 'crumbs' }, h('a', { href: '/ui/flags', text: 'Flags' }), ' / ' + name),
      h('h1', null, 'Flag ', h('span', { class: 'flag-name', text: name })), desc);
    const sw = CAN ? toggle(name, (r) => { etag = r.etag || etag; render(r.data); refresh(); }) : null;
    const head = h('section', { class: 'card', 'aria-label': 'State' },
      h('p', { class: 'state-line' }, 'State: ', stateEl, ' ', envs, sw ? h('span', { class: 'switch' }, ' ', sw) : null),
      h('h2', { text: 'Rules' }), rules);
    let pct = null;
    if (CAN) {
      pct = h('input', { id: 'rollout-percentage', name: 'percentage', type: 'number', min: '0', max: '100', step: '1', required: true, inputmode: 'numeric' });
      pct.addEventListener('input', () => { pct.dataset.dirty = '1'; });
      const form = h('form', { id: 'rollout-form', class: 'inline-form', onsubmit: async (e) => {
        e.preventDefault();
        const v = Number(pct.value);
        if (!Number.isInteger(v) || v < 0 || v > 100) { flash('The rollout percentage is a whole number from 0 to 100', true); return; }
        const r = await mutate('PUT', base + '/rollout', { percentage: v }, name + ' rolls out to ' + v + '% of callers', etag ? { 'If-Match': etag } : null);
        if (r) { delete pct.dataset.dirty; etag = r.etag || etag; render(r.data); }
        refresh(); // after a refusal too: a 409 means the flag changed, read it again
      } }, h('label', { for: 'rollout-percentage', text: 'Rollout percentage' }), pct, h('button', { type: 'submit', text: 'Set rollout' }));
      head.append(form);
    }
    const user = h('input', { id: 'evaluate-user', name: 'userId', autocomplete: 'off' });
    const env = h('input', { id: 'evaluate-env', name: 'environment', autocomplete: 'off' });
    const result = h('output', { id: 'evaluate-result', for: 'evaluate-user', 'aria-live': 'polite' });
    const reason = h('span', { id: 'evaluate-reason', class: 'note' });
    const evalForm = h('form', { id: 'evaluate-form', class: 'inline-form', onsubmit: async (e) => {
      e.preventDefault();
      const context = {};
      if (user.value.trim()) context.userId = user.value.trim();
      if (env.value.trim()) context.environment = env.value.trim();
      try {
        const r = (await request('POST', base + '/evaluate', { context })).data;
        result.parentNode.hidden = false;
        result.className = 'badge state-' + (r.enabled ? 'on' : 'off');
        result.textContent = (r.enabled ? 'on' : 'off') + (r.variant ? ' (variant ' + r.variant.name + ')' : '');
        setText(reason, ' reason: ' + r.reason + (r.variant && r.variant.payload ? ', payload ' + r.variant.payload : ''));
        loadUsage().catch(() => {});
      } catch (err) {
        result.className = '';
        result.textContent = '';
        flash(err.message, true);
      }
    } }, h('label', { for: 'evaluate-user', text: 'User id' }), user, h('label', { for: 'evaluate-env', text: 'Environment (optional)' }), env,
    h('button', { type: 'submit', text: 'Evaluate' }), h('span', { class: 'result', hidden: true }, 'Result: ', result, reason));
    main.append(head,
      h('div', { class: 'split' },
        card('variants', 'Variants', null, variants),
        usage),
      card('eval', 'Try it', null, evalForm),
      card('audit', 'Audit trail', null, wrapTable(audit)));

    function render(def) {
      if (!def) return;
      stateEl.dataset.enabled = String(!!def.enabled);
      stateEl.className = 'badge state-' + (def.enabled ? 'on' : 'off');
      setText(stateEl, def.enabled ? 'on' : 'off');
      setText(desc, def.description || '');
      fill(envs, envBadges(def));
      setToggle(sw, !!def.enabled);
      const rl = def.rules || [];
      const key = JSON.stringify([rl, def.variants || [], def.off_variant || null]);
      if (rules.dataset.key !== key) {
        rules.dataset.key = key;
        fill(rules, rl.length ? rl.map((r) => h('li', { text: ruleText(r) })) : h('li', { text: def.enabled ? 'No rules: on for everyone.' : 'No rules.' }));
        const v = def.variants || [];
        const total = v.reduce((a, x) => a + (x.weight || 0), 0);
        fill(variants, v.length ? h('ul', null, v.map((x) => h('li', { 'data-variant': x.name },
          h('strong', { text: x.name }), ' weight ' + (x.weight || 0) + (total ? ' (' + Math.round(((x.weight || 0) / total) * 100) + '%)' : ''),
          x.payload ? h('code', { text: ' ' + x.payload.type + ': ' + x.payload.value }) : null))) : h('p', { class: 'note', text: 'No variants: callers get on or off.' }),
        def.off_variant ? h('p', { class: 'note', text: 'Off variant: ' + def.off_variant }) : null);
      }
      // The field follows the flag only when the flag's percentage changed and nobody is
      // typing in it.
      const p = rollouts(def);
      const shown = p.length ? String(p[0]) : '100';
      if (pct && pct.dataset.shown !== shown && !pct.dataset.dirty && document.activeElement !== pct) {
        pct.value = shown;
        pct.dataset.shown = shown;
      }
    }
    async function loadUsage() {
      const u = await maybe(base + '/usage', true);
      const pts = u && Array.isArray(u.points) ? u.points : null;
      usage.hidden = !pts;
      if (!pts) return;
      const total = pts.reduce((a, p) => a + (p.evaluations || 0), 0);
      const on = pts.reduce((a, p) => a + (p.enabled || 0), 0);
      setText(evals, total + ' evaluations in the last ' + fmtDur(pts.length * (u.interval_ms || 0)) + (total ? ', ' + on + ' on' : ''));
      fill(spark, sparkline(pts, u.interval_ms) || h('p', { class: 'note', text: 'No evaluations recorded yet.' }));
    }
    refresh = poll(async () => {
      const [flag, log] = await Promise.all([request('GET', base), maybe(base + '/audit')]);
      etag = flag.etag || etag;
      render(flag.data);
      syncRows($('tbody', audit), (log || []).slice().reverse(), (e) => e.revision, 'data-revision', () => h('tr', null,
        td('revision'), td('at'), td('actor'), td('action'), td('change')), (tr, e) => {
        setText($('.revision', tr), e.revision);
        fill($('.at', tr), timeEl(e.at));
        setText($('.actor', tr), e.actor);
        setText($('.action', tr), words(e.action));
        setText($('.change', tr), auditSummary(e));
      });
      await loadUsage().catch(() => { usage.hidden = true; });
    });
  }

  // ---- page: incidents ----
  const SEVERITY_ORDER = { critical: 0, warning: 1, info: 2 };
  function splitMatchers(text) {
    // Commas inside quotes belong to a value.
    return text.split(/,(?=(?:[^"]*"[^"]*")*[^"]*$)/).map((x) => x.trim()).filter(Boolean);
  }
  function pageIncidents() {
    main.append(h('h1', { text: 'Incidents and alerts' }));
    const stats = h('dl', { class: 'facts stats' },
      h('div', null, h('dt', { text: 'Open' }), h('dd', { id: 'open-count', text: '—' })),
      h('div', null, h('dt', { text: 'Acknowledged' }), h('dd', { id: 'ack-count', text: '—' })),
      h('div', null, h('dt', { text: 'Resolved' }), h('dd', { id: 'resolved-count', text: '—' })),
      h('div', null, h('dt', { title: 'Mean time to acknowledge' }, h('abbr', { title: 'Mean time to acknowledge', text: 'MTTA' })), h('dd', { id: 'mtta', text: '—' })),
      h('div', null, h('dt', null, h('abbr', { title: 'Mean time to resolve', text: 'MTTR' })), h('dd', { id: 'mttr', text: '—' })));
    const heads = ['Severity', 'Status', 'Incident'];
    if (CAN) heads.push('Actions');
    const t = table('incidents', 'Incidents', heads, true);
    const noInc = h('p', { class: 'note', hidden: true, text: 'No incidents.' });
    const incWrap = wrapTable(t);
    const groups = h('div', { class: 'groups' });
    const sil = table('silence-list', 'Silences', ['Matchers', 'State', 'Until', 'By', 'Comment'].concat(CAN ? ['Action'] : []), true);
    const noSil = h('p', { class: 'note', hidden: true, text: 'No silences.' });
    const silWrap = wrapTable(sil);
    main.append(h('section', { class: 'card', 'aria-label': 'Statistics' }, stats),
      card('inc', 'Incidents', null, noInc, incWrap),
      card('alerts', 'Firing alerts', { id: 'alerts' }, groups));
    const silSection = card('sil', 'Silences', { id: 'silences' }, noSil, silWrap);
    main.append(silSection);

    let resolveDialog = null;
    let resolving = null;
    let matchers = null;
    if (CAN) {
      const text = h('textarea', { id: 'resolution', name: 'summary', rows: '4', required: true });
      resolveDialog = dialog('resolve-dialog', 'Resolve incident', [
        h('p', { id: 'resolve-title', class: 'note' }),
        h('label', { for: 'resolution', text: 'Resolution summary: what was done' }), text,
      ], [
        h('button', { type: 'button', id: 'resolve-cancel', text: 'Cancel', onclick: () => closeDialog(resolveDialog) }),
        h('button', { type: 'button', id: 'resolve-confirm', text: 'Resolve', onclick: async () => {
          const summary = text.value.trim();
          if (!summary) { flash('Write what was done before resolving', true); text.focus(); return; }
          const id = resolving;
          closeDialog(resolveDialog);
          const r = await mutate('POST', '/api/incidents/' + enc(id) + '/resolve', { summary }, 'Incident ' + id + ' resolved');
          if (r) text.value = '';
          refresh();
        } }),
      ]);
      resolveDialog.addEventListener('close', () => {
        const btn = resolving && $('tr[data-incident="' + CSS.escape(resolving) + '"] button[data-action="resolve"]', t);
        if (btn && !btn.disabled) btn.focus();
      });
      matchers = h('input', { id: 'silence-matchers', name: 'matchers', required: true, placeholder: 'alertname=HighErrorRate,app=shop', autocomplete: 'off', spellcheck: 'false' });
      const duration = h('input', { id: 'silence-duration', name: 'duration', type: 'number', min: '1', step: '1', value: '60', required: true });
      const comment = h('input', { id: 'silence-comment', name: 'comment', required: true, autocomplete: 'off' });
      const form = h('form', { id: 'silence-form', class: 'stack-form', onsubmit: async (e) => {
        e.preventDefault();
        const list = splitMatchers(matchers.value);
        const minutes = Number(duration.value);
        if (!list.length) { flash('Give at least one matcher, like alertname=HighErrorRate', true); return; }
        if (!(minutes > 0)) { flash('The duration is a number of minutes above 0', true); return; }
        const r = await mutate('POST', '/api/silences', { matchers: list, duration_seconds: Math.round(minutes * 60), comment: comment.value.trim() },
          'Silenced ' + list.join(', ') + ' for ' + fmtDur(minutes * 60000));
        if (r) { matchers.value = ''; comment.value = ''; refresh(); }
      } },
      h('h3', { text: 'New silence' }),
      h('div', null, h('label', { for: 'silence-matchers', text: 'Matchers (comma-separated)' }), matchers),
      h('div', null, h('label', { for: 'silence-duration', text: 'Duration (minutes)' }), duration),
      h('div', null, h('label', { for: 'silence-comment', text: 'Comment' }), comment),
      h('button', { type: 'submit', text: 'Create silence' }));
      silSection.append(form);
    }

    async function incidentAction(id, action) {
      if (action === 'resolve') {
        resolving = id;
        const tr = $('tr[data-incident="' + CSS.escape(id) + '"]', t);
        setText($('#resolve-title'), tr ? $('.title', tr).firstChild.textContent : id);
        openDialog(resolveDialog);
        return;
      }
      await mutate('POST', '/api/incidents/' + enc(id) + '/acknowledge', undefined, 'Incident ' + id + ' acknowledged');
      refresh();
    }

    function renderIncidents(list) {
      const sorted = list.slice().sort((a, b) => {
        const oa = ['triggered', 'acknowledged', 'mitigated'].includes(a.status) ? 0 : 1;
        const ob = ['triggered', 'acknowledged', 'mitigated'].includes(b.status) ? 0 : 1;
        return oa - ob || (SEVERITY_ORDER[a.severity] - SEVERITY_ORDER[b.severity]) || String(b.created_at).localeCompare(String(a.created_at));
      });
      noInc.hidden = sorted.length > 0;
      incWrap.hidden = !sorted.length;
      syncRows($('tbody', t), sorted, (i) => i.id, 'data-incident', (i) => h('tr', null,
        td('severity'), td('status'),
        td('title', h('span', { class: 'title-text' }), h('div', { class: 'meta note' }), h('p', { class: 'resolution' }),
          h('details', { class: 'timeline' }, h('summary'), h('ol'))),
        CAN ? h('td', { class: 'actions' },
          h('button', { type: 'button', 'data-action': 'acknowledge', text: 'Acknowledge', onclick: () => incidentAction(i.id, 'acknowledge') }),
          h('button', { type: 'button', 'data-action': 'resolve', text: 'Resolve…', onclick: () => incidentAction(i.id, 'resolve') })) : null), (tr, i) => {
        const sev = $('.severity', tr);
        sev.dataset.severity = i.severity;
        fill(sev, badge('sev', i.severity));
        const st = $('.status', tr);
        st.dataset.status = i.status;
        fill(st, badge('status', i.status));
        setText($('.title-text', tr), i.title);
        setText($('.meta', tr), 'Opened ' + fmtTime(i.created_at) + (i.triggers > 1 ? ' · triggered ' + i.triggers + ' times' : '') +
          (i.acknowledged_at ? ' · acknowledged after ' + fmtDur(Date.parse(i.acknowledged_at) - Date.parse(i.created_at)) : '') +
          (i.resolved_at ? ' · resolved after ' + fmtDur(Date.parse(i.resolved_at) - Date.parse(i.created_at)) : ''));
        const res = $('.resolution', tr);
        res.hidden = !i.resolution;
        setText(res, i.resolution ? 'Resolution: ' + i.resolution : '');
        const tl = i.timeline || [];
        setText($('summary', tr), 'Timeline (' + tl.length + ')');
        const ol = $('details ol', tr);
        if (ol.childElementCount !== tl.length || ol.dataset.last !== JSON.stringify(tl[tl.length - 1] || null)) {
          ol.dataset.last = JSON.stringify(tl[tl.length - 1] || null);
          fill(ol, tl.map((e) => h('li', null, timeEl(e.at), ' ', h('strong', { text: e.actor }), ': ' + e.what + (e.repeats ? ' (×' + (e.repeats + 1) + ')' : ''))));
        }
        const open = ['triggered', 'acknowledged', 'mitigated'].includes(i.status);
        const ack = $('button[data-action="acknowledge"]', tr);
        if (ack) ack.disabled = !(i.status === 'triggered' || i.status === 'mitigated');
        const resolve = $('button[data-action="resolve"]', tr);
        if (resolve) resolve.disabled = !open;
      });
    }

    function renderAlerts(alerts) {
      const live = alerts.filter((a) => a.state === 'firing' || a.state === 'pending');
      const byGroup = new Map();
      for (const a of live) {
        const g = a.group || (a.labels && a.labels.alertname) || 'ungrouped';
        if (!byGroup.has(g)) byGroup.set(g, []);
        byGroup.get(g).push(a);
      }
      const key = JSON.stringify(live);
      if (groups.dataset.key === key) return;
      groups.dataset.key = key;
      if (!live.length) { fill(groups, h('p', { class: 'empty-alerts note', text: 'Nothing is firing.' })); return; }
      fill(groups, Array.from(byGroup, ([g, list]) => h('div', { class: 'alert-group', 'data-group': g },
        h('h3', null, g, h('span', { class: 'note', text: ' · ' + list.length + ' alert' + (list.length === 1 ? '' : 's') })),
        h('ul', null, list.map((a) => {
          const labels = Object.entries(a.labels || {}).filter(([k]) => k !== 'alertname');
          return h('li', { 'data-fingerprint': a.fingerprint },
            badge('alert', a.state), a.muted ? [' ', badge('alert', 'muted', 'silenced')] : null, ' ',
            h('span', { class: 'labels', text: labels.map(([k, v]) => k + '=' + v).join(', ') || '(no labels)' }),
            a.value != null ? h('span', { class: 'note', text: ' value ' + fmtNum(a.value) }) : null,
            a.annotations && a.annotations.summary ? h('div', { class: 'note', text: a.annotations.summary }) : null,
            CAN && !a.muted ? h('button', { type: 'button', class: 'small', 'data-action': 'silence-alert', text: 'Silence…', onclick: () => {
              matchers.value = Object.entries(a.labels || {}).map(([k, v]) => k + '=' + (/[,"\s]/.test(v) ? JSON.stringify(v) : v)).join(',');
              matchers.focus();
            } }) : null);
        })))));
    }

    function renderSilences(list) {
      noSil.hidden = list.length > 0;
      silWrap.hidden = !list.length;
      const now = Date.now() + skewMs;
      syncRows($('tbody', sil), list, (x) => x.id, 'data-silence', (x) => h('tr', null,
        td('matchers'), td('state'), td('until'), td('by'), td('comment'),
        CAN ? h('td', null, h('button', { type: 'button', 'data-action': 'expire', text: 'Expire', onclick: async () => {
          if (await mutate('DELETE', '/api/silences/' + enc(x.id), undefined, 'Silence expired')) refresh();
        } })) : null), (tr, x) => {
        const state = x.active ? 'active' : Date.parse(x.starts_at) > now ? 'pending' : 'expired';
        setText($('.matchers', tr), (x.matchers || []).join(', '));
        fill($('.state', tr), badge('silence', state));
        fill($('.until', tr), timeEl(x.ends_at));
        setText($('.by', tr), x.created_by);
        setText($('.comment', tr), x.comment);
        const b = $('button[data-action="expire"]', tr);
        if (b) b.disabled = state === 'expired';
      });
    }

    const refresh = poll(async () => {
      const [incidents, st, alerts, silences] = await Promise.all([
        get('/api/incidents'), maybe('/api/incidents/stats', true), maybe('/api/alerts'), maybe('/api/silences')]);
      renderIncidents(incidents || []);
      if (st) {
        setText($('#open-count'), st.open);
        setText($('#ack-count'), st.acknowledged);
        setText($('#resolved-count'), st.resolved);
        setText($('#mtta'), st.mtta_ms == null ? '—' : fmtDur(st.mtta_ms));
        setText($('#mttr'), st.mttr_ms == null ? '—' : fmtDur(st.mttr_ms));
      }
      $('#alerts').hidden = alerts == null;
      if (alerts) renderAlerts(alerts);
      silSection.hidden = silences == null;
      if (silences) renderSilences(silences);
    });
  }

  // ---- start ----
  const PAGES = { rollouts: pageRollouts, rollout: pageRollout, flags: pageFlags, flag: pageFlag, incidents: pageIncidents };
  function start() {
    const page = PAGES[PAGE];
    // Pages without a data-page (sign-in, errors) are the server's alone.
    if (!main || !page) return;
    clear(main);
    // The section the page belongs to is the current one in the navigation.
    const section = { rollout: 'rollouts', flag: 'flags' }[PAGE] || PAGE;
    for (const a of $$('header nav a')) {
      if (a.getAttribute('href') === '/ui/' + section) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    page();
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
