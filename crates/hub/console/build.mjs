// Bundles the console with esbuild. Called by crates/hub/build.rs as
// `node build.mjs <src dir> <node_modules dir> <out dir>`; the output
// (index.html, app.js, app.css) is embedded in the panorama-hub binary.
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';

const [src, nodeModules, out] = process.argv.slice(2);
// esbuild lives in the npm tree build.rs installed (in OUT_DIR), not beside this file.
const esbuild = createRequire(join(nodeModules, 'noop.js'))('esbuild');
mkdirSync(out, { recursive: true });
await esbuild.build({
  entryPoints: { app: join(src, 'main.js') },
  bundle: true,
  format: 'esm',
  minify: true,
  target: ['chrome110', 'firefox110', 'safari16'],
  nodePaths: [nodeModules],
  outdir: out,
  legalComments: 'none',
  logLevel: 'warning',
});
copyFileSync(join(src, 'index.html'), join(out, 'index.html'));
