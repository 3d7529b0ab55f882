/** Entry point: `node dist/core/main.js` after `npm run build`, or via bin/qhcp.js (tsx). */
import { main } from './cli.ts';

await main();
