/**
 * Neutralises a string that came from a peer (an agent's reason, a HELLO node name, a check's
 * output) before it reaches a terminal or a log line: C0/C1 control characters (ESC, CR, BEL, ...),
 * DEL and the Unicode line/paragraph separators and bidi overrides are escaped as \xNN / \uNNNN, so
 * an escape sequence is shown, never executed. Optionally bounded in length.
 */
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

export function sanitize(text: string, maxLength = Infinity): string {
  const s = text.length > maxLength ? text.slice(0, maxLength) + '…' : text;
  return s.replace(UNSAFE, (c) => {
    const n = c.charCodeAt(0);
    return n <= 0xff ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u${n.toString(16).padStart(4, '0')}`;
  });
}

/** Whether `text` is free of anything `sanitize` would escape. */
export function isClean(text: string): boolean {
  UNSAFE.lastIndex = 0;
  return !UNSAFE.test(text);
}

// eslint-disable-next-line no-control-regex
const JSON_UNSAFE = /[\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/**
 * JSON text for a terminal or a log line: JSON.stringify escapes C0 controls already; this also
 * writes DEL, C1 controls, line separators and bidi overrides as \uNNNN escapes. Lossless: the
 * text parses back to the same value.
 */
export function safeJson(value: unknown, space?: number): string {
  return String(JSON.stringify(value, null, space)).replace(JSON_UNSAFE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
