// Opens tracealloc's outputs in headless Chromium and takes screenshots:
//   node view.js FLAMEGRAPH.svg DHAT.json TIMELINE.svg OUT_DIR
// The DHAT file is loaded through dh_view.html's own file input, as a user would. Exits
// non-zero when the viewer reports an error or the pages do not show what they should.
// Needs playwright-core (npm) and Debian's chromium; see tests/consumers/README.md.
const { chromium } = require('playwright-core');
const path = require('path');

const [flame, dhat, timeline, out] = process.argv.slice(2);
const DH_VIEW = process.env.DH_VIEW || '/usr/libexec/valgrind/dh_view.html';

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  let failed = false;

  // Flame graph: inferno's SVG runs its own script; check it drew frames.
  await page.goto('file://' + path.resolve(flame));
  const frames = await page.locator('g > title').count();
  console.log(`flame graph: ${frames} frames drawn`);
  if (frames < 3) failed = true;
  await page.screenshot({ path: path.join(out, 'flamegraph.png') });

  // DHAT viewer: load the JSON through the page's file input.
  await page.goto('file://' + DH_VIEW);
  await page.setInputFiles('input[type=file]', path.resolve(dhat));
  await page.waitForTimeout(1500);
  const text = await page.locator('body').innerText();
  const error = /error|missing a field|repeated location/i.exec(text);
  console.log(`dh_view: ${text.split('\n').filter(l => /Total:|PP 1\b|Invocation|Mode/.test(l)).slice(0, 4).join(' | ')}`);
  if (error || !/Total:/.test(text)) {
    console.log('dh_view did not load the file: ' + text.slice(0, 500));
    failed = true;
  }
  await page.screenshot({ path: path.join(out, 'dh_view.png'), fullPage: false });

  // Timeline chart.
  await page.goto('file://' + path.resolve(timeline));
  await page.screenshot({ path: path.join(out, 'timeline.png') });

  await browser.close();
  process.exit(failed ? 1 : 0);
})().catch(e => { console.error(e); process.exit(2); });
