/**
 * How many cases each fuzz-style property runs: a few hundred in the suite (well under a few
 * seconds each), more with FUZZ_RUNS=N (`npm run fuzz`, scripts/fuzz.sh). FUZZ_SEED replays a
 * failure (fast-check prints the seed).
 */
export const FUZZ_RUNS = Number(process.env.FUZZ_RUNS) > 0 ? Number(process.env.FUZZ_RUNS) : 0;

/** fast-check parameters for a property whose suite default is `suiteRuns` cases. */
export function fuzzParams(suiteRuns: number): { numRuns: number; seed?: number; includeErrorInReport: boolean } {
  const seed = Number(process.env.FUZZ_SEED);
  // A failure is shrunk to a small counterexample and reported with its error and its seed.
  return { numRuns: FUZZ_RUNS || suiteRuns, includeErrorInReport: true, ...(Number.isInteger(seed) && process.env.FUZZ_SEED ? { seed } : {}) };
}
