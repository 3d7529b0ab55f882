/** Entry point: `node dist/core/cli/main.js` (what bin/qhcp.js runs in the installed package), or the sources through tsx. */
import { isAgentCommand, agentV8Flags } from '../roles/agent-heap.ts';
import { adoptRelaunch, relaunch, wantsRelaunch } from './relaunch.ts';

const args = process.argv.slice(2);
// Before anything is loaded: the agent's V8 settings (small young generation, baseline compiler only: core/roles/agent-heap.ts).
if (isAgentCommand(args)) agentV8Flags();
const relaunched = adoptRelaunch();
if (!relaunched && wantsRelaunch(args)) {
  // The load balancer runs under Node flags only its command line can set (core/cli/relaunch.ts).
  await relaunch(args);
} else if (args.length === 1 && ['--version', '-v', '-version'].includes(args[0]!)) {
  // `qhcp --version` prints what commander would, without loading it (or anything else).
  const { packageInfo } = await import('../util/package-info.ts');
  process.stdout.write(`${packageInfo().version}\n`);
} else if ((args[0] === 'status' || args[0] === 'pick') && (await (await import('./fast.ts')).runQueryCommand(args))) {
  // `qhcp status` / `qhcp pick` ran without commander (core/cli/query.ts); anything it does not
  // take as it is (help, a bad flag) falls through to the full command line below.
} else {
  const { main } = await import('./cli.ts');
  await main();
}
