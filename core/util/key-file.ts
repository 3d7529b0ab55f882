/**
 * A secret or private key readable by group or others deserves a warning (as ssh gives one):
 * what the auth plugins log for their key files. (core/transport/tls.ts says the same for a
 * role's own TLS key, in its start-up checks.)
 */
import { statSync } from 'node:fs';
import type { Logger } from './log.ts';

/** Logs `<who>: key file is readable by other users; chmod 600 it` once when `path` is; nothing on Windows or for a file it cannot stat (the read reported that). */
export function warnIfReadableByOthers(path: string, who: string, logger: Pick<Logger, 'warn'>): void {
  if (process.platform === 'win32') return;
  let mode: number;
  try {
    mode = statSync(path).mode & 0o777;
  } catch {
    return;
  }
  if (mode & 0o077) logger.warn(`${who}: key file is readable by other users (mode ${mode.toString(8).padStart(3, '0')}); chmod 600 it`, { file: path });
}
