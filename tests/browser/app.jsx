// A small page on the real @coji/durably-react fullstack hooks (createDurably):
// useJob (trigger + live status/progress over SSE), useRuns (runs list, realtime),
// useRunActions (cancel, retrigger, delete). The test reads the DOM.
import { createDurably } from '@coji/durably-react'
import { useState } from 'react'
import { createRoot } from 'react-dom/client'

const durably = createDurably({ api: '/api/durably' })

function Job() {
  const job = durably.gated.useJob()
  const [key, setKey] = useState('k1')
  const p = job.progress
  return (
    <section>
      <input id="key" value={key} onChange={(e) => setKey(e.target.value)} />
      <button id="trigger" onClick={() => job.trigger({ key, steps: 3 })}>
        Trigger
      </button>
      <div id="run-id">{job.currentRunId ?? ''}</div>
      <div id="status">{job.status ?? 'idle'}</div>
      <div id="progress">{p ? `${p.current}/${p.total} ${p.message}` : ''}</div>
      <div id="output">{job.output ? JSON.stringify(job.output) : ''}</div>
      <div id="error">{job.error ?? ''}</div>
    </section>
  )
}

function Runs() {
  const { runs, isLoading, error } = durably.useRuns({ pageSize: 20 })
  const actions = durably.useRunActions()
  const [message, setMessage] = useState('')
  const act = (name, fn) =>
    fn().then(
      (result) => setMessage(`${name}:ok:${result ?? ''}`),
      (err) => setMessage(`${name}:error:${err.message}`),
    )
  return (
    <section>
      <div id="runs-state" data-loading={String(isLoading)}>
        {error ?? ''}
      </div>
      <div id="action-result">{message}</div>
      <ul id="runs">
        {runs.map((run) => (
          <li
            key={run.id}
            data-id={run.id}
            data-status={run.status}
            data-progress={run.progress ? String(run.progress.current) : ''}
          >
            <span className="job">{run.jobName}</span>{' '}
            <span className="status">{run.status}</span>{' '}
            <button className="cancel" onClick={() => act('cancel', () => actions.cancel(run.id))}>
              Cancel
            </button>
            <button
              className="retrigger"
              onClick={() => act('retrigger', () => actions.retrigger(run.id))}
            >
              Retrigger
            </button>
            <button
              className="delete"
              onClick={() => act('delete', () => actions.deleteRun(run.id))}
            >
              Delete
            </button>
          </li>
        ))}
      </ul>
    </section>
  )
}

createRoot(document.getElementById('root')).render(
  <>
    <Job />
    <Runs />
  </>,
)
