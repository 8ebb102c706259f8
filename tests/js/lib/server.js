// Starts the real moonwire binary for the integration and browser tests.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '../../..');
export const BIN = process.env.MOONWIRE_BIN || resolve(repoRoot, 'build/core/moonwire');

/** Polls cond() until it returns a truthy value or the deadline passes. */
export async function waitFor(cond, { timeout = 10000, interval = 10, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** Writes a policy file in a fresh temporary directory; returns its path. */
export function policyFile(text) {
  const dir = mkdtempSync(join(tmpdir(), 'mw-js-policy-'));
  const p = join(dir, 'policy.lua');
  writeFileSync(p, text);
  return p;
}

/** User ids from ?token=; refuses the transports named in `deny`. */
export function usersPolicy(deny = []) {
  return policyFile(`
local denied = { ${deny.map((t) => `["${t}"] = true`).join(', ')} }
function on_connect(req)
  if denied[req.transport] then return nil, 403, "transport " .. req.transport .. " disabled by policy" end
  return { user_id = req.token or "anonymous" }
end
function on_subscribe(conn, topic)
  return true, { presence = true }
end
`);
}

export class Server {
  constructor({ port = 0, policy = null, args = [] } = {}) {
    this.port = port;
    this.policy = policy;
    this.args = args;
    this.proc = null;
    this.log = '';
  }

  async start() {
    const args = ['--listen', `127.0.0.1:${this.port}`, '--workers', '2', ...this.args];
    if (this.policy) args.push('--policy', this.policy);
    this.proc = spawn(BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.exited = new Promise((r) => this.proc.once('exit', (code, sig) => r({ code, sig })));
    const port = await new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`moonwire did not start:\n${this.log}`)), 10000);
      this.proc.stderr.on('data', (d) => {
        this.log += d.toString();
        const m = /listening on 127\.0\.0\.1:(\d+)/.exec(this.log);
        if (m) { clearTimeout(timer); res(Number(m[1])); }
      });
      this.proc.once('exit', (code) => { clearTimeout(timer); rej(new Error(`moonwire exited (${code}):\n${this.log}`)); });
    });
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    return this;
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 15000);
    await this.exited;
    clearTimeout(timer);
  }

  async api(method, path, body) {
    const res = await fetch(this.url + path, { method, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return JSON.parse(text);
  }

  publish(topic, event = 'ADDED', data = {}) { return this.api('POST', '/api/publish', { topic, event, data }); }
  disconnect(userId) { return this.api('POST', '/api/disconnect', { user_id: userId }); }
}
