// Drives the page in Debian's chromium through playwright-core and checks what the
// page shows: trigger, live progress to completion, runs list, cancel, retrigger,
// delete. Usage: node drive.mjs <baseURL> <userDataDir>. Prints one JSON line with
// what it saw; exits non-zero (with the reason on stderr) on any failure.
import { launch, watchErrors } from './launch.mjs'

const [base, userDataDir] = process.argv.slice(2)
const TIMEOUT = 15000
const seen = {}

const context = await launch(userDataDir)
const pageErrors = []
try {
  const page = context.pages()[0] ?? (await context.newPage())
  page.setDefaultTimeout(TIMEOUT)
  watchErrors(page, pageErrors)

  const gate = async (name) => {
    const r = await fetch(`${base}/test/gate?name=${encodeURIComponent(name)}`, { method: 'POST' })
    if (!r.ok) throw new Error(`gate ${name}: ${r.status}`)
  }
  const text = (sel) => page.locator(sel).innerText()
  const waitText = (sel, expected) =>
    page.waitForFunction(
      ([s, e]) => document.querySelector(s)?.textContent === e,
      [sel, expected],
      { timeout: TIMEOUT },
    )
  const row = (id) => page.locator(`#runs li[data-id="${id}"]`)
  const waitRowStatus = (id, status) =>
    page.waitForSelector(`#runs li[data-id="${id}"][data-status="${status}"]`)
  const runIds = () =>
    page.locator('#runs li').evaluateAll((lis) => lis.map((li) => li.dataset.id))

  await page.goto(`${base}/`)
  await page.waitForSelector('#runs-state[data-loading="false"]', { state: 'attached' })
  seen.initialRuns = await runIds()

  // 1. trigger, live progress to completion
  await page.fill('#key', 'b-one')
  await page.click('#trigger')
  await page.waitForFunction(() => document.querySelector('#run-id').textContent !== '')
  const first = await text('#run-id')
  await waitText('#status', 'leased')
  await waitRowStatus(first, 'leased')
  const progress = []
  for (let i = 0; i < 3; i++) {
    await gate(`b-one:${i}`)
    if (i < 2) {
      await waitText('#progress', `${i + 1}/3 step ${i + 1}`)
      progress.push(await text('#progress'))
    }
  }
  await waitText('#status', 'completed')
  progress.push(await text('#progress'))
  seen.first = { id: first, progress, output: await text('#output') }
  await waitRowStatus(first, 'completed')

  // 2. cancel a running run from the list
  await page.fill('#key', 'b-two')
  await page.click('#trigger')
  await page.waitForFunction((prev) => {
    const t = document.querySelector('#run-id').textContent
    return t !== '' && t !== prev
  }, first)
  const second = await text('#run-id')
  await waitText('#status', 'leased')
  await waitRowStatus(second, 'leased')
  await row(second).locator('button.cancel').click()
  await waitText('#action-result', 'cancel:ok:')
  await waitText('#status', 'cancelled')
  await waitRowStatus(second, 'cancelled')
  seen.second = { id: second, status: await text('#status') }

  // 3. retrigger the cancelled run: a new run appears, is followed, and completes
  await row(second).locator('button.retrigger').click()
  await page.waitForFunction(() =>
    document.querySelector('#action-result').textContent.startsWith('retrigger:ok:'),
  )
  const third = (await text('#action-result')).slice('retrigger:ok:'.length)
  await page.waitForSelector(`#runs li[data-id="${third}"]`)
  await waitText('#run-id', third) // useJob follows the latest run of the job
  await waitText('#status', 'leased')
  for (let i = 0; i < 3; i++) await gate(`b-two:${i}`)
  await waitText('#status', 'completed')
  await waitRowStatus(third, 'completed')
  seen.third = { id: third, output: await text('#output') }
  seen.runsAfterRetrigger = await runIds()

  // 4. delete the first run from the list
  await row(first).locator('button.delete').click()
  await waitText('#action-result', 'delete:ok:')
  await page.waitForFunction(
    (id) => !document.querySelector(`#runs li[data-id="${id}"]`),
    first,
  )
  seen.runsAfterDelete = await runIds()
  seen.pageErrors = pageErrors
  console.log(JSON.stringify(seen))
} catch (err) {
  console.error(`drive.mjs failed: ${err?.stack ?? err}`)
  console.error(`seen so far: ${JSON.stringify(seen)}; page errors: ${JSON.stringify(pageErrors)}`)
  process.exitCode = 1
} finally {
  await context.close()
}
