// nnc-agent's page: a LAN client of the agent's GraphQL API (POST /graphql, and a
// graphql-transport-ws WebSocket for live progress, logs and events). No framework, nothing
// from the internet. Text from the agent is only ever set as text (never parsed as HTML).
// The token lives in sessionStorage (this tab), never in a URL, never printed.
'use strict';

const $ = (sel) => document.querySelector(sel);
const KEY = 'nnc-token';
let token = sessionStorage.getItem(KEY);
let live = null;
let state = { features: [], instances: [], routers: [], routes: [] };
const progress = new Map(); // instance id -> { percent, bytesDownloaded, totalBytes, unsubscribe }

// h('tag.class', {attr: value, onclick: fn}, child...) -> element
function h(spec, attrs, ...kids) {
  if (attrs instanceof Node || typeof attrs === 'string' || Array.isArray(attrs)) { kids.unshift(attrs); attrs = null; }
  const [tag, ...cls] = spec.split('.');
  const e = document.createElement(tag);
  if (cls.length) e.className = cls.join(' ');
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids.flat()) if (k != null) e.append(k);
  return e;
}

class ApiError extends Error {
  constructor(code, message) { super(message); this.code = code; }
  toString() { return `${this.code}: ${this.message}`; }
}

async function gql(query, variables) {
  if (!token) throw new ApiError('UNAUTHENTICATED', 'signed out');
  let r;
  try {
    r = await fetch('/graphql', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer ' + token },
      body: JSON.stringify({ query, variables }),
    });
  } catch (e) {
    throw new ApiError('UNREACHABLE', 'the agent does not answer (' + e.message + ')');
  }
  let doc;
  try { doc = await r.json(); } catch { throw new ApiError('BAD_REPLY', 'HTTP ' + r.status); }
  if (doc.errors && doc.errors.length) {
    const e = doc.errors[0];
    const err = new ApiError((e.extensions && e.extensions.code) || 'ERROR', e.message);
    if (err.code === 'UNAUTHENTICATED') signOut(err);
    throw err;
  }
  return doc.data;
}

// One WebSocket for every subscription; reconnects (and resubscribes) when it drops.
class Live {
  constructor() { this.subs = new Map(); this.n = 0; this.open(); }
  open() {
    const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/graphql',
      'graphql-transport-ws');
    this.ws = ws;
    this.ready = false;
    ws.onopen = () => ws.send(JSON.stringify({ type: 'connection_init', payload: { token } }));
    ws.onmessage = (m) => {
      const v = JSON.parse(m.data);
      const s = this.subs.get(v.id);
      if (v.type === 'connection_ack') {
        this.ready = true;
        showLive(true);
        // After a drop, what changed meanwhile was not seen: read the lists again.
        if (this.acked) schedule('instances');
        this.acked = true;
        for (const [id, sub] of this.subs) this.send(id, sub);
      } else if (v.type === 'ping') ws.send('{"type":"pong"}');
      else if (v.type === 'next' && s) {
        if (v.payload.errors) s.error(v.payload.errors[0]);
        else s.next(v.payload.data);
      } else if ((v.type === 'error' || v.type === 'complete') && s) {
        this.subs.delete(v.id);
        if (v.type === 'error') s.error(v.payload[0]); else s.done();
      }
    };
    ws.onclose = (e) => {
      this.ready = false;
      if (live !== this) return; // signed out: this connection is over
      showLive(false);
      if (e.code === 4403) signOut(new ApiError('UNAUTHENTICATED', 'the agent refused the token'));
      else if (!this.closed) setTimeout(() => this.open(), 2000);
    };
  }
  send(id, s) {
    this.ws.send(JSON.stringify({ id, type: 'subscribe', payload: { query: s.query, variables: s.variables } }));
  }
  // Returns a function that ends the subscription.
  sub(query, variables, next, error = showError, done = () => {}) {
    const id = String(++this.n);
    const s = { query, variables, next, error: (e) => error(new ApiError((e.extensions || {}).code || 'ERROR', e.message)), done };
    this.subs.set(id, s);
    if (this.ready) this.send(id, s);
    return () => {
      if (this.subs.delete(id) && this.ready) this.ws.send(JSON.stringify({ id, type: 'complete' }));
    };
  }
  close() { this.closed = true; this.ws.close(); }
}

function showLive(on) {
  const l = $('#live');
  l.hidden = false;
  l.textContent = on ? 'live' : 'reconnecting…';
  l.className = 'pill ' + (on ? 'live' : 'off');
}

function showError(e) { $('#err').textContent = e ? String(e) : ''; }

function signOut(why) {
  sessionStorage.removeItem(KEY);
  token = null;
  clearTimeout(timer);
  timer = null;
  pending.clear();
  if (live) { live.close(); live = null; }
  for (const p of progress.values()) if (p.unsubscribe) p.unsubscribe();
  progress.clear();
  followed.clear();
  $('#app').hidden = true;
  $('#signout').hidden = true;
  $('#live').hidden = true;
  $('#agent').textContent = '';
  $('#login').hidden = false;
  $('#loginerr').textContent = why ? String(why) : '';
  const d = $('#dialog');
  if (d.open) d.close();
}

async function signIn() {
  const d = await gql('{ agent { version arch catalogue } }');
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#signout').hidden = false;
  $('#agent').textContent = `${d.agent.version} · ${d.agent.arch}`;
  live = new Live();
  live.sub('subscription { events { type instanceId } }', {}, (d) => {
    const t = d.events.type;
    if (t === 'service.install.progress') return;
    schedule(t.startsWith('device.') ? 'routes' : 'instances');
  });
  await Promise.all([loadFeatures(), loadInstances(), loadRoutes()]);
}

// Coalesces bursts of events into one reload.
const pending = new Set();
let timer = null;
function schedule(what) {
  pending.add(what);
  if (!timer) timer = setTimeout(() => {
    timer = null;
    const p = [...pending];
    pending.clear();
    if (p.includes('instances')) loadInstances().catch(showError);
    if (p.includes('routes') || p.includes('instances')) loadRoutes().catch(showError);
  }, 250);
}

const INSTALLING = ['QUEUED', 'DOWNLOADING', 'VERIFYING', 'INSTALLING', 'PROVISIONING', 'CONFIGURING', 'STARTING', 'UPDATING', 'UNINSTALLING'];

async function loadInstances() {
  const d = await gql(`{ instances { id name featureId version status error errorCode failedStep desiredRunning
    progress { percent bytesDownloaded totalBytes } devices interface { address } } }`);
  state.instances = d.instances;
  for (const i of state.instances) {
    // Followed once per busy spell: a progress stream that already ended (the download is
    // done, the instance is still starting) is not asked for again until the next one.
    if (!INSTALLING.includes(i.status)) followed.delete(i.id);
    else if (!followed.has(i.id)) follow(i);
  }
  renderInstances();
}

// Live install progress of one instance, drawn in place.
const followed = new Set();
function follow(i) {
  if (progress.has(i.id)) return;
  followed.add(i.id);
  const p = Object.assign({}, i.progress || { percent: 0, bytesDownloaded: 0, totalBytes: null });
  progress.set(i.id, p);
  p.unsubscribe = live.sub('subscription($id: ID!) { installProgress(instanceId: $id) { status percent bytesDownloaded totalBytes } }',
    { id: i.id }, (d) => {
      Object.assign(p, d.installProgress);
      drawProgress(i.id);
    }, () => progress.delete(i.id), () => { progress.delete(i.id); schedule('instances'); });
}

function size(n) {
  return n >= 1048576 ? (n / 1048576).toFixed(1) + ' MiB' : Math.round(n / 1024) + ' KiB';
}

function drawProgress(id) {
  const p = progress.get(id);
  const card = document.querySelector(`[data-id="${CSS.escape(id)}"]`);
  if (!p || !card) return;
  const bar = card.querySelector('progress');
  const text = card.querySelector('.pct');
  if (!bar) return;
  bar.value = p.percent;
  text.textContent = `${p.percent.toFixed(1)}% · ${size(p.bytesDownloaded)}${p.totalBytes ? ' of ' + size(p.totalBytes) : ''}`;
}

function renderInstances() {
  const box = $('#instances');
  box.replaceChildren();
  if (!state.instances.length) box.append(h('p.muted', { text: 'Nothing installed yet: pick a feature below.' }));
  for (const i of state.instances) {
    const busy = INSTALLING.includes(i.status);
    const running = i.status === 'RUNNING';
    const card = h('div.card', { 'data-id': i.id, 'data-status': i.status },
      h('div.row',
        h('b', { text: i.name }),
        h('span.muted', { text: `${i.featureId} ${i.version}` }),
        h('span', { class: `pill st-${i.status}${busy ? ' busy' : ''}`, 'data-role': 'status', text: i.status }),
        i.interface && h('span.muted', { text: i.interface.address }),
        i.devices.length ? h('span.muted', { text: `${i.devices.length} device(s)` }) : null),
      busy && i.status !== 'UNINSTALLING' ? h('div', {}, h('progress', { max: 100, value: 0 }), h('small.pct.muted')) : null,
      i.error ? h('p.err', { text: `${i.errorCode || 'FAILED'}: ${i.error}${i.failedStep ? ` (at ${i.failedStep})` : ''}` }) : null,
      h('div.acts',
        h('button', { type: 'button', text: 'Logs', onclick: () => showLogs(i) }),
        running ? h('button', { type: 'button', text: 'Stop', onclick: () => act('stopInstance', i) })
          : h('button', { type: 'button', text: 'Start', disabled: busy, onclick: () => act('startInstance', i) }),
        h('button', { type: 'button', text: 'Restart', disabled: !running, onclick: () => act('restartInstance', i) }),
        h('button', { type: 'button', text: 'Update…', disabled: busy, onclick: () => showUpdate(i) }),
        h('button.danger', { type: 'button', text: 'Uninstall…', disabled: i.status === 'UNINSTALLING', onclick: () => showUninstall(i) })));
    box.append(card);
    if (progress.has(i.id)) drawProgress(i.id);
  }
}

async function act(mutation, i) {
  showError();
  try { await gql(`mutation($id: ID!) { ${mutation}(id: $id) { status } }`, { id: i.id }); } catch (e) { showError(e); }
  schedule('instances');
}

async function loadFeatures() {
  const d = await gql('{ features { id name version versions description supported settingsSchema } routers { id kind reachable } }');
  state.features = d.features;
  state.routers = d.routers;
  const box = $('#features');
  box.replaceChildren();
  for (const f of d.features) {
    box.append(h('div.card', { 'data-feature': f.id },
      h('div.row', h('b', { text: f.name }), h('span.muted', { text: f.version }),
        f.supported ? null : h('span.pill.off', { text: 'not for this machine' })),
      f.description ? h('p.muted', { text: f.description }) : null,
      h('div.acts', h('button.primary', { type: 'button', text: 'Install…', disabled: !f.supported, onclick: () => showInstall(f) }))));
  }
}

// The dialog: a title, a body, and buttons; returns the dialog element.
function dialog(title, ...body) {
  const d = $('#dialog');
  d.replaceChildren(h('h2', { text: title }), ...body);
  if (!d.open) d.showModal();
  return d;
}

function closeButton(label = 'Close') {
  return h('button', { type: 'button', text: label, onclick: () => $('#dialog').close() });
}

// A form field for one property of a settings JSON Schema; objects and arrays take JSON.
function field(name, s) {
  const hint = s.description ? h('small', { text: s.description }) : null;
  let input;
  if (s.enum) {
    input = h('select', { name }, h('option', { value: '', text: '(default)' }), s.enum.map((v) => h('option', { value: v, text: v })));
  } else if (s.type === 'boolean') {
    input = h('input', { name, type: 'checkbox', 'data-kind': 'boolean' });
  } else if (s.type === 'integer' || s.type === 'number') {
    input = h('input', { name, type: 'number', min: s.minimum, max: s.maximum, 'data-kind': 'number' });
  } else if (s.type === 'string') {
    input = h('input', { name, type: s.writeOnly ? 'password' : 'text', maxlength: s.maxLength, autocomplete: 'off' });
  } else {
    input = h('textarea', { name, rows: 3, 'data-kind': 'json', placeholder: 'JSON' });
  }
  return h('label', {}, name, ' ', hint, input);
}

function settingsOf(form) {
  const out = {};
  for (const e of form.querySelectorAll('[data-setting] [name]')) {
    const k = e.name;
    if (e.dataset.kind === 'boolean') { if (e.checked) out[k] = true; continue; }
    if (e.value === '') continue;
    if (e.dataset.kind === 'number') out[k] = Number(e.value);
    else if (e.dataset.kind === 'json') {
      try { out[k] = JSON.parse(e.value); } catch { throw new ApiError('INVALID_SETTINGS', `${k} is not JSON`); }
    } else out[k] = e.value;
  }
  return out;
}

function showInstall(f) {
  const props = (f.settingsSchema && f.settingsSchema.properties) || {};
  const names = Object.keys(props);
  const first = names.filter((n) => n === 'link');
  const rest = names.filter((n) => n !== 'link');
  const err = h('p.err', { role: 'alert' });
  const form = h('form', {},
    h('label', {}, 'Name ', h('input', { name: 'name', required: true, maxlength: 64, value: f.id })),
    state.routers.length > 1 ? h('label', {}, 'Router ', h('select', { name: 'router' },
      state.routers.map((r) => h('option', { value: r.id, text: `${r.id} (${r.kind}${r.reachable ? '' : ', unreachable'})` })))) : null,
    h('div', { 'data-setting': true }, first.map((n) => field(n, props[n]))),
    rest.length ? h('details', {}, h('summary', { text: 'Settings' }), h('div', { 'data-setting': true }, rest.map((n) => field(n, props[n])))) : null,
    err,
    h('div.acts', h('button', { type: 'submit', text: 'Install' }), closeButton('Cancel')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.textContent = '';
    try {
      const settings = settingsOf(form);
      const router = form.elements.router ? form.elements.router.value : 'local';
      const d = await gql('mutation($f: ID!, $r: ID!, $n: String!, $s: JSON) { installFeature(featureId: $f, routerId: $r, name: $n, settings: $s) { instanceId } }',
        { f: f.id, r: router, n: form.elements.name.value, s: settings });
      $('#dialog').close();
      follow({ id: d.installFeature.instanceId, progress: null });
      await loadInstances();
    } catch (e) { err.textContent = String(e); }
  });
  dialog(`Install ${f.name} ${f.version}`, form);
}

// Services colour their lines for terminals; the page shows the text.
const plain = (line) => line.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');

async function showLogs(i) {
  const pre = h('pre', { 'aria-live': 'polite' });
  const err = h('p.err', { role: 'alert' });
  let stop = null;
  const d = dialog(`Logs of ${i.name}`, pre, err, h('div.acts', closeButton()));
  d.addEventListener('close', () => stop && stop(), { once: true });
  const add = (line) => {
    pre.append(plain(line) + '\n');
    while (pre.childNodes.length > 1000) pre.firstChild.remove();
    pre.scrollTop = pre.scrollHeight;
  };
  // Subscribe first: no line falls between the tail and the stream.
  stop = live.sub('subscription($id: ID!) { logs(instanceId: $id) { line } }', { id: i.id }, (m) => add(m.logs.line), (e) => { err.textContent = String(e); });
  try {
    const t = await gql('query($id: ID!) { instanceLogs(id: $id, tail: 200) }', { id: i.id });
    pre.prepend(t.instanceLogs.map(plain).join('\n') + (t.instanceLogs.length ? '\n' : ''));
  } catch (e) { err.textContent = String(e); }
}

function showUpdate(i) {
  const f = state.features.find((x) => x.id === i.featureId);
  const versions = f ? f.versions.filter((v) => v !== i.version) : [];
  const err = h('p.err', { role: 'alert' });
  const sel = h('select', { name: 'version' }, versions.map((v) => h('option', { value: v, text: v })));
  const form = h('form', {},
    versions.length ? h('label', {}, `From ${i.version} to `, sel) : h('p.muted', { text: 'The catalogue lists no other version.' }),
    h('p.muted', { text: 'If the new version fails its config check or first start, the previous one comes back.' }),
    err, h('div.acts', h('button', { type: 'submit', text: 'Update', disabled: !versions.length }), closeButton('Cancel')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const u = gql('mutation($id: ID!, $v: String!) { updateInstance(id: $id, version: $v) { status } }', { id: i.id, v: sel.value });
      schedule('instances');
      await u;
      $('#dialog').close();
    } catch (e) { err.textContent = String(e); }
    schedule('instances');
  });
  dialog(`Update ${i.name}`, form);
}

function showUninstall(i) {
  const err = h('p.err', { role: 'alert' });
  dialog(`Uninstall ${i.name}?`,
    h('p', { text: `This stops ${i.featureId} and removes the instance's interface and files.` +
      (i.devices.length ? ` Its ${i.devices.length} routed device(s) go direct again.` : '') }),
    err,
    h('div.acts', h('button.danger', { type: 'button', text: 'Uninstall', id: 'confirm', onclick: async () => {
      try {
        await gql('mutation($id: ID!) { uninstallInstance(id: $id) { instanceId } }', { id: i.id });
        $('#dialog').close();
      } catch (e) { err.textContent = String(e); }
      schedule('instances');
    } }), closeButton('Cancel')));
}

async function loadRoutes() {
  const d = await gql('{ deviceRoutes { device instanceId since } lanDevices { address mac hostname source } }');
  const name = (id) => (state.instances.find((i) => i.id === id) || { name: id }).name;
  const rows = d.deviceRoutes.map((r) => h('tr', {}, h('td', { text: r.device }), h('td', { text: name(r.instanceId) }),
    h('td.muted', { text: r.since }),
    h('td', {}, h('button', { type: 'button', text: 'Unroute', onclick: () => route('unrouteDevices(devices: $d)', { d: [r.device] }) }))));
  $('#routes').replaceChildren(rows.length
    ? h('table', {}, h('tr', {}, ['Device', 'Through', 'Since', ''].map((t) => h('th', { text: t }))), rows)
    : h('p.muted', { text: 'No device is routed. Routed devices reach the internet only through their instance, fail-closed.' }));
  $('#lan').replaceChildren(...d.lanDevices.map((l) =>
    h('option', { value: l.mac, text: `${l.address} ${l.hostname || ''} (${l.source})` })));
  // The form stays as the user left it; only the choices follow the instances.
  const sel = $('#routeform select');
  const was = sel.value;
  const ready = state.instances.filter((i) => !INSTALLING.includes(i.status));
  sel.replaceChildren(...ready.map((i) => h('option', { value: i.id, text: i.name })));
  if (ready.some((i) => i.id === was)) sel.value = was;
  $('#routeform button').disabled = !ready.length;
}

// Returns whether the agent did it.
async function route(call, vars) {
  showError();
  const types = { i: 'ID!', d: '[String!]!' };
  const decl = Object.keys(vars).map((k) => `$${k}: ${types[k]}`).join(', ');
  let ok = true;
  try { await gql(`mutation(${decl}) { ${call} }`, vars); } catch (e) { showError(e); ok = false; }
  schedule('routes');
  return ok;
}

$('#loginform').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  token = $('#token').value.trim();
  $('#token').value = '';
  sessionStorage.setItem(KEY, token);
  $('#loginerr').textContent = '';
  try { await signIn(); } catch (e) { signOut(e); }
});
$('#signout').addEventListener('click', () => signOut());
$('#routeform').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const f = ev.target.elements;
  route('routeDevices(instanceId: $i, devices: $d) { device }', { i: f.instance.value, d: [f.device.value] })
    .then((ok) => { if (ok) f.device.value = ''; });
});
if (token) signIn().catch(signOut);
