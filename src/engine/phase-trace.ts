/** CELL_TRACE=1 logs phases of a VM's boot or run with their times to celld's log (for finding where time goes). */
export function phaseTrace(id: string): (phase: string) => void {
  if (!process.env.CELL_TRACE) return () => {};
  const t0 = performance.now();
  return (phase) => process.stderr.write(`[trace] ${id.slice(0, 12)} ${phase} +${(performance.now() - t0).toFixed(1)} ms\n`);
}
