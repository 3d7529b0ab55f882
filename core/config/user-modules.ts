/**
 * Loading a user's own modules (a qhcp.config.ts/.js, a plugin file) in the installed package,
 * where neither tsx nor typescript is present, in the process's own thread:
 *
 * - An ES module (`.ts`, `.mts`, `.mjs`, a `.js` in ESM scope or with ESM syntax) is bundled by
 *   esbuild's `build` with the user's local files inlined (types stripped, no type check) and
 *   imported from a `data:` URL. Every import the bundle keeps is absolute: `qhcp`,
 *   `qhcp/client` and `qhcp/testing` mean the running qhcp (so a config or plugin gets the
 *   same classes the core checks against, even when qhcp is installed globally and not in the
 *   user's project), a package is the file esbuild resolves from the importing file's directory
 *   (import conditions), a Node built-in stays a built-in. Each file keeps its own
 *   `import.meta.url`, `dirname` and `filename`.
 * - A `.cts` file is bundled the same way as CommonJS and compiled as a module of its own file,
 *   so its `require()` resolves from where it lies.
 * - CommonJS that Node reads as it is (`.cjs`, a `.js` in CommonJS scope without ESM syntax) is
 *   imported directly.
 *
 * Why not Node's module hooks (module.register), as before: they run on a loader thread of their
 * own, a second V8 isolate for the life of the process, and esbuild's `transformSync` started a
 * third (its worker thread) and left its service process running: an agent with a
 * qhcp.config.ts had 89 MB of RSS instead of 62 with the same config in JSON (docs/benchmarks.md,
 * "Agent"). Here esbuild's service process is stopped once the module is loaded.
 *
 * A module is read afresh on every load (a reload sees the files as they are now; an unchanged
 * bundle is the same `data:` URL, so the same module). A local file imported by the config and
 * also named as a plugin path is two instances, one per bundle. An import() of a computed relative
 * path cannot be bundled and fails (relative to a `data:` URL); a literal one is bundled. Nothing here is loaded for a
 * JSON/YAML config or built-in plugins only.
 */
import { Module, isBuiltin } from 'node:module';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, extname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type * as Esbuild from 'esbuild';

/** Sources run through tsx use .ts; the compiled dist/ uses .js. */
const EXT = import.meta.url.endsWith('.ts') ? '.ts' : '.js';

/** The public entry points, by specifier, in this running copy of qhcp. */
export const PUBLIC_ENTRIES: Record<string, string> = {
  qhcp: new URL(`../index${EXT}`, import.meta.url).href,
  'qhcp/client': new URL(`../client/index${EXT}`, import.meta.url).href,
  'qhcp/testing': new URL(`../testing/index${EXT}`, import.meta.url).href,
};

const TYPESCRIPT = /\.(m|c)?ts$/;

/** esbuild, loaded on first use; its service process is stopped when no load is in flight. */
let esbuild: Promise<typeof Esbuild> | undefined;
let building = 0;
const loadEsbuild = (): Promise<typeof Esbuild> => (esbuild ??= import('esbuild').then((m) => ((m as unknown as { default?: typeof Esbuild }).default ?? m)));

/**
 * Imports a user's module (config file or plugin) by its own syntax, whatever the nearest
 * package.json says, with `qhcp` resolving to the running copy. `url` is a file: URL; a query
 * (`?mtime=...`) is ignored: the file is read afresh every time.
 */
export async function importUserModule(url: string): Promise<{ default?: unknown }> {
  const file = fileURLToPath(url.split('?')[0]!);
  const ext = extname(file);
  if (ext === '.cjs') return (await import(url)) as { default?: unknown };
  if (ext === '.js' && !isEsmScope(file)) {
    try {
      return (await import(url)) as { default?: unknown };
    } catch (e) {
      // ESM syntax in a directory without "type": "module": Node took it for CommonJS.
      const code = String((e as NodeJS.ErrnoException).code);
      const esmInCjs = code.startsWith('ERR_REQUIRE') || (e instanceof SyntaxError && /import statement outside a module|Unexpected token 'export'/.test(e.message));
      if (!esmInCjs) throw e;
    }
  }
  const cjs = ext === '.cts';
  const code = await bundle(file, cjs ? 'cjs' : 'esm');
  if (!cjs) {
    const dataUrl = `data:text/javascript;base64,${Buffer.from(code).toString('base64')}`;
    try {
      return (await import(dataUrl)) as { default?: unknown };
    } catch (e) {
      // What went wrong names the file, not the bundle's data: URL (a relative import() of a
      // computed path, which cannot be bundled, resolves against it and fails).
      if (e instanceof Error && e.message.includes(dataUrl)) e.message = e.message.replaceAll(dataUrl, pathToFileURL(file).href);
      throw e;
    }
  }
  const m = new Module(file);
  m.filename = file;
  m.paths = (Module as unknown as { _nodeModulePaths(dir: string): string[] })._nodeModulePaths(dirname(file));
  (m as unknown as { _compile(code: string, file: string): void })._compile(code, file);
  const exports = m.exports as { default?: unknown } | undefined;
  return exports !== null && typeof exports === 'object' && 'default' in exports ? exports : { default: exports };
}

/** Whether the nearest package.json makes `.js` files ES modules ("type": "module"). */
function isEsmScope(file: string): boolean {
  for (let dir = dirname(file); ; ) {
    try {
      return (JSON.parse(readFileSync(`${dir}/package.json`, 'utf8')) as { type?: string }).type === 'module';
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return false;
    }
    const up = dirname(dir);
    if (up === dir) return false;
    dir = up;
  }
}

/**
 * The bundle of `file` and the local files it imports. Packages and built-ins stay imports
 * (ESM: absolute URLs; CommonJS: `require` from the file's directory), `qhcp` is the running copy.
 * @throws Error `file:line:column: what` for the first problem esbuild found (syntax, an import not found)
 */
async function bundle(file: string, format: 'esm' | 'cjs'): Promise<string> {
  const es = await loadEsbuild();
  building++;
  try {
    const result = await es.build({
      entryPoints: [file],
      bundle: true,
      write: false,
      format,
      platform: 'node',
      target: 'node20',
      sourcemap: 'inline',
      logLevel: 'silent',
      plugins: [userFiles(es, format)],
    });
    return result.outputFiles[0]!.text;
  } catch (e) {
    // esbuild's message starts "Build failed with 1 error:"; the first error, on one line, says what.
    const first = (e as { errors?: Esbuild.Message[] }).errors?.[0];
    if (!first) throw e;
    const at = first.location ? `${first.location.file}:${first.location.line}:${first.location.column + 1}: ` : '';
    throw new Error(`${at}${first.text}`, { cause: e });
  } finally {
    if (--building === 0) void es.stop();
  }
}

/** The resolution and per-file loading described above, as an esbuild plugin. */
function userFiles(es: typeof Esbuild, format: 'esm' | 'cjs'): Esbuild.Plugin {
  return {
    name: 'qhcp-user-files',
    setup(build) {
      build.onResolve({ filter: /^[^./]/ }, async (args) => {
        if (args.pluginData === 'resolving') return undefined;
        const entry = PUBLIC_ENTRIES[args.path];
        if (entry !== undefined) return { path: format === 'esm' ? entry : fileURLToPath(entry), external: true };
        if (isBuiltin(args.path)) return { path: args.path, external: true };
        if (format === 'cjs') return { path: args.path, external: true };
        const r = await build.resolve(args.path, { kind: args.kind, resolveDir: args.resolveDir, importer: args.importer, pluginData: 'resolving' });
        if (r.errors.length > 0) return { errors: r.errors };
        return { path: pathToFileURL(r.path).href, external: true };
      });
      // Each local file keeps its own import.meta (one bundle holds several files): a file that
      // uses it is transformed with its own values first; any other is left to the build.
      if (format === 'cjs') return;
      build.onLoad({ filter: /\.(m|c)?[jt]s$/ }, async (args) => {
        if (args.path.includes('/node_modules/')) return undefined;
        const source = await readFile(args.path, 'utf8');
        const loader = TYPESCRIPT.test(args.path) ? 'ts' : 'js';
        if (!source.includes('import.meta')) return { contents: source, loader, resolveDir: dirname(args.path) };
        const define = { 'import.meta.url': JSON.stringify(pathToFileURL(args.path).href), 'import.meta.filename': JSON.stringify(args.path), 'import.meta.dirname': JSON.stringify(dirname(args.path)) };
        try {
          const out = await es.transform(source, { loader, sourcefile: args.path, sourcemap: 'inline', target: 'node20', define });
          return { contents: out.code, loader: 'js', resolveDir: dirname(args.path) };
        } catch (e) {
          // A syntax error: reported as the build's own, with its location.
          const errors = (e as { errors?: Esbuild.PartialMessage[] }).errors;
          if (errors) return { errors };
          throw e;
        }
      });
    },
  };
}
