/** Entry point: `node dist/core/cli/main.js` (what bin/qhcp.js runs in the installed package), or the sources through tsx. */
import { main } from './cli.ts';

await main();
