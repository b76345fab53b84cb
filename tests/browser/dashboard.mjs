// Drives the durably dashboard in Debian's chromium (playwright-core) as an operator
// would: a run triggered from the command line appears and progresses live, is
// cancelled with its button; a failed run is inspected and retried with its button
// and completes; the status tabs filter; a finished run is retriggered and deleted;
// a run waiting for a person is answered with its Signal button.
// The worker and the dashboard are separate processes (`durably worker`, `durably
// dashboard`), so everything the page shows came through the database.
//
// Usage: node dashboard.mjs <baseURL> <userDataDir> <screenshotDir> <gatesDir> <durably>
// (the environment carries DURABLY_DATABASE_URL and PYTHONPATH for `durably trigger`).
// Prints one JSON line with what it saw; exits non-zero (reason on stderr) on failure.
import { execFileSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { launch, watchErrors } from './launch.mjs'

const [base, userDataDir, shots, gates, durably] = process.argv.slice(2)
const TIMEOUT = 30000
const seen = {}

const trigger = (payload) =>
  JSON.parse(
    execFileSync(durably, [
      'trigger', 'import-csv', '--input', JSON.stringify(payload), '--app', 'ops_app:durably', '--json',
    ]).toString(),
  ).run.id
const gate = (name) => writeFileSync(join(gates, name), '')

const context = await launch(userDataDir, { viewport: { width: 1440, height: 860 } })
const pageErrors = []
try {
  const page = context.pages()[0] ?? (await context.newPage())
  page.setDefaultTimeout(TIMEOUT)
  watchErrors(page, pageErrors)
  page.on('dialog', (dialog) => dialog.accept())
  const requests = []
  page.on('request', (req) => requests.push(req.url()))

  const row = (id, status) =>
    page.waitForSelector(`#runs tr[data-id="${id}"]${status ? `[data-status="${status}"]` : ''}`)
  const rowProgress = (id, text) =>
    page.waitForFunction(
      ([i, t]) => document.querySelector(`#runs tr[data-id="${i}"] .progress-text`)?.textContent === t,
      [id, text],
      { timeout: TIMEOUT },
    )
  const detail = (id, status) =>
    page.waitForSelector(`#detail[data-id="${id}"]${status ? `[data-status="${status}"]` : ''}`)
  const rowIds = () => page.locator('#runs tbody tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.id))

  await page.goto(`${base}/`)
  await page.waitForSelector('body[data-loaded="true"]')
  await page.waitForSelector('#live[data-live="true"]')
  seen.initialRows = await rowIds()

  // 1. a run appears and progresses live
  const live = trigger({ rows: 3, gate: 'd' })
  await row(live, 'leased')
  gate('d-0')
  await rowProgress(live, '1/3 row 1 of 3')
  gate('d-1')
  await rowProgress(live, '2/3 row 2 of 3')
  await page.click(`#runs tr[data-id="${live}"]`)
  await detail(live, 'leased')
  await page.waitForSelector('#detail ol.timeline li[data-name="row-1"][data-status="completed"]')
  seen.liveSteps = await page.locator('#detail ol.timeline li').evaluateAll((lis) => lis.map((li) => li.dataset.name))
  await page.screenshot({ path: join(shots, 'dashboard-live.png') })

  // 2. cancel it with its button
  await page.click('#detail button[data-action="cancel"]')
  await row(live, 'cancelled')
  await detail(live, 'cancelled')
  seen.cancelled = live

  // 3. a failed run: inspect it, retry it once fixed
  const bad = trigger({ rows: 3, fail_until_fixed: true })
  await row(bad, 'failed')
  await page.click(`#runs tr[data-id="${bad}"]`)
  await detail(bad, 'failed')
  await page.waitForSelector('#detail ol.timeline li[data-name="check"][data-status="failed"]')
  seen.error = await page.locator('#detail-error').innerText()
  seen.failedSteps = await page
    .locator('#detail ol.timeline li')
    .evaluateAll((lis) => lis.map((li) => `${li.dataset.name}:${li.dataset.status}`))
  seen.failedLogs = await page.locator('#detail table.logs tr').count()
  await page.screenshot({ path: join(shots, 'dashboard-failed.png') })
  writeFileSync(join(gates, 'fixed'), '')
  await page.click('#detail button[data-action="retry"]')
  await detail(bad, 'completed')
  await row(bad, 'completed')
  seen.output = JSON.parse(await page.locator('#detail-output').innerText())
  seen.retried = bad
  await page.screenshot({ path: join(shots, 'dashboard-retried.png') })

  // 4. the status tabs filter the list
  await page.click('.tab[data-status="cancelled"]')
  await page.waitForFunction(
    (id) => [...document.querySelectorAll('#runs tbody tr')].map((tr) => tr.dataset.id).join() === id,
    live,
  )
  seen.cancelledTab = await rowIds()
  seen.counts = await page
    .locator('.tab')
    .evaluateAll((tabs) => Object.fromEntries(tabs.map((t) => [t.dataset.status, t.querySelector('.count').textContent])))
  await page.click('.tab[data-status="all"]')
  await page.waitForFunction(() => document.querySelectorAll('#runs tbody tr').length === 2)

  // 5. retrigger the completed run, then delete the original
  await page.click(`#runs tr[data-id="${bad}"]`)
  await detail(bad, 'completed')
  await page.click('#detail button[data-action="retrigger"]')
  await page.waitForFunction((id) => {
    const d = document.querySelector('#detail')
    return d?.dataset.id && d.dataset.id !== id
  }, bad)
  seen.retriggered = await page.locator('#detail').getAttribute('data-id')
  await detail(seen.retriggered, 'completed') // the worker ran it (the fix is in)
  await page.click(`#runs tr[data-id="${bad}"]`)
  await detail(bad, 'completed')
  await page.click('#detail button[data-action="delete"]')
  await page.waitForFunction((id) => !document.querySelector(`#runs tr[data-id="${id}"]`), bad)
  seen.finalRows = await rowIds()

  // 6. a run waiting for a person: its wait shows in the detail, and the Signal
  // button answers it (the worker, another process, resumes it)
  const expense = JSON.parse(
    execFileSync(durably, ['trigger', 'expense', '--input', '{"amount": 120}', '--app', 'ops_app:durably', '--json']).toString(),
  ).run.id
  await row(expense, 'waiting')
  await page.click(`#runs tr[data-id="${expense}"]`)
  await detail(expense, 'waiting')
  await page.waitForSelector('#detail ul.waits li[data-name="approval"][data-status="pending"]')
  seen.waitMetadata = JSON.parse(await page.locator('#detail .wait-metadata').innerText())
  seen.waitingTab = await page.locator('.tab[data-status="waiting"] .count').innerText()
  await page.fill('#detail form.signal[data-wait="approval"] textarea', '{"approved": true, "by": "dashboard"}')
  await page.screenshot({ path: join(shots, 'dashboard-waiting.png') })
  await page.click('#detail form.signal[data-wait="approval"] button[data-action="signal"]')
  await detail(expense, 'completed')
  seen.signalled = JSON.parse(await page.locator('#detail-output').innerText())
  await page.waitForSelector('#detail ul.waits li[data-name="approval"][data-status="resolved"]')
  seen.waitResult = await page.locator('#detail ul.waits .wait-result').innerText()
  seen.signalForms = await page.locator('#detail form.signal').count()
  seen.expense = expense
  seen.offline = requests.every((url) => url.startsWith(base))
} finally {
  seen.pageErrors = pageErrors
  await context.close()
}
console.log(JSON.stringify(seen))
