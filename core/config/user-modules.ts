/**
 * Loading a user's own modules (a qhcp.config.ts/.js, a plugin file) in the installed package,
 * where neither tsx nor typescript is present. The first time one is loaded, a small pair of
 * Node module hooks is registered (module.register, Node >= 20.6):
 *
 * - resolve: `qhcp`, `qhcp/client` and `qhcp/testing` always mean the running qhcp, so a config
 *   or plugin gets the same classes the core checks against, even when qhcp is installed
 *   globally and not in the user's project;
 * - load: `.ts`/`.mts`/`.cts` files are turned into JavaScript by esbuild's `transform` (types
 *   stripped, nothing bundled, no type check), and a `.js` file with ESM syntax in a directory
 *   whose package.json is not `"type": "module"` is loaded as ESM rather than failing.
 *
 * Every module stays in Node's own ESM graph (one instance per URL). Nothing here is loaded,
 * and no hook is registered, for a JSON/YAML config or built-in plugins only.
 */
import { register } from 'node:module';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

/** Sources run through tsx use .ts; the compiled dist/ uses .js. */
const EXT = import.meta.url.endsWith('.ts') ? '.ts' : '.js';

/** The public entry points, by specifier, in this running copy of qhcp. */
export const PUBLIC_ENTRIES: Record<string, string> = {
  qhcp: new URL(`../index${EXT}`, import.meta.url).href,
  'qhcp/client': new URL(`../client/index${EXT}`, import.meta.url).href,
  'qhcp/testing': new URL(`../testing/index${EXT}`, import.meta.url).href,
};

/** Marks a `.js` URL to be read as ESM (the retry after Node took it for CommonJS). */
const AS_ESM = 'qhcp-esm';

// The hooks run on Node's loader thread; they are a data: URL so that neither tsx (dev) nor a
// build step is needed to load them. `initialize` receives the entries and esbuild's location.
const HOOKS = `
let entries = {}, esbuildUrl, transformSync;
export async function initialize(data) { entries = data.entries; esbuildUrl = data.esbuildUrl; }
export async function resolve(specifier, context, next) {
  if (Object.hasOwn(entries, specifier)) return { url: entries[specifier], shortCircuit: true };
  const r = await next(specifier, context);
  if (context.parentURL?.endsWith('?${AS_ESM}') && /\\.js$/.test(r.url) && r.url.startsWith('file:')) {
    return { ...r, url: r.url + '?${AS_ESM}' };
  }
  return r;
}
export async function load(url, context, next) {
  const ts = /^file:.*\\.(m|c)?ts$/.exec(url.split('?')[0]);
  if (ts || url.endsWith('?${AS_ESM}')) {
    const { readFile } = await import('node:fs/promises');
    const source = await readFile(new URL(url), 'utf8');
    if (!ts) return { format: 'module', source, shortCircuit: true };
    if (!transformSync) {
      const m = await import(esbuildUrl);
      transformSync = (m.default ?? m).transformSync;
    }
    const out = transformSync(source, { loader: 'ts', format: ts[1] === 'c' ? 'cjs' : 'esm', target: 'node20', sourcefile: url, sourcemap: 'inline' });
    return { format: ts[1] === 'c' ? 'commonjs' : 'module', source: out.code, shortCircuit: true };
  }
  return next(url, context);
}
`;

let registered = false;

/** Registers the hooks once (a no-op after the first call). */
export function registerUserModuleHooks(): void {
  if (registered) return;
  registered = true;
  const require = createRequire(import.meta.url);
  const esbuildUrl = pathToFileURL(require.resolve('esbuild')).href;
  register(`data:text/javascript,${encodeURIComponent(HOOKS)}`, { data: { entries: PUBLIC_ENTRIES, esbuildUrl } });
}

/**
 * Imports a user's module (config file or plugin) by its own syntax, whatever the nearest
 * package.json says, with `qhcp` resolving to the running copy.
 */
export async function importUserModule(url: string): Promise<{ default?: unknown }> {
  registerUserModuleHooks();
  try {
    return (await import(url)) as { default?: unknown };
  } catch (e) {
    // ESM syntax in a directory without "type": "module": Node took it for CommonJS.
    const code = String((e as NodeJS.ErrnoException).code);
    const esmInCjs = code.startsWith('ERR_REQUIRE') || (e instanceof SyntaxError && /import statement outside a module|Unexpected token 'export'/.test(e.message));
    if (!esmInCjs || !url.endsWith('.js')) throw e;
    return (await import(`${url}?${AS_ESM}`)) as { default?: unknown };
  }
}
