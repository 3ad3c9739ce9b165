// sessiond's built-in page: list and create sessions, follow one live.
//
// The live view uses the browser's own EventSource and nothing else: when the
// connection drops, the browser reconnects by itself after the server's
// `retry` and sends `Last-Event-ID`, and the server replays exactly what was
// missed. `init` replaces the whole state; `update` applies one event
// (`replaced` → its data, `patched` → an RFC 7396 merge patch); presence
// (`join`/`leave`) carries no id, so it never moves the resume point.
//
// Only when the browser gives up (readyState CLOSED: an HTTP error such as
// 404 or 410) does the page open a new EventSource itself, passing the last
// id it saw as `?lastEventId=` because a new EventSource cannot be given a
// Last-Event-ID header.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const MAX_LOG = 1000;
  const NAME_KEY = 'sessiond.username';

  // ---- JSON helpers -------------------------------------------------------

  const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

  function setOwn(obj, key, value) {
    // defineProperty, not assignment: a "__proto__" key is data, not a prototype.
    Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
  }

  // RFC 7396 JSON Merge Patch. Returns a new value; `target` is not modified.
  function mergePatch(target, patch) {
    if (!isObject(patch)) return patch;
    const out = {};
    if (isObject(target)) {
      for (const k of Object.keys(target)) setOwn(out, k, target[k]);
    }
    for (const k of Object.keys(patch)) {
      const v = patch[k];
      if (v === null) {
        delete out[k];
      } else {
        setOwn(out, k, mergePatch(Object.prototype.hasOwnProperty.call(out, k) ? out[k] : undefined, v));
      }
    }
    return out;
  }

  const pretty = (v) => JSON.stringify(v, null, 2);

  function short(v, n) {
    const s = JSON.stringify(v);
    return s.length > n ? s.slice(0, n - 1) + '…' : s;
  }

  function time(at) {
    const d = at ? new Date(at) : new Date();
    return isNaN(d) ? String(at) : d.toLocaleTimeString();
  }

  // ---- HTTP ----------------------------------------------------------------

  // Calls the API. Resolves to {ok, status, body}; body is the parsed JSON
  // (or null). Network failures resolve with status 0 and a client-side error.
  async function api(method, path, text, headers) {
    const init = { method, headers: Object.assign({ Accept: 'application/json' }, headers || {}) };
    if (text !== undefined) {
      init.body = text;
      init.headers['Content-Type'] = 'application/json';
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      return { ok: false, status: 0, body: { error: 'network_error', message: 'the server could not be reached (' + e.message + ')' } };
    }
    let body = null;
    const raw = await resp.text();
    if (raw) {
      try {
        body = JSON.parse(raw);
      } catch (e) {
        body = { error: 'unexpected_response', message: raw.slice(0, 300) };
      }
    }
    return { ok: resp.ok, status: resp.status, body };
  }

  // Shows an API error exactly as returned: status, code, message.
  function showError(el, resp) {
    const b = resp.body || {};
    el.textContent = '';
    const head = document.createElement('strong');
    head.className = 'code';
    head.textContent = (resp.status ? resp.status + ' ' : '') + (b.error || 'error');
    const msg = document.createElement('span');
    msg.className = 'message';
    msg.textContent = b.message || '';
    el.append(head, ' ', msg);
    el.hidden = false;
  }

  function hideError(el) {
    el.hidden = true;
    el.textContent = '';
  }

  // ---- connection indicator ------------------------------------------------

  function setConn(state, text) {
    const el = $('conn');
    el.dataset.state = state;
    el.textContent = text;
  }

  // ---- usernames -----------------------------------------------------------

  function usernameProblem(name) {
    if (!name) return 'choose a username first';
    if ([...name].length > 64) return 'a username has at most 64 characters';
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u001f\u007f-\u009f]/.test(name)) return 'a username cannot contain control characters';
    return null;
  }

  function currentUsername() {
    return $('username').value.trim();
  }

  // ---- home: list and create ----------------------------------------------

  let nextAfter = null;

  function sessionItem(s) {
    const li = document.createElement('li');
    li.dataset.id = s.id;
    const info = document.createElement('div');
    info.className = 'info';
    const id = document.createElement('code');
    id.textContent = s.id;
    const meta = document.createElement('span');
    meta.className = 'muted';
    meta.textContent = 'offset ' + s.offset + ' · ' + s.clients + ' connected · updated ' + time(s.updatedAt);
    info.append(id, meta);
    const open = document.createElement('button');
    open.type = 'button';
    open.textContent = 'Open';
    open.className = 'open';
    open.addEventListener('click', () => openFromHome(s.id));
    li.append(info, open);
    return li;
  }

  async function loadSessions(more) {
    const list = $('sessions');
    const errEl = $('list-error');
    hideError(errEl);
    let path = '/sessions?limit=50';
    if (more && nextAfter) path += '&after=' + encodeURIComponent(nextAfter);
    const resp = await api('GET', path);
    if (!resp.ok) {
      showError(errEl, resp);
      return;
    }
    if (!more) list.textContent = '';
    for (const s of resp.body.sessions) list.append(sessionItem(s));
    nextAfter = resp.body.next;
    $('more').hidden = !nextAfter;
    $('sessions-empty').hidden = list.children.length > 0;
  }

  function openFromHome(id) {
    const name = currentUsername();
    const problem = usernameProblem(name);
    if (problem) {
      showError($('create-error'), { status: 0, body: { error: 'username_required', message: problem } });
      $('username').focus();
      return;
    }
    localStorage.setItem(NAME_KEY, name);
    const p = new URLSearchParams({ session: id, username: name });
    location.hash = p.toString();
  }

  async function createSession() {
    const errEl = $('create-error');
    hideError(errEl);
    const name = currentUsername();
    const problem = usernameProblem(name);
    if (problem) {
      showError(errEl, { status: 0, body: { error: 'username_required', message: problem } });
      return;
    }
    const resp = await api('POST', '/sessions?username=' + encodeURIComponent(name), $('initial').value);
    if (!resp.ok) {
      showError(errEl, resp);
      return;
    }
    openFromHome(resp.body.id);
  }

  // ---- one session ---------------------------------------------------------

  const live = {
    id: null,
    username: null,
    es: null,
    state: null,
    offset: null,
    // What the browser will send as Last-Event-ID: MessageEvent.lastEventId of
    // the latest event (presence events carry it unchanged).
    cursor: '',
    // Set when the connection drops; the offset the browser resumes after.
    downAt: null,
    deleted: false,
    // Usernames → number of streams we believe they hold (init lists distinct
    // names, so a name connected twice counts once until it joins again); the
    // `clients` figure from the server is exact.
    people: new Map(),
    clients: 0,
    // Whether an init has been applied since the session was opened.
    initialised: false,
  };

  function renderState() {
    $('state').textContent = live.state === undefined ? '' : pretty(live.state);
    $('offset').textContent = live.offset === null ? '–' : String(live.offset);
    $('if-match-offset').textContent = live.offset === null ? '–' : String(live.offset);
    $('deleted-note').hidden = !live.deleted;
  }

  function renderPeople() {
    const ul = $('people');
    ul.textContent = '';
    const names = [...live.people.keys()].sort();
    for (const n of names) {
      const li = document.createElement('li');
      li.textContent = n;
      if (n === live.username) {
        li.classList.add('me');
        li.append(' (you)');
      }
      ul.append(li);
    }
    $('clients').textContent = String(live.clients);
    $('clients').title = live.clients + ' connection(s)';
  }

  function addLog(kind, offset, text, extra) {
    const li = document.createElement('li');
    li.dataset.event = kind;
    if (offset !== null && offset !== undefined) li.dataset.offset = String(offset);
    if (extra && extra.kind) li.dataset.kind = extra.kind;
    const off = document.createElement('span');
    off.className = 'off';
    off.textContent = offset === null || offset === undefined ? '—' : '#' + offset;
    const name = document.createElement('span');
    name.className = 'ev ev-' + kind;
    name.textContent = kind;
    const body = document.createElement('span');
    body.className = 'text';
    body.textContent = text;
    const when = document.createElement('time');
    when.textContent = time(extra && extra.at);
    li.append(off, name, body, when);
    const log = $('log');
    log.prepend(li);
    while (log.children.length > MAX_LOG) log.lastElementChild.remove();
  }

  function noteReceived(ev) {
    live.cursor = ev.lastEventId;
  }

  function parse(ev) {
    try {
      return JSON.parse(ev.data);
    } catch (e) {
      addLog('error', null, 'unreadable ' + ev.type + ' event: ' + ev.data.slice(0, 120));
      return null;
    }
  }

  function onInit(ev) {
    const d = parse(ev);
    if (!d) return;
    noteReceived(ev);
    const again = live.initialised;
    live.initialised = true;
    live.state = d.session.data;
    live.offset = d.session.offset;
    live.people = new Map((d.usernames || []).map((n) => [n, 1]));
    live.clients = d.clients;
    renderState();
    renderPeople();
    addLog('init', d.session.offset, 'state replaced at offset ' + d.session.offset + ' · ' + d.clients + ' connected');
    // A second init (the server could not resume from our id) replaced everything.
    if (again) setConn('live', 'live · re-initialised at offset ' + d.session.offset);
  }

  function onUpdate(ev) {
    const e = parse(ev);
    if (!e) return;
    noteReceived(ev);
    if (e.kind === 'replaced') {
      live.state = e.data;
    } else if (e.kind === 'patched') {
      live.state = mergePatch(live.state, e.patch);
    } else {
      addLog('error', e.offset, 'unknown update kind ' + e.kind);
      return;
    }
    live.offset = e.offset;
    renderState();
    const who = e.username === live.username ? e.username + ' (you)' : e.username;
    const what = e.kind === 'replaced' ? 'replaced with ' + short(e.data, 80) : 'patched ' + short(e.patch, 80);
    addLog('update', e.offset, what + ' by ' + who, { kind: e.kind, at: e.at });
  }

  function onDelete(ev) {
    const e = parse(ev);
    if (!e) return;
    noteReceived(ev);
    live.deleted = true;
    live.offset = e.offset;
    renderState();
    addLog('delete', e.offset, 'session deleted by ' + e.username, { at: e.at });
    // The stream ends after a delete; stop the browser from reconnecting to a 410.
    closeStream();
    setConn('deleted', 'session deleted');
  }

  function onPresence(ev) {
    const d = parse(ev);
    if (!d) return;
    noteReceived(ev);
    for (const n of d.usernames || []) {
      const c = live.people.get(n) || 0;
      if (ev.type === 'join') live.people.set(n, c + 1);
      else if (c <= 1) live.people.delete(n);
      else live.people.set(n, c - 1);
    }
    if (live.username && live.es && live.es.readyState === EventSource.OPEN && !live.people.has(live.username)) {
      live.people.set(live.username, 1);
    }
    live.clients = d.clients;
    renderPeople();
    addLog(ev.type, null, (d.usernames || []).join(', ') + ' · ' + d.clients + ' connected');
  }

  function closeStream() {
    if (live.es) {
      live.es.close();
      live.es = null;
    }
  }

  // Explains why the browser gave up, from the API's own error.
  async function diagnose() {
    const resp = await api('GET', '/sessions/' + encodeURIComponent(live.id));
    if (resp.ok) {
      setConn('closed', 'disconnected');
      addLog('error', null, 'the stream was closed; the session exists: use Reconnect');
    } else {
      setConn(resp.status === 410 ? 'deleted' : 'closed', resp.status === 410 ? 'session deleted' : 'disconnected');
      showError($('edit-error'), resp);
    }
    $('reconnect').hidden = resp.status === 410 || resp.status === 404;
  }

  function connect(resumeFrom) {
    closeStream();
    let url = '/events/' + encodeURIComponent(live.id) + '?username=' + encodeURIComponent(live.username);
    if (resumeFrom) url += '&lastEventId=' + encodeURIComponent(resumeFrom);
    const es = new EventSource(url);
    live.es = es;
    setConn('connecting', resumeFrom ? 'connecting · resuming after offset ' + resumeFrom : 'connecting…');
    es.addEventListener('open', () => {
      if (live.downAt !== null && live.downAt !== '') {
        setConn('resumed', 'live · resumed from offset ' + live.downAt);
        addLog('conn', null, 'reconnected; resumed from offset ' + live.downAt);
      } else {
        setConn('live', 'live');
      }
      live.downAt = null;
      if (live.username) {
        live.people.set(live.username, Math.max(1, live.people.get(live.username) || 0));
        renderPeople();
      }
    });
    es.addEventListener('error', () => {
      if (es !== live.es) return;
      if (es.readyState === EventSource.CONNECTING) {
        if (live.downAt === null) {
          live.downAt = live.cursor;
          addLog('conn', null, 'connection lost; the browser reconnects' + (live.cursor ? ' and resumes after offset ' + live.cursor : ''));
        }
        setConn('reconnecting', 'reconnecting…' + (live.cursor ? ' (resumes after offset ' + live.cursor + ')' : ''));
      } else if (es.readyState === EventSource.CLOSED) {
        live.downAt = live.cursor;
        live.es = null;
        setConn('closed', 'disconnected');
        diagnose();
      }
    });
    es.addEventListener('init', onInit);
    es.addEventListener('update', onUpdate);
    es.addEventListener('delete', onDelete);
    es.addEventListener('join', onPresence);
    es.addEventListener('leave', onPresence);
  }

  function openSession(id, username) {
    closeStream();
    Object.assign(live, {
      id, username, state: undefined, offset: null, cursor: '', downAt: null,
      deleted: false, people: new Map(), clients: 0, initialised: false,
    });
    $('session-id').textContent = id;
    $('me').textContent = username;
    $('log').textContent = '';
    $('editor').value = '';
    hideError($('edit-error'));
    $('edit-ok').hidden = true;
    $('reconnect').hidden = true;
    renderState();
    renderPeople();
    $('home').hidden = true;
    $('session').hidden = false;
    document.title = 'sessiond · ' + id;
    connect(null);
  }

  function showHome() {
    closeStream();
    live.id = null;
    $('session').hidden = true;
    $('home').hidden = false;
    document.title = 'sessiond';
    setConn('idle', 'not connected');
    loadSessions(false);
  }

  async function write(method) {
    const errEl = $('edit-error');
    const okEl = $('edit-ok');
    hideError(errEl);
    okEl.hidden = true;
    const headers = {};
    if ($('if-match').checked && live.offset !== null) headers['If-Match'] = '"' + live.offset + '"';
    const path = '/sessions/' + encodeURIComponent(live.id) + '?username=' + encodeURIComponent(live.username);
    // The text goes to the server as typed: a body that is not JSON gets the
    // API's own 422, shown as returned.
    const resp = await api(method, path, $('editor').value, headers);
    if (!resp.ok) {
      showError(errEl, resp);
      return;
    }
    okEl.textContent = (method === 'PUT' ? 'replaced' : 'patched') + ' at offset ' + resp.body.offset;
    okEl.hidden = false;
  }

  // ---- routing -------------------------------------------------------------

  function route() {
    const p = new URLSearchParams(location.hash.replace(/^#/, ''));
    const id = p.get('session');
    const name = (p.get('username') || '').trim();
    if (id && !usernameProblem(name)) {
      if (live.id !== id || live.username !== name || !live.es) openSession(id, name);
    } else {
      if (id) {
        showError($('create-error'), { status: 0, body: { error: 'username_required', message: usernameProblem(name) } });
      }
      showHome();
    }
  }

  function start() {
    $('reconnect').addEventListener('click', () => {
      $('reconnect').hidden = true;
      hideError($('edit-error'));
      connect(live.cursor || null);
    });
    $('username').value = localStorage.getItem(NAME_KEY) || '';
    $('create').addEventListener('click', createSession);
    $('refresh').addEventListener('click', () => loadSessions(false));
    $('more').addEventListener('click', () => loadSessions(true));
    $('leave').addEventListener('click', () => { location.hash = ''; });
    $('replace').addEventListener('click', () => write('PUT'));
    $('patch').addEventListener('click', () => write('PATCH'));
    $('copy').addEventListener('click', () => { $('editor').value = live.state === undefined ? '' : pretty(live.state); });
    $('clear-log').addEventListener('click', () => { $('log').textContent = ''; });
    window.addEventListener('hashchange', route);
    route();
  }

  // For the browser tests and the curious: the live view's model and the merge patch.
  window.sessiond = { live, mergePatch };

  start();
})();
