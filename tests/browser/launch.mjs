// Debian's chromium, headless, through playwright-core: the one way the browser
// tests start it (no browser download, no network beyond the page's server).
import { chromium } from 'playwright-core'

export function launch(userDataDir, options = {}) {
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    ...options,
  })
}

// Collects the page's errors (uncaught exceptions, console errors but failed loads).
export function watchErrors(page, pageErrors) {
  page.on('pageerror', (err) => pageErrors.push(String(err)))
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !msg.text().includes('Failed to load resource'))
      pageErrors.push(msg.text())
  })
}
