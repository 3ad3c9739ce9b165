// The built-in page in headless Chromium against the real sessiond binary.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { launch, newPage, screenshot, shown } from '../lib/browser.js';
import { Server, freePort, killAll, tempDir, waitFor } from '../lib/server.js';

let browser;
before(async () => { browser = await launch(); });
after(async () => {
  await browser?.close();
  await killAll();
});

/**
 * Chromium itself logs every HTTP error response and every broken connection
 * of a page as a console error ("Failed to load resource: …"). Where a test
 * provokes one on purpose, it names it here; anything else fails the test.
 */
function unexpected(problems, allowed) {
  return problems.filter((p) => !allowed.some((re) => re.test(p)));
}

/** Opens the page on session `id` as `username` and waits for its `init`. */
async function openSession(page, base, id, username) {
  await page.goto(`${base}/#session=${id}&username=${encodeURIComponent(username)}`);
  await waitFor(`${username}'s page to be live`, async () => (await shown(page)).conn.state === 'live');
  await waitFor(`${username}'s init`, async () => (await shown(page)).log.some((e) => e.event === 'init'));
}

async function stateOf(server, id) {
  return (await server.expect(200, 'GET', `/sessions/${id}`));
}

/** The page's updates, in arrival order: their offsets. */
const updateOffsets = (s) => s.log.filter((e) => e.event === 'update').map((e) => e.offset);

describe('built-in page', () => {
  let server;
  before(async () => { server = await Server.start(); });
  after(async () => { await server?.kill('SIGTERM'); });

  test('lists sessions, creates one, shows API errors as returned', async () => {
    const page = await newPage(browser);
    const resp = await page.goto(server.base + '/');
    assert.equal(resp.status(), 200);
    assert.match(resp.headers()['content-type'], /^text\/html/);
    assert.match(resp.headers()['content-security-policy'], /default-src 'none'/);

    await page.fill('#username', 'ana');
    await page.fill('#initial', '{"title":"plan","items":[1,2]}');
    await page.click('#create');
    await waitFor('the new session to be live', async () => (await shown(page)).conn.state === 'live');
    const id = await page.textContent('#session-id');
    let s = await shown(page);
    assert.deepEqual(s.state, { title: 'plan', items: [1, 2] });
    assert.deepEqual(s.state, (await stateOf(server, id)).data);
    assert.deepEqual(s.people, ['ana']);

    // A body that is not JSON goes to the server as typed; its 422 is shown as returned.
    await page.fill('#editor', '{"title": ');
    await page.click('#patch');
    await page.waitForSelector('#edit-error:not([hidden])');
    const direct = await server.api('PATCH', `/sessions/${id}?username=ana`, '{"title": ');
    assert.equal(direct.status, 422);
    assert.equal(await page.textContent('#edit-error .code'), `422 ${direct.body.error}`);
    assert.equal(await page.textContent('#edit-error .message'), direct.body.message);

    // A stale If-Match: 412 from the server, shown as returned.
    await server.expect(200, 'PATCH', `/sessions/${id}?username=bo`, { by: 'bo' });
    await waitFor('bo\'s patch', async () => (await shown(page)).state.by === 'bo');
    // As if the page had not yet seen bo's write: its If-Match is stale.
    await page.evaluate(() => { window.sessiond.live.offset -= 1; });
    await page.check('#if-match');
    await page.fill('#editor', '{"x":1}');
    await page.click('#replace');
    await waitFor('the 412', async () => (await page.textContent('#edit-error .code')) === '412 precondition_failed');
    await page.uncheck('#if-match');

    // Merge patch and replace through the page itself.
    await page.fill('#editor', '{"items":null,"nested":{"a":1}}');
    await page.click('#patch');
    await page.waitForSelector('#edit-ok:not([hidden])');
    assert.equal(await page.isHidden('#edit-error'), true);
    await waitFor('the patch to show', async () => (await shown(page)).state.nested?.a === 1);
    s = await shown(page);
    assert.deepEqual(s.state, { title: 'plan', by: 'bo', nested: { a: 1 } });
    assert.deepEqual(s.state, (await stateOf(server, id)).data);

    // Back to the list: the session is there.
    await page.click('#leave');
    await page.waitForSelector(`#sessions li[data-id="${id}"]`);
    assert.equal(await page.textContent('#conn'), 'not connected');
    // Only the two error responses provoked above, each logged once by Chromium.
    const provoked = [/status of 422 \(Unprocessable Entity\)$/, /status of 412 \(Precondition Failed\)$/];
    assert.deepEqual(unexpected(page.problems, provoked), []);
    assert.equal(page.problems.length, 2, page.problems.join('\n'));
    await page.context().close();
  });

  test('two pages see each other\'s edits and presence', async () => {
    const { id } = await server.expect(201, 'POST', '/sessions', { n: 0 });
    const a = await newPage(browser);
    const b = await newPage(browser);
    await openSession(a, server.base, id, 'alice');
    await openSession(b, server.base, id, 'bob');
    await waitFor('alice to see bob', async () => (await shown(a)).people.includes('bob'));
    assert.deepEqual((await shown(b)).people.sort(), ['alice', 'bob']);
    assert.equal((await shown(a)).clients, 2);

    await a.fill('#editor', '{"n":1,"by":"alice"}');
    await a.click('#replace');
    await waitFor('bob to see alice\'s replace', async () => (await shown(b)).state?.by === 'alice');
    await b.fill('#editor', '{"n":2,"tags":{"bob":true}}');
    await b.click('#patch');
    await waitFor('alice to see bob\'s patch', async () => (await shown(a)).state?.n === 2);

    const truth = await stateOf(server, id);
    for (const p of [a, b]) {
      const s = await shown(p);
      assert.deepEqual(s.state, { n: 2, by: 'alice', tags: { bob: true } });
      assert.deepEqual(s.state, truth.data);
      assert.equal(Number(s.offset), truth.offset);
      assert.equal(updateOffsets(s).length, 2);
    }
    await screenshot(a, 'two-pages-alice.png');

    await b.context().close();
    await waitFor('alice to see bob leave', async () => {
      const s = await shown(a);
      return !s.people.includes('bob') && s.clients === 1 && s.log.some((e) => e.event === 'leave');
    });

    // A delete ends the stream; the page says so and stops reconnecting.
    await server.expect(204, 'DELETE', `/sessions/${id}?username=admin`);
    await waitFor('alice to see the delete', async () => (await shown(a)).conn.state === 'deleted');
    assert.equal(await a.evaluate(() => window.sessiond.live.es), null);
    assert.equal(await a.isVisible('#deleted-note'), true);
    assert.deepEqual(a.problems, []);
    assert.deepEqual(b.problems, []);
    await a.context().close();
  });

  test('narrow (mobile) window: no horizontal scrolling, controls reachable', async () => {
    const { id } = await server.expect(201, 'POST', '/sessions', {
      text: 'a fairly long line of text that must wrap instead of widening the page on a phone',
      list: Array.from({ length: 8 }, (_, i) => ({ i, label: `item number ${i}` })),
    });
    const page = await newPage(browser, {
      viewport: { width: 360, height: 740 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
    });
    await page.goto(server.base + '/');
    const overflow = () => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(await overflow() <= 0, 'home page scrolls sideways');
    await openSession(page, server.base, id, 'phone');
    for (const sel of ['#conn', '#state', '#editor', '#replace', '#patch', '#log']) {
      const box = await page.locator(sel).boundingBox();
      assert.ok(box && box.x >= 0 && box.x + box.width <= 360 + 0.5, `${sel} fits the width: ${JSON.stringify(box)}`);
    }
    await page.fill('#editor', '{"tapped":true}');
    await page.tap('#patch');
    await waitFor('the tap edit to show', async () => (await shown(page)).state?.tapped === true);
    assert.ok(await overflow() <= 0, 'session page scrolls sideways');
    // What the phone shows (a full-page capture would repeat the sticky bar).
    await page.evaluate(() => window.scrollTo(0, 0));
    await screenshot(page, 'mobile-session.png', { fullPage: false });
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('the page\'s merge patch follows RFC 7396 (Appendix A) and agrees with the server', async () => {
    const page = await newPage(browser);
    await page.goto(server.base + '/');
    const table = [
      [{ a: 'b' }, { a: 'c' }, { a: 'c' }],
      [{ a: 'b' }, { b: 'c' }, { a: 'b', b: 'c' }],
      [{ a: 'b' }, { a: null }, {}],
      [{ a: 'b', b: 'c' }, { a: null }, { b: 'c' }],
      [{ a: ['b'] }, { a: 'c' }, { a: 'c' }],
      [{ a: 'c' }, { a: ['b'] }, { a: ['b'] }],
      [{ a: { b: 'c' } }, { a: { b: 'd', c: null } }, { a: { b: 'd' } }],
      [{ a: [{ b: 'c' }] }, { a: [1] }, { a: [1] }],
      [['a', 'b'], ['c', 'd'], ['c', 'd']],
      [{ a: 'b' }, ['c'], ['c']],
      [{ a: 'foo' }, null, null],
      [{ a: 'foo' }, 'bar', 'bar'],
      [{ e: null }, { a: 1 }, { e: null, a: 1 }],
      [[1, 2], { a: 'b', c: null }, { a: 'b' }],
      [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }],
    ];
    for (const [target, patch, expected] of table) {
      const got = await page.evaluate(([t, p]) => window.sessiond.mergePatch(t, p), [target, patch]);
      assert.deepEqual(got, expected, `${JSON.stringify(target)} + ${JSON.stringify(patch)}`);
      // The server, through the API, agrees.
      const { id } = await server.expect(201, 'POST', '/sessions', JSON.stringify(target));
      await server.expect(200, 'PATCH', `/sessions/${id}`, JSON.stringify(patch));
      assert.deepEqual((await stateOf(server, id)).data, expected);
    }
    // A "__proto__" key is data: it neither changes the prototype nor is lost.
    const proto = await page.evaluate(() => {
      const out = window.sessiond.mergePatch({}, JSON.parse('{"__proto__":{"x":1}}'));
      return { json: JSON.stringify(out), plain: Object.getPrototypeOf(out) === Object.prototype, x: out.x };
    });
    assert.deepEqual(proto, { json: '{"__proto__":{"x":1}}', plain: true, x: undefined });
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  // cases.md case 2, in a real browser: presence frames never move the
  // browser's Last-Event-ID. A bare EventSource (not the page's code) records
  // MessageEvent.lastEventId of everything it dispatches.
  test('case 2: presence frames never move the browser\'s lastEventId', async () => {
    const { id } = await server.expect(201, 'POST', '/sessions', { v: 0 });
    const page = await newPage(browser);
    await page.goto(server.base + '/');
    await page.evaluate((id) => {
      window.seen = [];
      const record = (ev) => window.seen.push({ type: ev.type, lastEventId: ev.lastEventId, data: JSON.parse(ev.data) });
      window.openRaw = (query) => {
        const es = new EventSource(`/events/${id}?username=raw${query}`);
        for (const t of ['init', 'update', 'delete', 'join', 'leave']) es.addEventListener(t, record);
        window.raw = es;
      };
      window.openRaw('');
    }, id);
    const seen = () => page.evaluate(() => window.seen);
    await waitFor('init', async () => (await seen()).some((e) => e.type === 'init'));

    // An observer connects and disconnects 20 times; a write lands midway.
    let written = null;
    for (let i = 0; i < 20; i++) {
      if (i === 10) written = (await server.expect(200, 'PATCH', `/sessions/${id}`, { v: i })).offset;
      const ctl = new AbortController();
      const r = await fetch(`${server.base}/events/${id}?username=obs${i}`, { signal: ctl.signal });
      await r.body.getReader().read();
      await waitFor(`join of obs${i}`, async () => (await seen()).some((e) => e.type === 'join' && e.data.usernames.includes(`obs${i}`)));
      ctl.abort();
      await waitFor(`leave of obs${i}`, async () => (await seen()).some((e) => e.type === 'leave' && e.data.usernames.includes(`obs${i}`)));
    }
    const events = await seen();
    const init = events[0];
    assert.equal(init.type, 'init');
    assert.equal(init.lastEventId, String(init.data.session.offset));
    let cursor = init.lastEventId;
    let presence = 0;
    for (const e of events.slice(1)) {
      if (e.type === 'update') {
        assert.equal(e.lastEventId, String(e.data.offset));
        cursor = e.lastEventId;
      } else {
        assert.ok(e.type === 'join' || e.type === 'leave', e.type);
        assert.equal(e.lastEventId, cursor, `a ${e.type} moved lastEventId`);
        presence += 1;
      }
    }
    assert.ok(presence >= 40, `only ${presence} presence events`);
    assert.equal(cursor, String(written));
    assert.ok(['join', 'leave'].includes(events.at(-1).type), 'the last frames before the disconnect are presence');

    // Disconnect right after the presence burst, write while away, come back
    // with the id the browser holds: exactly the missed update, no init.
    const held = events.at(-1).lastEventId;
    await page.evaluate(() => window.raw.close());
    const missed = (await server.expect(200, 'PATCH', `/sessions/${id}`, { v: 'away' })).offset;
    await page.evaluate((held) => { window.seen = []; window.openRaw(`&lastEventId=${held}`); }, held);
    await waitFor('the missed update', async () => (await seen()).some((e) => e.type === 'update'));
    const live = (await server.expect(200, 'PATCH', `/sessions/${id}`, { v: 'live' })).offset;
    await waitFor('the live update', async () => (await seen()).filter((e) => e.type === 'update').length >= 2);
    const back = (await seen()).filter((e) => e.type !== 'join' && e.type !== 'leave');
    assert.deepEqual(back.map((e) => [e.type, e.lastEventId]), [['update', String(missed)], ['update', String(live)]]);
    await page.evaluate(() => window.raw.close());
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });
});

// The server dies (SIGKILL) under an open page. While the page's server is
// down, edits are made through the API of a second instance on the same
// DATA_DIR and another port (itself killed with SIGKILL afterwards), so the
// edits certainly happen while the page is disconnected. The server then
// comes back on the page's port: the browser's own EventSource reconnects
// with Last-Event-ID and the page must show every edit exactly once.
describe('kill -9 and restart under an open page', () => {
  test('the page resumes and shows every missed edit exactly once', async () => {
    const server = await Server.start();
    const { id } = await server.expect(201, 'POST', '/sessions', { count: 0 });
    const page = await newPage(browser);
    const other = await newPage(browser);
    await openSession(page, server.base, id, 'watcher');
    const beforeKill = [];
    for (let i = 1; i <= 3; i++) {
      beforeKill.push((await server.expect(200, 'PATCH', `/sessions/${id}?username=api`, { count: i })).offset);
    }
    await waitFor('the first edits', async () => updateOffsets(await shown(page)).length === 3);
    // Presence frames are the last thing the page gets before the crash (case 2).
    await openSession(other, server.base, id, 'visitor');
    await waitFor('the visitor to be seen', async () => (await shown(page)).people.includes('visitor'));
    await other.context().close();
    await waitFor('the visitor to leave', async () => !(await shown(page)).people.includes('visitor'));
    const cursor = await page.evaluate(() => window.sessiond.live.cursor);
    assert.equal(cursor, String(beforeKill.at(-1)));

    await server.kill('SIGKILL');
    await waitFor('the page to notice', async () => (await shown(page)).conn.state === 'reconnecting');

    const side = await Server.start({ dataDir: server.dataDir });
    const during = [];
    during.push((await side.expect(200, 'PATCH', `/sessions/${id}?username=api`, { count: 4, during: true })).offset);
    during.push((await side.expect(200, 'PUT', `/sessions/${id}?username=api`, { count: 5, replaced: 'yes', list: [1, 2, 3] })).offset);
    during.push((await side.expect(200, 'PATCH', `/sessions/${id}?username=api`, { list: null, deep: { x: { y: 1 } } })).offset);
    during.push((await side.expect(200, 'PATCH', `/sessions/${id}?username=api`, { deep: { x: { z: 2 } }, count: 6 })).offset);
    await side.kill('SIGKILL');
    assert.equal((await shown(page)).conn.state, 'reconnecting');
    assert.deepEqual(updateOffsets(await shown(page)), beforeKill);

    await server.start();
    await waitFor('the page to resume', async () => (await shown(page)).conn.state === 'resumed', 20000);
    assert.equal((await shown(page)).conn.text, `live · resumed from offset ${cursor}`);
    const late = (await server.expect(200, 'PATCH', `/sessions/${id}?username=api`, { after: true })).offset;
    await waitFor('every edit', async () => updateOffsets(await shown(page)).includes(late));

    const s = await shown(page);
    assert.deepEqual(updateOffsets(s), [...beforeKill, ...during, late], 'each edit once, in order');
    assert.equal(s.log.filter((e) => e.event === 'init').length, 1, 'no second init after the resume');
    const truth = await stateOf(server, id);
    assert.deepEqual(s.state, truth.data);
    assert.deepEqual(s.state, { count: 6, replaced: 'yes', deep: { x: { y: 1, z: 2 } }, after: true });
    assert.equal(Number(s.offset), truth.offset);
    await screenshot(page, 'resumed-after-kill.png');

    // Only Chromium's own report of the stream cut by the kill (and of
    // refused reconnects while the port was closed); the page logs nothing.
    const cut = [/Failed to load resource: net::ERR_(INCOMPLETE_CHUNKED_ENCODING|CONNECTION_REFUSED)$/];
    assert.deepEqual(unexpected(page.problems, cut), []);
    await page.context().close();
    await server.kill('SIGTERM');
  });
});

describe('STATIC_DIR', () => {
  test('serves the user\'s files instead, refuses paths outside, keeps the API', async () => {
    const outer = tempDir('sessiond-e2e-static-');
    fs.writeFileSync(path.join(outer, 'secret.txt'), 'secret');
    const dir = path.join(outer, 'site');
    fs.mkdirSync(path.join(dir, 'js'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'index.html'),
      '<!doctype html><title>mine</title><link rel="icon" href="data:,"><h1 id="h">my own client</h1><script src="/js/app.js"></script>');
    fs.writeFileSync(path.join(dir, 'js', 'app.js'), 'document.getElementById("h").dataset.ran = "yes";');
    const server = await Server.start({ env: { STATIC_DIR: dir } });

    const page = await newPage(browser);
    await page.goto(server.base + '/');
    assert.equal(await page.textContent('#h'), 'my own client');
    await waitFor('the user script', async () => (await page.getAttribute('#h', 'data-ran')) === 'yes');
    assert.deepEqual(page.problems, []);
    await page.context().close();

    // Raw requests: node's http sends the path as written (a browser or
    // fetch would normalise `..` away before sending).
    const raw = (p) => new Promise((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: server.port, path: p }, (res) => {
        let body = '';
        res.on('data', (c) => { body += c; });
        res.on('end', () => resolve({ status: res.statusCode, body }));
      }).on('error', reject);
    });
    for (const p of ['/../secret.txt', '/js/../../secret.txt', '/%2e%2e/secret.txt', '/%2E%2E%2Fsecret.txt', '/..%5Csecret.txt']) {
      const r = await raw(p);
      assert.equal(r.status, 403, p);
      assert.equal(JSON.parse(r.body).error, 'path_outside_static_dir', p);
      assert.ok(!r.body.includes('secret'), p);
    }
    assert.equal((await raw('/js/app.js')).status, 200);
    assert.equal((await raw('/app.js')).status, 404, 'the built-in page is replaced');
    const list = await raw('/sessions');
    assert.equal(list.status, 200);
    assert.ok(Array.isArray(JSON.parse(list.body).sessions));
    assert.equal((await raw('/openapi.json')).status, 200);
    await server.kill('SIGTERM');
  });

  test('a missing STATIC_DIR stops the server at startup with its name', async () => {
    const missing = path.join(tempDir('sessiond-e2e-'), 'nope');
    const s = new Server({ port: await freePort(), dataDir: tempDir('sessiond-e2e-'), env: { STATIC_DIR: missing } });
    await assert.rejects(s.start(), (e) => e.message.includes(`STATIC_DIR=${missing}`));
  });
});
