import type { Command } from 'commander';

/** A module of `cell` subcommands: it adds its commands (options, help, action) to the program. */
export interface CommandModule {
  register(program: Command): void;
}

/** One module of subcommands (modules may share a help heading). */
export interface CommandGroup {
  /** Heading in `cell --help`. */
  heading: string;
  /** The subcommands the module registers, in help order. */
  names: readonly string[];
  load(): Promise<CommandModule>;
}

/**
 * Every subcommand, in the order `cell --help` lists them. Modules load lazily: `cell run` imports
 * the run module only, so start-up stays a few milliseconds above bare node.
 */
export const COMMAND_GROUPS: readonly CommandGroup[] = [
  { heading: 'Run commands in VMs:', names: ['run'], load: () => import('./commands/run.js') },
  { heading: 'Run commands in VMs:', names: ['exec'], load: () => import('./commands/exec.js') },
  { heading: 'Run commands in VMs:', names: ['cp'], load: () => import('./commands/cp.js') },
  { heading: 'Manage VMs:', names: ['ps', 'inspect', 'port', 'logs', 'stop', 'wait', 'update', 'start', 'pause', 'unpause', 'rm'], load: () => import('./commands/vms.js') },
  { heading: 'Manage VMs:', names: ['console', 'attach'], load: () => import('./commands/console.js') },
  { heading: 'Manage VMs:', names: ['events'], load: () => import('./commands/events.js') },
  { heading: 'Manage VMs:', names: ['stats'], load: () => import('./commands/stats.js') },
  { heading: 'Networks:', names: ['network'], load: () => import('./commands/networks.js') },
  { heading: 'Volumes:', names: ['volume'], load: () => import('./commands/volumes.js') },
  { heading: 'Snapshots and forks:', names: ['snapshot', 'fork', 'restore', 'snapshots'], load: () => import('./commands/snapshots.js') },
  { heading: 'Builds, templates and the action cache:', names: ['build', 'cache'], load: () => import('./commands/build.js') },
  { heading: 'Builds, templates and the action cache:', names: ['template'], load: () => import('./commands/templates.js') },
  {
    heading: 'Images:',
    names: ['pull', 'images', 'rmi', 'push', 'login', 'logout', 'image'],
    load: () => import('./commands/images.js'),
  },
  { heading: 'This host:', names: ['info', 'system', 'setup'], load: () => import('./commands/system.js') },
  { heading: 'This host:', names: ['ui', 'token'], load: () => import('./commands/tokens.js') },
];

/** Global options that take a value (their value is not a subcommand name). */
const GLOBAL_OPTIONS_WITH_VALUE = new Set(['--home']);

/** The subcommand named on a command line (argv without node and script), if any. */
export function subcommandOf(args: readonly string[]): string | undefined {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--') return undefined;
    if (GLOBAL_OPTIONS_WITH_VALUE.has(arg)) i++;
    else if (!arg.startsWith('-')) return arg;
  }
  return undefined;
}

/**
 * The command groups a command line needs: the subcommand's own group; none for `--version`;
 * every group for the top-level help, `cell help`, and names commander should suggest
 * alternatives for.
 */
export function groupsFor(args: readonly string[]): readonly CommandGroup[] {
  let name = subcommandOf(args);
  if (name === undefined && (args.includes('-V') || args.includes('--version'))) return [];
  if (name === 'help') {
    const rest = args.slice(args.indexOf('help') + 1);
    name = rest.find((a) => !a.startsWith('-'));
  }
  const group = name === undefined ? undefined : COMMAND_GROUPS.find((g) => g.names.includes(name));
  return group ? [group] : COMMAND_GROUPS;
}
