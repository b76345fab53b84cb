// The real @coji/durably 0.15.0 on a SQLite file (tests/test_interop_node.py) or on
// PostgreSQL (tests/test_interop_postgres.py: DB is a postgresql:// URL; the `pg`
// package comes from $DURABLY_NODE_PG, the node_modules that scripts/setup-postgres.sh
// fills, since tests/interop's own packages are the SQLite side's).
//
//   node durably_node.mjs schema  DB           migrate only (the schema it creates)
//   node durably_node.mjs trigger DB INPUT     trigger an "interop-job" run; prints {run}
//   node durably_node.mjs get     DB RUN_ID    prints {run, steps, logs} as Node reads them
//   node durably_node.mjs work    DB RUN_ID    run a worker until RUN_ID is terminal; prints {run}
//
// The job must be the same as tests/test_interop_node.py's: same name, input,
// steps, progress, logs and output. better-sqlite3 through Kysely's SqliteDialect
// is how the reference opens a local SQLite file (its own dependency).
import { createRequire } from 'node:module'
import { createDurably, defineJob, withLogPersistence } from '@coji/durably'
import Database from 'better-sqlite3'
import { PostgresDialect, SqliteDialect } from 'kysely'
import { z } from 'zod'

const [command, path, arg] = process.argv.slice(2)

const interopJob = defineJob({
  name: 'interop-job',
  input: z.object({ values: z.array(z.number()), label: z.string() }),
  output: z.object({
    total: z.number(),
    count: z.number(),
    summary: z.string(),
    by: z.string(),
  }),
  run: async (step, input) => {
    const total = await step.run('sum', async () => input.values.reduce((a, b) => a + b, 0))
    step.progress(1, 3, 'summed')
    const count = await step.run('count', async () => ({ n: input.values.length }))
    step.progress(2, 3)
    step.log.info('counted', { count: count.n, label: input.label })
    const summary = await step.run('describe', async () => `${input.label}: ${total}/${count.n}`)
    step.progress(3, undefined, 'done')
    return { total, count: count.n, summary, by: 'node' }
  },
})

function dialectFor(target) {
  if (/^postgres(ql)?:/.test(target)) {
    // Kysely's PostgresDialect is what the reference detects as its PostgreSQL backend
    const { Pool } = createRequire(`${process.env.DURABLY_NODE_PG}/`)('pg')
    return new PostgresDialect({ pool: new Pool({ connectionString: target, max: 4 }) })
  }
  return new SqliteDialect({ database: new Database(target) })
}

const durably = createDurably({
  dialect: dialectFor(path),
  jobs: { interopJob },
  pollingIntervalMs: 50,
  // no loaded machine outlasts it: a run claimed twice would have generation 2, and
  // the tests compare runs field by field
  leaseMs: 60000,
  leaseRenewIntervalMs: 1000,
  preserveSteps: true,
})
// Python stores step.log entries always; the reference only with this plugin
durably.use(withLogPersistence())

function print(value) {
  process.stdout.write(JSON.stringify(value) + '\n')
}

try {
  await durably.migrate()
  if (command === 'schema') {
    // migrate() above is all
  } else if (command === 'trigger') {
    const run = await durably.jobs.interopJob.trigger(JSON.parse(arg), {
      labels: { origin: 'node', 'team/x': 'a-1' },
      idempotencyKey: 'from-node',
      concurrencyKey: 'interop',
    })
    print({ run })
  } else if (command === 'get') {
    const run = await durably.getRun(arg)
    const steps = await durably.storage.getSteps(arg)
    const logs = await durably.storage.getLogs(arg)
    print({ run, steps, logs })
  } else if (command === 'work') {
    durably.on('worker:error', (e) => process.stderr.write(`worker:error ${JSON.stringify(e)}\n`))
    durably.start()
    const deadline = Date.now() + 20000
    let run = await durably.getRun(arg)
    while (run && !['completed', 'failed', 'cancelled'].includes(run.status)) {
      if (Date.now() > deadline) throw new Error(`run ${arg} not terminal: ${run.status}`)
      await new Promise((resolve) => setTimeout(resolve, 20))
      run = await durably.getRun(arg)
    }
    await durably.stop()
    print({ run })
  } else {
    throw new Error(`unknown command ${command}`)
  }
} finally {
  await durably.db.destroy()
}
