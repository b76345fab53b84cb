// Bundles app.jsx (React 19 + @coji/durably-react) into <outdir>/app.js.
import { build } from 'esbuild'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const outdir = process.argv[2]
if (!outdir) throw new Error('usage: node build.mjs <outdir>')
await build({
  entryPoints: [join(here, 'app.jsx')],
  bundle: true,
  format: 'esm',
  jsx: 'automatic',
  define: { 'process.env.NODE_ENV': '"production"' },
  outfile: join(outdir, 'app.js'),
  logLevel: 'warning',
})
