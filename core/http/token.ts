/** The admin API's bearer token file (light: the `qhcp admin` command reads it without fastify). */
import { readFileSync } from 'node:fs';
import { LocalError, errorText } from '../errors.ts';

/** Reads the bearer token: the file's first line, at least 16 characters. @throws LocalError */
export function readToken(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new LocalError('QHCP_ERR_CONFIG_LOAD', `httpTokenFile ${file}: cannot read: ${errorText(e)}`, { cause: e });
  }
  const token = text.split(/\r?\n/)[0]!.trim();
  if (token.length < 16) throw new LocalError('QHCP_ERR_CONFIG_LOAD', `httpTokenFile ${file}: the token (first line) must be at least 16 characters`);
  if (!/^[\x21-\x7e]+$/.test(token)) throw new LocalError('QHCP_ERR_CONFIG_LOAD', `httpTokenFile ${file}: the token must be printable ASCII without spaces`);
  return token;
}

