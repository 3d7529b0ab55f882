// Preloaded (node -r) into every command bench/startup.ts times: at exit, the process's CPU time
// (user and system, all threads: getrusage) on one stderr line the bench reads. Wall time on a
// shared, loaded machine says little; CPU time is what the command itself costs.
process.on('exit', () => {
  const u = process.cpuUsage();
  process.stderr.write(`\nqhcp-bench-cpu ${u.user} ${u.system}\n`);
});
