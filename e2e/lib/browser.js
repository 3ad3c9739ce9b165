// Headless Debian Chromium driven by playwright-core, and pages whose console
// errors and uncaught exceptions are collected so that tests can assert none.
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { artifacts } from './server.js';

export function chromiumPath() {
  const p = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
  if (!fs.existsSync(p)) throw new Error(`${p} not found: apt-get install chromium (e2e/run.sh does) or set CHROMIUM_PATH`);
  return p;
}

/**
 * A fresh browser that reaches nothing but localhost. Playwright gives every
 * launch its own new, empty --user-data-dir (it refuses one passed in args).
 */
export async function launch() {
  return chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/**
 * A new page in its own context, with `page.problems`: every console message
 * of type error or warning and every uncaught exception, as text.
 */
export async function newPage(browser, contextOptions = {}) {
  const context = await browser.newContext(contextOptions);
  const page = await context.newPage();
  page.problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') page.problems.push(`console.${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => page.problems.push(`uncaught: ${e.message}`));
  return page;
}

/** Saves a PNG under e2e/artifacts/: the whole page, or only the viewport. */
export async function screenshot(page, name, { fullPage = true } = {}) {
  fs.mkdirSync(artifacts, { recursive: true });
  const file = path.join(artifacts, name);
  await page.screenshot({ path: file, fullPage });
  return file;
}

/** What the page shows: state, offset, people, indicator, logged events. */
export async function shown(page) {
  return page.evaluate(() => {
    const $ = (id) => document.getElementById(id);
    const text = $('state').textContent;
    return {
      state: text ? JSON.parse(text) : undefined,
      offset: $('offset').textContent,
      people: [...document.querySelectorAll('#people li')].map((li) => li.firstChild.textContent),
      clients: Number($('clients').textContent),
      conn: { state: $('conn').dataset.state, text: $('conn').textContent },
      // oldest first
      log: [...document.querySelectorAll('#log li')].reverse().map((li) => ({
        event: li.dataset.event,
        offset: li.dataset.offset === undefined ? null : Number(li.dataset.offset),
        kind: li.dataset.kind || null,
      })),
    };
  });
}
