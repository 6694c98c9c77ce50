import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Command } from 'commander';
import { COMMAND_GROUPS, groupsFor, subcommandOf } from '../../src/cli/registry.js';

test('the subcommand is the first operand after global options', () => {
  assert.equal(subcommandOf(['run', 'busybox']), 'run');
  assert.equal(subcommandOf(['--home', '/tmp/h', 'ps', '-a']), 'ps');
  assert.equal(subcommandOf(['--home=/tmp/h', 'ps']), 'ps');
  assert.equal(subcommandOf(['--help']), undefined);
  assert.equal(subcommandOf([]), undefined);
});

test('only the named command module loads; help and unknown names load all', () => {
  const names = (args: string[]) => groupsFor(args).flatMap((g) => g.names);
  assert.deepEqual(names(['run', 'busybox', 'ps']), ['run']);
  assert.deepEqual(names(['--home', 'x', 'rm', '-f', 'a']), ['ps', 'inspect', 'port', 'logs', 'stop', 'wait', 'update', 'start', 'pause', 'unpause', 'rm']);
  assert.deepEqual(names(['help', 'exec']), ['exec']);
  assert.deepEqual(names(['--version']), []);
  assert.equal(groupsFor(['--help']).length, COMMAND_GROUPS.length);
  assert.equal(groupsFor(['rn']).length, COMMAND_GROUPS.length, 'commander can suggest "run"');
});

test('every module registers exactly the commands the table names, each with help examples', async () => {
  for (const group of COMMAND_GROUPS) {
    const program = new Command('cell').enablePositionalOptions();
    (await group.load()).register(program);
    assert.deepEqual(program.commands.map((c) => c.name()), [...group.names]);
    for (const cmd of program.commands) {
      assert.ok(cmd.description(), `${cmd.name()} has a description`);
      const leaves = cmd.commands.length ? cmd.commands : [cmd];
      for (const leaf of leaves) {
        let help = '';
        leaf.configureOutput({ writeOut: (s) => (help += s) });
        leaf.outputHelp();
        assert.match(help, /Examples?:/, `cell ${cmd.name()} ${leaf === cmd ? '' : leaf.name()} --help has examples`);
      }
    }
  }
});
