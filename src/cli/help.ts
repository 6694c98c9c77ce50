/** The "Examples:" block after a command's help (commander `.addHelpText('after', ...)`). */
export function examples(...lines: string[]): string {
  return `\nExamples:\n${lines.map((l) => `  ${l}`).join('\n')}`;
}
