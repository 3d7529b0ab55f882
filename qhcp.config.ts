/**
 * The repo's own qhcp configuration: a working example, picked up by every `qhcp` started in
 * this directory (`npm start` included). Command-line flags override anything here;
 * `npx qhcp config --print` shows the merged result and where each value came from.
 *
 * Every key, its flag and its default: docs/configuration.md. Plugins: docs/plugins.md
 * (hooks, writing your own) and docs/plugins-builtin.md (the built-in ones and their options).
 */
import { defineConfig } from './core/config/config.ts';

export default defineConfig({
  // No `servers` here: the demo and the tests pass -servers on the command line.
  // servers: ['10.0.0.1:4243', { address: '10.0.0.2', weight: 2 }],

  // Seconds between checks (and status prints), and between reconnects to DOWN servers.
  checkInterval: 2,
  reconnectInterval: 4,
  // Consecutive failed checks before a server is marked DOWN.
  maxFailAttempts: 3,

  // TLS files (PEM), relative to this file. Without them the server makes an in-memory
  // self-signed certificate and the load balancer does not verify servers; both log it.
  // certFile: './certs/server.pem',
  // keyFile: './certs/server.key',
  // caFile: './certs/ca.pem',

  // A plugin listed here replaces the role's default for its family; each one's options are
  // validated against its own schema before anything listens.
  plugins: [
    // Servers: CPU, memory, load average and a derived loadScore.
    'system-metrics',
    // Servers: an example custom metric, the number of lines in ./work-queue.txt (relative to
    // the working directory; a missing file is an empty queue). Try `seq 7 > work-queue.txt`
    // while `npm start` runs, then `npx qhcp status --json`. Source: docs/examples/queue-length.ts.
    ['./docs/examples/queue-length.ts', { file: './work-queue.txt', interval: 2 }],
    // Load balancer: the balancing strategy. Load-aware balancing is a one-line swap:
    'round-robin',
    // 'least-loaded',
    // Load balancer: one line on stderr per state change, start and stop.
    ['log', {}],
  ],
});
