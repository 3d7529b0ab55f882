/** Helpers for the HTTP listener's tests with real processes. */
import type { QhcpProcess } from '../helpers/procs.ts';

/** The URL a process logged for its HTTP listener (text or JSON log lines). */
export async function httpUrl(proc: QhcpProcess): Promise<string> {
  const m = await proc.waitFor(/HTTP listener started.*?url"?[=:]"?(http:\/\/[^\s"]+\/)/, 45_000);
  return m[1]!;
}
