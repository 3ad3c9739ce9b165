// The real sessiond binary as a child process: start on a port with a
// DATA_DIR, wait until it answers, kill it with any signal, restart it.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, '..', '..');
export const artifacts = path.join(repo, 'e2e', 'artifacts');

/** The server binary: $SESSIOND_BIN, else target/release or target/debug, the newer one. */
export function binary() {
  if (process.env.SESSIOND_BIN) return process.env.SESSIOND_BIN;
  const candidates = ['release', 'debug']
    .map((p) => path.join(repo, 'target', p, 'sessiond'))
    .filter((p) => fs.existsSync(p))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
  if (!candidates.length) throw new Error('no sessiond binary: run `cargo build` first or set SESSIOND_BIN');
  return candidates[0];
}

/** A port that was free a moment ago. */
export async function freePort() {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  srv.close();
  await once(srv, 'close');
  return port;
}

// Every temporary directory made by this test run; removed when the run ends.
const tempDirs = new Set();

export function tempDir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits for `cond()` to be truthy, polling; fails with `what` after `ms`. */
export async function waitFor(what, cond, ms = 15000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await cond();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await sleep(50);
  }
}

// Every server process started by this test run; killed when the run ends,
// whatever happened to the test that started it.
const running = new Set();
process.on('exit', () => {
  for (const proc of running) proc.kill('SIGKILL');
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** SIGKILLs every server still running (for a test file's `after` hook). */
export async function killAll() {
  await Promise.all([...running].map(async (proc) => {
    const gone = once(proc, 'exit');
    proc.kill('SIGKILL');
    await gone;
  }));
}

export class Server {
  constructor({ port, dataDir, env = {} }) {
    this.port = port;
    this.dataDir = dataDir;
    this.env = env;
    this.base = `http://127.0.0.1:${port}`;
    this.proc = null;
    this.output = '';
  }

  static async start(opts = {}) {
    const s = new Server({
      port: opts.port ?? (await freePort()),
      dataDir: opts.dataDir ?? tempDir('sessiond-e2e-'),
      env: opts.env ?? {},
    });
    await s.start();
    return s;
  }

  async start() {
    this.output = '';
    const proc = spawn(binary(), [], {
      env: {
        PATH: process.env.PATH,
        RUST_LOG: 'info',
        HOST: '127.0.0.1',
        PORT: String(this.port),
        DATA_DIR: this.dataDir,
        ...this.env,
      },
      cwd: this.dataDir,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    running.add(proc);
    proc.on('exit', () => running.delete(proc));
    proc.stdout.on('data', (b) => { this.output += b; });
    proc.stderr.on('data', (b) => { this.output += b; });
    this.exited = once(proc, 'exit');
    await waitFor(`sessiond on port ${this.port} to answer /status`, async () => {
      if (proc.exitCode !== null) throw new Error(`sessiond exited with ${proc.exitCode}: ${this.output}`);
      const r = await fetch(`${this.base}/status`).catch(() => null);
      return r && r.ok;
    });
  }

  /** Sends `signal` and waits for the process to be gone. */
  async kill(signal = 'SIGKILL') {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill(signal);
    await this.exited;
  }

  /** An API call: {status, headers, body (parsed JSON or null)}. */
  async api(method, p, body, headers = {}) {
    const init = { method, headers: { ...headers } };
    if (body !== undefined) {
      init.body = typeof body === 'string' ? body : JSON.stringify(body);
      init.headers['content-type'] = 'application/json';
    }
    const r = await fetch(this.base + p, init);
    const text = await r.text();
    return { status: r.status, headers: r.headers, body: text ? JSON.parse(text) : null };
  }

  async expect(status, method, p, body, headers) {
    const r = await this.api(method, p, body, headers);
    if (r.status !== status) {
      throw new Error(`${method} ${p}: expected ${status}, got ${r.status}: ${JSON.stringify(r.body)}`);
    }
    return r.body;
  }
}
