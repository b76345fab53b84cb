// The durably dashboard: plain JavaScript, no build step, no network but the
// handler it is served by (every URL is relative to the handler's mount point).
// State lives in the URL's hash (#status=failed&job=x&run=ID), so a view can be
// bookmarked and shared. Live: one EventSource on `watch` (the database's changes,
// whichever process made them); each frame updates progress in place and schedules
// a refetch of what it touched.
'use strict'

const PAGE_SIZE = 50
const STATUSES = ['pending', 'leased', 'waiting', 'completed', 'failed', 'cancelled']
const TERMINAL = new Set(['completed', 'failed', 'cancelled'])
const $ = (sel) => document.querySelector(sel)

const state = { status: '', job: '', label: '', run: '', offset: 0 }
let runs = []
let source = null

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue
    if (key === 'class') node.className = value
    else if (key.startsWith('data-')) node.setAttribute(key, value)
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value)
    else node[key] = value
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue
    node.append(child instanceof Node ? child : document.createTextNode(String(child)))
  }
  return node
}

// -- the URL's hash holds the view --

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1))
  state.status = params.get('status') ?? ''
  state.job = params.get('job') ?? ''
  state.label = params.get('label') ?? ''
  state.run = params.get('run') ?? ''
  state.offset = Number.parseInt(params.get('offset') ?? '0', 10) || 0
}

function writeHash(changes) {
  Object.assign(state, changes)
  const params = new URLSearchParams()
  for (const key of ['status', 'job', 'label', 'run']) if (state[key]) params.set(key, state[key])
  if (state.offset) params.set('offset', String(state.offset))
  const hash = params.toString()
  if (location.hash.slice(1) !== hash) location.hash = hash
  else render()
}

function filterParams() {
  const params = new URLSearchParams()
  if (state.job) params.append('jobName', state.job)
  if (state.label) {
    const [key, ...rest] = state.label.split('=')
    if (key && rest.length) params.append(`label.${key.trim()}`, rest.join('=').trim())
  }
  return params
}

// -- talking to the handler --

async function api(method, path, params, data) {
  const url = params && [...params].length ? `${path}?${params}` : path
  const headers = { Accept: 'application/json' }
  const init = { method, headers }
  if (data !== undefined) {
    headers['Content-Type'] = 'application/json'
    init.body = JSON.stringify(data)
  }
  const response = await fetch(url, init)
  const text = await response.text()
  const body = text ? JSON.parse(text) : null
  if (!response.ok) throw new Error(body?.error ?? `${response.status} ${response.statusText}`)
  return body
}

function toast(message, kind = 'info') {
  const node = $('#toast')
  node.textContent = message
  node.dataset.kind = kind
  node.hidden = false
  clearTimeout(toast.timer)
  toast.timer = setTimeout(() => (node.hidden = true), 5000)
}

// -- the list --

async function loadList() {
  const params = filterParams()
  if (state.status) params.append('status', state.status)
  params.set('limit', String(PAGE_SIZE + 1))
  params.set('offset', String(state.offset))
  try {
    const [found, counts] = await Promise.all([
      api('GET', 'runs', params),
      api('GET', 'counts', filterParams()),
    ])
    runs = found.slice(0, PAGE_SIZE)
    renderTabs(counts)
    renderRuns(found.length > PAGE_SIZE)
  } catch (err) {
    toast(`Could not load runs: ${err.message}`, 'error')
  }
}

function renderTabs(counts) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0)
  const tab = (status, label, count) =>
    el(
      'a',
      {
        href: '#',
        class: 'tab',
        'data-status': status || 'all',
        'data-active': String(state.status === status),
        onclick: (e) => {
          e.preventDefault()
          writeHash({ status, offset: 0 })
        },
      },
      label,
      el('span', { class: 'count' }, String(count)),
    )
  $('#tabs').replaceChildren(
    tab('', 'all', total),
    ...STATUSES.map((s) => tab(s, s, counts[s] ?? 0)),
  )
}

function progressBar(progress) {
  if (!progress) return el('span', { class: 'progress-text' })
  const { current, total, message } = progress
  const pct = total ? Math.max(0, Math.min(100, (current / total) * 100)) : null
  const text = (total ? `${current}/${total}` : `${current}`) + (message ? ` ${message}` : '')
  return el(
    'span',
    { class: 'progress' },
    pct === null ? null : el('span', { class: 'bar' }, el('span', { class: 'fill', style: `width:${pct}%` })),
    el('span', { class: 'progress-text' }, text),
  )
}

function ago(iso) {
  if (!iso) return '-'
  const seconds = (Date.now() - Date.parse(iso)) / 1000
  if (seconds < 5) return 'just now'
  for (const [size, unit] of [[86400, 'd'], [3600, 'h'], [60, 'm']])
    if (seconds >= size) return `${Math.floor(seconds / size)}${unit} ago`
  return `${Math.floor(seconds)}s ago`
}

function badge(status) {
  return el('span', { class: 'badge', 'data-status': status }, status)
}

function renderRuns(hasMore) {
  const rows = runs.map((run) =>
    el(
      'tr',
      {
        'data-id': run.id,
        'data-status': run.status,
        'data-selected': String(run.id === state.run),
        onclick: () => writeHash({ run: run.id }),
      },
      el('td', { class: 'id' }, run.id),
      el('td', {}, run.jobName),
      el('td', { class: 'status' }, badge(run.status)),
      el('td', { class: 'progress-cell' }, progressBar(run.progress)),
      el('td', { class: 'steps' }, String(run.completedStepCount)),
      el('td', { title: run.createdAt }, ago(run.createdAt)),
      el('td', { class: 'labels' }, Object.entries(run.labels ?? {}).map(([k, v]) => el('span', { class: 'label' }, `${k}=${v}`))),
    ),
  )
  $('#runs tbody').replaceChildren(...rows)
  $('#empty').hidden = runs.length > 0
  $('#prev').disabled = state.offset === 0
  $('#next').disabled = !hasMore
  $('#page').textContent = runs.length ? `${state.offset + 1}–${state.offset + runs.length}` : ''
  document.body.dataset.loaded = 'true'
}

// -- one run --

async function loadDetail() {
  const panel = $('#detail')
  if (!state.run) {
    panel.hidden = true
    panel.replaceChildren()
    return
  }
  const id = state.run
  const params = new URLSearchParams({ runId: id })
  try {
    const [run, steps, logs, waits] = await Promise.all([
      api('GET', 'run', params),
      api('GET', 'steps', params),
      api('GET', 'logs', params),
      // an authenticated handler without on_run_access refuses the wait routes (403):
      // the rest of the run still shows
      api('GET', 'waits', params).catch((err) => ({ error: err.message })),
    ])
    if (state.run === id) renderDetail(run, steps, logs, waits)
  } catch (err) {
    panel.hidden = false
    panel.replaceChildren(el('p', { class: 'error' }, `Run ${id}: ${err.message}`))
  }
}

function json(value) {
  return JSON.stringify(value, null, 2)
}

function duration(start, end) {
  if (!start || !end) return ''
  const ms = Date.parse(end) - Date.parse(start)
  return ms < 1000 ? `${ms}ms` : ms < 60000 ? `${(ms / 1000).toFixed(1)}s` : `${(ms / 60000).toFixed(1)}m`
}

function action(name, label, run, method, path, confirmText) {
  return el(
    'button',
    {
      type: 'button',
      class: `action ${name}`,
      'data-action': name,
      onclick: async () => {
        if (confirmText && !window.confirm(confirmText)) return
        try {
          const result = await api(method, path, new URLSearchParams({ runId: run.id }))
          if (name === 'retrigger' && result?.runId) {
            toast(`Retriggered as ${result.runId}`)
            writeHash({ run: result.runId })
          } else if (name === 'delete') {
            toast(`Deleted ${run.id}`)
            writeHash({ run: '' })
          } else {
            toast(`${label}: ${run.id}`)
          }
          refreshSoon(true)
        } catch (err) {
          toast(`${label} failed: ${err.message}`, 'error')
        }
      },
    },
    label,
  )
}

function timeline(run, steps) {
  if (!steps.length) {
    const note = run.status === 'completed' ? 'Steps are deleted when a run completes (preserve_steps=False).' : 'No steps yet.'
    return el('p', { class: 'muted' }, note)
  }
  const start = Date.parse(run.startedAt ?? steps[0].startedAt)
  const last = Math.max(...steps.map((s) => Date.parse(s.completedAt ?? s.startedAt)))
  // a run still going: the timeline runs up to now
  const end = Math.max(TERMINAL.has(run.status) ? last : Date.now(), start + 1)
  return el(
    'ol',
    { class: 'timeline' },
    steps.map((step) => {
      const left = ((Date.parse(step.startedAt) - start) / (end - start)) * 100
      const width = Math.max(((Date.parse(step.completedAt ?? step.startedAt) - Date.parse(step.startedAt)) / (end - start)) * 100, 0.8)
      return el(
        'li',
        { 'data-status': step.status, 'data-name': step.name },
        el('span', { class: 'step-name' }, `${step.index}. ${step.name}`),
        el('span', { class: 'track' }, el('span', { class: 'span', style: `left:${left}%;width:${width}%` })),
        el('span', { class: 'step-meta' }, badge(step.status), ' ', duration(step.startedAt, step.completedAt)),
        step.error ? el('pre', { class: 'step-error' }, step.error) : null,
      )
    }),
  )
}

// A run's durable waits; a pending signal wait gets a form that answers it
// (POST signal: its payload becomes the wait's result and a worker resumes the run).
function waitList(run, waits) {
  if (waits.error !== undefined)
    return run.isWaiting ? [el('h3', {}, 'Waits'), el('p', { class: 'muted' }, `Cannot show them: ${waits.error}`)] : null
  if (!waits.length) return null
  return [
    el('h3', {}, `Waits (${waits.length})`),
    el(
      'ul',
      { class: 'waits' },
      waits.map((wait) => {
        const result =
          wait.outcome === 'signal'
            ? `signal${wait.signalId ? ` ${wait.signalId}` : ''}: ${JSON.stringify(wait.payload)}`
            : wait.outcome === 'timeout'
              ? 'timed out'
              : run.isWaiting && wait.status === 'pending' && wait.suspendedAt
                ? `the run waits here since ${wait.suspendedAt}`
                : ''
        const open = wait.kind === 'signal' && wait.status === 'pending' && !TERMINAL.has(run.status)
        return el(
          'li',
          { 'data-name': wait.name, 'data-status': wait.status },
          el('span', { class: 'wait-name' }, wait.name),
          ' ',
          badge(wait.status),
          el('span', { class: 'muted' }, ` ${wait.kind}`, wait.deadlineAt ? ` · deadline ${wait.deadlineAt}` : ''),
          result ? el('div', { class: 'wait-result' }, result) : null,
          wait.metadata === null || wait.metadata === undefined ? null : el('pre', { class: 'wait-metadata' }, json(wait.metadata)),
          open ? signalForm(run, wait) : null,
        )
      }),
    ),
  ]
}

function signalForm(run, wait) {
  const payload = el('textarea', { class: 'signal-payload', rows: 3, spellcheck: false, placeholder: 'payload (JSON)' })
  payload.value = '{}'
  const submit = async (e) => {
    e.preventDefault()
    let value
    try {
      value = JSON.parse(payload.value)
    } catch (err) {
      toast(`The payload is not JSON: ${err.message}`, 'error')
      return
    }
    try {
      const receipt = await api('POST', 'signal', new URLSearchParams({ runId: run.id }), { name: wait.name, payload: value })
      toast(`Signal ${receipt.disposition}: ${wait.name}`)
      refreshSoon(true)
    } catch (err) {
      toast(`Signal failed: ${err.message}`, 'error')
    }
  }
  return el(
    'form',
    { class: 'signal', 'data-wait': wait.name, onsubmit: submit },
    payload,
    el('button', { type: 'submit', class: 'action signal', 'data-action': 'signal' }, 'Signal'),
  )
}

function renderDetail(run, steps, logs, waits) {
  const panel = $('#detail')
  // a live refresh must not lose a payload being typed
  const typed = new Map(
    panel.dataset.id === run.id
      ? [...panel.querySelectorAll('form.signal')].map((f) => [f.dataset.wait, f.querySelector('textarea').value])
      : [],
  )
  panel.hidden = false
  panel.dataset.id = run.id
  panel.dataset.status = run.status
  const buttons = []
  if (!TERMINAL.has(run.status)) buttons.push(action('cancel', 'Cancel', run, 'POST', 'cancel'))
  if (run.status === 'failed' || run.status === 'cancelled') buttons.push(action('retry', 'Retry', run, 'POST', 'retry'))
  if (TERMINAL.has(run.status)) {
    buttons.push(action('retrigger', 'Retrigger', run, 'POST', 'retrigger'))
    buttons.push(action('delete', 'Delete', run, 'DELETE', 'run', `Delete run ${run.id}?`))
  }
  const parts = [
    el(
      'div',
      { class: 'detail-head' },
      el('h2', {}, run.jobName, ' ', badge(run.status)),
      el('button', { type: 'button', class: 'close', title: 'close', onclick: () => writeHash({ run: '' }) }, '×'),
    ),
    el('p', { class: 'muted id' }, run.id),
    el('div', { class: 'actions' }, buttons),
    el(
      'dl',
      { class: 'facts' },
      el('dt', {}, 'created'), el('dd', {}, run.createdAt ?? '-'),
      el('dt', {}, 'started'), el('dd', {}, run.startedAt ?? '-'),
      el('dt', {}, 'finished'), el('dd', {}, run.completedAt ? `${run.completedAt} (${duration(run.startedAt, run.completedAt)})` : '-'),
      el('dt', {}, 'steps'), el('dd', {}, String(run.completedStepCount)),
      el('dt', {}, 'labels'), el('dd', {}, Object.entries(run.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(' ') || '-'),
    ),
    el('div', { id: 'detail-progress' }, progressBar(run.progress)),
    el('h3', {}, 'Input'),
    el('pre', { id: 'detail-input' }, json(run.input)),
    run.status === 'completed' ? [el('h3', {}, 'Output'), el('pre', { id: 'detail-output' }, json(run.output))] : null,
    run.error ? [el('h3', {}, 'Error'), el('pre', { id: 'detail-error', class: 'error' }, run.error)] : null,
    el('h3', {}, 'Steps'),
    timeline(run, steps),
    waitList(run, waits),
    el('h3', {}, `Logs (${logs.length})`),
    logs.length
      ? el(
          'table',
          { class: 'logs' },
          el('tbody', {}, logs.map((log) =>
            el(
              'tr',
              { 'data-level': log.level },
              el('td', { class: 'muted' }, (log.createdAt ?? '').slice(11, 23)),
              el('td', {}, log.level),
              el('td', {}, log.stepName ?? ''),
              el('td', {}, log.message),
              el('td', { class: 'muted' }, log.data === null || log.data === undefined ? '' : JSON.stringify(log.data)),
            ),
          )),
        )
      : el('p', { class: 'muted' }, 'No logs.'),
  ]
  panel.replaceChildren(...parts.flat().filter(Boolean))
  for (const form of panel.querySelectorAll('form.signal'))
    if (typed.has(form.dataset.wait)) form.querySelector('textarea').value = typed.get(form.dataset.wait)
}

// -- live --

let listTimer = null
let detailTimer = null

function refreshSoon(list, runId) {
  if (list && !listTimer) listTimer = setTimeout(() => ((listTimer = null), loadList()), 150)
  if ((runId === undefined || runId === state.run) && state.run && !detailTimer)
    detailTimer = setTimeout(() => ((detailTimer = null), loadDetail()), 150)
}

function onFrame(event) {
  const row = document.querySelector(`#runs tr[data-id="${CSS.escape(event.runId)}"]`)
  if (event.type === 'run:progress' && row) {
    row.querySelector('.progress-cell').replaceChildren(progressBar(event.progress))
    if (event.runId === state.run) $('#detail-progress')?.replaceChildren(progressBar(event.progress))
    return
  }
  const listChanges = event.type.startsWith('run:') && event.type !== 'run:progress'
  refreshSoon(listChanges && (row !== null || event.type === 'run:trigger' || state.offset === 0), event.runId)
}

function connect() {
  if (source) source.close()
  const params = filterParams()
  source = new EventSource([...params].length ? `watch?${params}` : 'watch')
  source.onopen = () => {
    $('#live').dataset.live = 'true'
    refreshSoon(true)
  }
  source.onerror = () => ($('#live').dataset.live = 'false')
  source.onmessage = (message) => onFrame(JSON.parse(message.data))
}

// -- wiring --

let connectedFor = null

function render() {
  readHash()
  $('#filter-job').value = state.job
  $('#filter-label').value = state.label
  const filterKey = `${state.job}|${state.label}`
  if (connectedFor !== filterKey) {
    connectedFor = filterKey
    connect()
  }
  loadList()
  loadDetail()
}

$('#filters').addEventListener('submit', (e) => {
  e.preventDefault()
  writeHash({ job: $('#filter-job').value.trim(), label: $('#filter-label').value.trim(), offset: 0 })
})
$('#filter-clear').addEventListener('click', () => writeHash({ job: '', label: '', status: '', offset: 0 }))
$('#prev').addEventListener('click', () => writeHash({ offset: Math.max(0, state.offset - PAGE_SIZE) }))
$('#next').addEventListener('click', () => writeHash({ offset: state.offset + PAGE_SIZE }))
window.addEventListener('hashchange', render)
setInterval(() => {
  for (const cell of document.querySelectorAll('#runs td[title]')) cell.textContent = ago(cell.title)
}, 10000)
render()
