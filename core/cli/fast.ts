/**
 * The entry of `qhcp status` / `qhcp pick` (core/cli/query.ts) as core/cli/main.ts imports it.
 * `npm run build` replaces its compiled form with one bundled file holding this path's modules
 * (scripts/bundle-cli.mjs); from the sources it is this re-export.
 */
export { runQueryCommand } from './query.ts';
