// The qhcp status page: one table row per backend, updated live from /events (server-sent
// events). Every string from the load balancer or an agent is put in the page as text
// (textContent, attribute values), never parsed as HTML.
'use strict';
(() => {
  const HISTORY = 180;
  const rows = new Map(); // address -> { tr, cells, data, points }
  let page = { admin: false, rise: 1, fall: 3, checkInterval: 10, node: '' };
  let skew = 0; // server time - our time (ms)
  const $ = (id) => document.getElementById(id);
  const tbody = document.querySelector('#backends tbody');

  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const pct = (v) => (typeof v === 'number' ? `${v.toFixed(1)}%` : '–');
  const num = (v, d = 2) => (typeof v === 'number' ? v.toFixed(d) : '–');
  const dur = (ms) => {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
    return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
  };
  const STATES = ['UNKNOWN', 'UP', 'DEGRADED', 'DRAINING', 'MAINT', 'DOWN'];

  function token() {
    return $('token').value.trim();
  }

  async function setAdmin(address, state) {
    const msg = $('adminmsg');
    msg.textContent = `${state} ${address}…`;
    try {
      const res = await fetch(`api/backends/${encodeURIComponent(address)}/admin`, {
        method: 'PUT',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token()}` },
        body: JSON.stringify({ state }),
      });
      const body = await res.json().catch(() => ({}));
      msg.textContent = res.ok ? `${address}: admin state ${state}` : `${address}: ${res.status} ${body.error || ''} ${body.message || ''}`;
      if (res.ok && body.backend) update(body.backend);
    } catch (e) {
      msg.textContent = `${address}: ${String(e)}`;
    }
  }

  function makeRow(b) {
    const tr = el('tr');
    tr.setAttribute('data-address', b.address);
    const c = {};
    const td = (name, cls) => {
      const t = el('td', cls);
      t.setAttribute('data-col', name);
      tr.append(t);
      c[name] = t;
      return t;
    };
    const addr = td('backend');
    c.addr = el('div', 'addr');
    c.name = el('div', 'sub');
    addr.append(c.addr, c.name);
    c.badge = el('span', 'state');
    td('state').append(c.badge);
    td('verdict', 'verdict');
    td('weight');
    td('cpu');
    td('mem');
    td('load');
    const chart = td('chart');
    c.svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    c.svg.setAttribute('class', 'spark');
    c.svg.setAttribute('viewBox', '0 0 120 28');
    c.svg.setAttribute('preserveAspectRatio', 'none');
    c.lcpu = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    c.lcpu.setAttribute('class', 'cpu');
    c.lmem = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    c.lmem.setAttribute('class', 'mem');
    c.svg.append(c.lcpu, c.lmem);
    chart.append(c.svg);
    td('latency');
    td('fails');
    td('since');
    td('error', 'err');
    const act = td('admin', 'admincol');
    act.hidden = !page.admin;
    for (const [label, state] of [['Drain', 'DRAIN'], ['Ready', 'READY'], ['Maint', 'MAINT']]) {
      const btn = el('button', null, label);
      btn.setAttribute('data-action', state.toLowerCase());
      btn.addEventListener('click', () => setAdmin(b.address, state));
      act.append(btn);
    }
    return { tr, c, data: b, points: [] };
  }

  function drawChart(r) {
    const pts = r.points;
    if (pts.length === 0) return;
    const t0 = pts[0][0];
    const span = Math.max(1, pts[pts.length - 1][0] - t0);
    const line = (i) =>
      pts
        .filter((p) => typeof p[i] === 'number')
        .map((p) => `${(((p[0] - t0) / span) * 118 + 1).toFixed(1)},${(27 - (Math.min(100, Math.max(0, p[i])) / 100) * 26).toFixed(1)}`)
        .join(' ');
    r.c.lcpu.setAttribute('points', line(1));
    r.c.lmem.setAttribute('points', line(2));
  }

  function fill(r) {
    const b = r.data;
    const c = r.c;
    c.addr.textContent = b.address;
    c.name.textContent = [b.name, b.service ? `service ${b.service}` : '', b.checkedBy ? `checked by ${b.checkedBy.join(', ') || 'nobody now'}` : ''].filter(Boolean).join(' · ');
    c.badge.textContent = b.state;
    c.badge.className = `state ${STATES.includes(b.state) ? b.state : 'UNKNOWN'}`;
    r.tr.setAttribute('data-state', b.state);
    c.verdict.textContent = [b.verdict || '–', b.reason || ''].filter(Boolean).join(': ');
    const adm = [b.adminState && b.adminState !== 'READY' ? `LB ${b.adminState}` : '', b.agentAdmin && b.agentAdmin !== 'READY' ? `agent ${b.agentAdmin}` : ''].filter(Boolean).join(', ');
    c.weight.textContent = `${b.weight}${adm ? ` (${adm})` : ''}`;
    const m = b.metrics || {};
    c.cpu.textContent = pct(m.cpu);
    c.mem.textContent = pct(m.memory);
    c.load.textContent = num(m.load1);
    c.latency.textContent = typeof b.latencyMs === 'number' ? `${b.latencyMs.toFixed(1)} ms` : '–';
    c.fails.textContent = `${b.failures}/${page.fall} failed · ${Math.min(b.successes, page.rise)}/${page.rise} good`;
    c.error.textContent = b.lastError || '';
    tick(r);
  }

  function tick(r) {
    r.c.since.textContent = r.data.since ? dur(Date.now() + skew - r.data.since) : '–';
  }

  function update(b, point) {
    let r = rows.get(b.address);
    if (!r) {
      r = makeRow(b);
      rows.set(b.address, r);
      tbody.append(r.tr);
    }
    r.data = b;
    if (point) {
      const last = r.points[r.points.length - 1];
      if (!last || last[0] !== point[0]) r.points.push(point);
      if (r.points.length > HISTORY) r.points.splice(0, r.points.length - HISTORY);
      drawChart(r);
    }
    fill(r);
  }

  function summary() {
    const n = {};
    for (const r of rows.values()) n[r.data.state] = (n[r.data.state] || 0) + 1;
    $('summary').textContent = `${rows.size} backends: ` + STATES.filter((s) => n[s]).map((s) => `${n[s]} ${s}`).join(', ');
  }

  function addTransitions(list) {
    const ol = $('transitions');
    for (const t of list) {
      const li = el('li');
      li.append(el('span', 'sub', `${new Date(t.at).toLocaleTimeString()} `), el('span', null, `${t.server} `), el('span', null, `${t.from} → `), el('span', 'to', t.to), el('span', 'sub', ` ${t.reason}`));
      ol.prepend(li);
    }
    while (ol.children.length > 200) ol.lastElementChild.remove();
  }

  function snapshot(s) {
    page = s.page;
    skew = s.now - Date.now();
    $('node').textContent = page.node;
    $('adminbar').hidden = !page.admin;
    for (const th of document.querySelectorAll('th.admincol')) th.hidden = !page.admin;
    const live = new Set(s.backends.map((b) => b.address));
    for (const [a, r] of rows) {
      if (!live.has(a)) {
        r.tr.remove();
        rows.delete(a);
      }
    }
    for (const b of s.backends) {
      update(b);
      const r = rows.get(b.address);
      r.points = (s.history[b.address] || []).slice(-HISTORY);
      r.c.admin.hidden = !page.admin;
      drawChart(r);
    }
    $('transitions').replaceChildren();
    addTransitions(s.transitions);
    summary();
  }

  function connect() {
    const es = new EventSource('events');
    es.addEventListener('open', () => {
      $('live').textContent = 'live';
      $('live').className = 'live';
    });
    es.addEventListener('error', () => {
      $('live').textContent = 'reconnecting…';
      $('live').className = 'live off';
    });
    es.addEventListener('snapshot', (e) => snapshot(JSON.parse(e.data)));
    es.addEventListener('update', (e) => {
      const u = JSON.parse(e.data);
      skew = u.now - Date.now();
      for (const a of u.removed || []) {
        const r = rows.get(a);
        if (r) r.tr.remove();
        rows.delete(a);
      }
      for (const b of u.backends) update(b, u.points[b.address]);
      addTransitions(u.transitions || []);
      summary();
    });
  }

  const saved = sessionStorage.getItem('qhcp-token');
  if (saved) $('token').value = saved;
  $('token').addEventListener('change', () => sessionStorage.setItem('qhcp-token', token()));
  setInterval(() => {
    for (const r of rows.values()) tick(r);
  }, 1000);
  connect();
})();
