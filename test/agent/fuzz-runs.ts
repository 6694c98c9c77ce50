/**
 * How many cases each fuzz-style property runs: a few hundred in the suite (well under a few
 * seconds each), more with FUZZ_RUNS=N (scripts/fuzz.sh). FUZZ_SEED replays a failure.
 */
export const FUZZ_RUNS = Number(process.env.FUZZ_RUNS) > 0 ? Number(process.env.FUZZ_RUNS) : 0;

/** fast-check parameters for a property whose suite default is `suiteRuns` cases. */
export function fuzzParams(suiteRuns: number): { numRuns: number; seed?: number; endOnFailure: boolean; includeErrorInReport: boolean } {
  const seed = Number(process.env.FUZZ_SEED);
  return { numRuns: FUZZ_RUNS || suiteRuns, includeErrorInReport: true, ...(Number.isInteger(seed) && process.env.FUZZ_SEED ? { seed } : {}), endOnFailure: true };
}
