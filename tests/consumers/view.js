// Opens tracealloc's outputs in headless Chromium and takes screenshots:
//   node view.js FLAMEGRAPH.svg DHAT.json TIMELINE.svg OUT_DIR [PPROF_WEB_UI_URL]
// The DHAT file is loaded through dh_view.html's own file input, as a user would. Exits
// non-zero when the viewer reports an error or the pages do not show what they should.
// Needs playwright-core (npm) and Debian's chromium; see tests/consumers/README.md.
const { chromium } = require('playwright-core');
const path = require('path');

const [flame, dhat, timeline, out, webui] = process.argv.slice(2);
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
  const subtitle = await page.locator('#subtitle').textContent();
  console.log(`flame graph subtitle: ${subtitle}`);
  if (!/^report: [0-9.]+ [KMG]?i?B in [0-9,]+ blocks · [a-z-]+ · \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC/.test(subtitle)) {
    console.log('the flame graph subtitle does not say program, bytes, blocks, capture and time');
    failed = true;
  }
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
  // Block lifetimes are in the file: the t-gmax and short-lived sorts are enabled, the first
  // lists the peak's lines, the second the report example's format! loop.
  const options = await page.$$eval('select option', os => os.map(o => [o.label, o.disabled]));
  const off = options.filter(([label, disabled]) => /t-gmax|short-lived/.test(label) && disabled);
  if (off.length || !options.some(([label]) => /t-gmax/.test(label))) {
    console.log('dh_view disables the lifetime sorts: ' + JSON.stringify(options));
    failed = true;
  }
  for (const [label, want, shot] of [
    ['At t-gmax (bytes)', /At t-gmax: [0-9.,]+ bytes[\s\S]*index_workload\.rs/, 'dh_view-tgmax.png'],
    ['Total (blocks), short-lived', /avg lifetime [0-9.,]+ µs[\s\S]*report::labels/, 'dh_view-short.png'],
  ]) {
    await page.selectOption('select', { label });
    await page.waitForTimeout(1000);
    const shown = await page.locator('body').innerText();
    const first = shown.split('\n').filter(l => /PP 1\/|At t-gmax:|avg lifetime|labels/.test(l)).slice(0, 3).join(' | ');
    console.log(`dh_view ${label}: ${first}`);
    if (!want.test(shown)) {
      console.log(`dh_view sorted by ${label} does not show what it should: ` + shown.slice(0, 800));
      failed = true;
    }
    await page.screenshot({ path: path.join(out, shot), fullPage: false });
  }

  // Timeline chart, with the tracer's own tables as a line.
  await page.goto('file://' + path.resolve(timeline));
  // An SVG document has no <body>: read the text of its root.
  const legend = await page.evaluate(() => document.documentElement.textContent);
  if (!/tracer's tables/.test(legend)) {
    console.log('the timeline has no tracer line: ' + legend.slice(0, 300));
    failed = true;
  }
  await page.screenshot({ path: path.join(out, 'timeline.png') });

  // pprof's web UI: the profile is named after the binary, not "unknown".
  if (webui) {
    await page.goto(webui);
    await page.waitForTimeout(1500);
    const ui = await page.locator('body').innerText();
    const header = ui.split('\n').filter(l => /inuse_space|unknown/.test(l)).slice(0, 2).join(' | ');
    console.log(`pprof web UI: ${header}`);
    if (!/service/.test(ui) || /\bunknown\b/.test(ui)) {
      console.log('the web UI does not name the binary: ' + ui.slice(0, 300));
      failed = true;
    }
    await page.screenshot({ path: path.join(out, 'pprof-webui.png') });
  }

  await browser.close();
  process.exit(failed ? 1 : 0);
})().catch(e => { console.error(e); process.exit(2); });
